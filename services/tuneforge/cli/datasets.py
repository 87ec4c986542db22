"""`tuneforge datasets`: curated dataset versions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuneforge.cli.options import client_for, client_options
from tuneforge.console import version_line


def _format_value(name: str | None) -> int:
    from tuneforge.v1 import curation_pb2

    return curation_pb2.DataFormat.Value(f"DATA_FORMAT_{name.upper()}") if name else 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tuneforge.v1 import curation_pb2

    with client_for(args) as client:
        command = args.datasets_command
        if command == "upload":
            file_ids = []
            for path in args.paths:
                size = Path(path).stat().st_size
                with tqdm(total=size, unit="B", unit_scale=True, desc=f"upload {Path(path).name}") as bar:
                    stored = client.upload_file(path, data_format=_format_value(args.format), on_progress=bar.update)
                file_ids.append(stored.id)
            # only the flags given: the defaults are the service's (CurationOptions, curation.max_invalid_fraction)
            settings: dict[str, object] = {
                name: value
                for name, value in (
                    ("max_seq_len", args.max_seq_len),
                    ("validation_fraction", args.validation_fraction),
                    ("near_duplicate_threshold", args.near_duplicate_threshold),
                    ("seed", args.seed),
                    ("max_invalid_fraction", args.max_invalid),
                )
                if value is not None
            }
            if args.length_policy:
                settings["length_policy"] = curation_pb2.LengthPolicy.Value(
                    f"LENGTH_POLICY_{args.length_policy.upper()}"
                )
            if args.keep_pii:
                settings["scrub_pii"] = False
            version = client.create_dataset_version(
                args.dataset, file_ids, args.base_model, data_format=_format_value(args.format), **settings
            )
            if args.no_wait:
                print(version_line(version))
                return 0
            with tqdm(total=version.bytes_total or 1, unit="B", unit_scale=True, desc="curate") as bar:

                def update(v) -> None:
                    bar.update(max(0, v.bytes_processed - bar.n))

                version = client.wait_for_dataset_version(version.id, on_progress=update)
            print(version_line(version))
            if version.failure_reason:
                print(f"FAILED: {version.failure_reason}", file=sys.stderr)
                return 1
        elif command == "list":
            token = ""
            while True:
                page = client.call(
                    client.datasets.ListDatasetVersions,
                    curation_pb2.ListDatasetVersionsRequest(dataset=args.dataset or "", page_token=token),
                )
                for version in page.dataset_versions:
                    print(version_line(version))
                token = page.next_page_token
                if not token:
                    break
        elif command == "show":
            print(client.get_dataset_version(args.version_id))
        elif command == "report":
            report = client.call(
                client.datasets.GetDatasetReport,
                curation_pb2.GetDatasetReportRequest(dataset_version_id=args.version_id),
            )
            if args.out:
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                (out / "report.md").write_text(report.markdown)
                (out / "report.json").write_text(report.json)
                (out / "token_lengths.svg").write_text(report.token_length_svg)
                print(f"wrote {out}/report.md, report.json, token_lengths.svg")
            else:
                print(report.json if args.json else report.markdown)
        elif command == "issues":
            token = ""
            while True:
                page = client.call(
                    client.datasets.ListDatasetIssues,
                    curation_pb2.ListDatasetIssuesRequest(
                        dataset_version_id=args.version_id, code=args.code or "", page_token=token
                    ),
                )
                for issue in page.issues:
                    print(f"{issue.source}:{issue.line}  {issue.code:28s} {issue.message}")
                token = page.next_page_token
                if not token:
                    break
        elif command == "delete":
            client.call(
                client.datasets.DeleteDatasetVersion,
                curation_pb2.DeleteDatasetVersionRequest(dataset_version_id=args.version_id),
            )
            print(f"deleted {args.version_id}")
        elif command == "cancel":
            version = client.cancel_dataset_version(args.version_id)
            print(f"{version_line(version)}  ({version.failure_reason})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="curate instruction data into dataset versions")
    client_options(p)
    datasets = p.add_subparsers(dest="datasets_command", required=True)
    up = datasets.add_parser("upload", help="upload files and build a dataset version from them")
    up.add_argument("paths", nargs="+", help="JSONL files (alpaca, ShareGPT or OpenAI chat)")
    up.add_argument("--dataset", required=True, help="dataset name (lower-case letters, digits, '-', '_')")
    up.add_argument("--base-model", dest="base_model", required=True, help="model whose chat template renders it")
    up.add_argument("--format", choices=["alpaca", "sharegpt", "openai_chat"], help="override format detection")
    up.add_argument("--max-seq-len", dest="max_seq_len", type=int, help="longest sample in tokens (default 4096)")
    up.add_argument("--length-policy", dest="length_policy", choices=["drop", "truncate"], help="default drop")
    up.add_argument("--validation-fraction", dest="validation_fraction", type=float, help="default 0.05")
    up.add_argument("--near-duplicate-threshold", dest="near_duplicate_threshold", type=float, help="default 0.85")
    up.add_argument("--keep-pii", dest="keep_pii", action="store_true", help="do not scrub PII")
    up.add_argument("--seed", type=int)
    up.add_argument(
        "--max-invalid",
        dest="max_invalid",
        type=float,
        help="share of invalid records (0-1) above which the version fails; 1 keeps the valid records of any "
        "file (default: the service's, 0.5)",
    )
    up.add_argument("--no-wait", dest="no_wait", action="store_true", help="return once the build is queued")
    ls = datasets.add_parser("list")
    ls.add_argument("--dataset")
    datasets.add_parser("show").add_argument("version_id")
    report = datasets.add_parser("report")
    report.add_argument("version_id")
    report.add_argument("--json", action="store_true", help="print the JSON report instead of Markdown")
    report.add_argument("--out", help="write report.md, report.json and token_lengths.svg into this directory")
    issues = datasets.add_parser("issues")
    issues.add_argument("version_id")
    issues.add_argument("--code", help="only issues with this code")
    datasets.add_parser("delete").add_argument("version_id")
    datasets.add_parser("cancel", help="stop building a version (it becomes cancelled)").add_argument("version_id")
    p.set_defaults(func=cmd_datasets)
