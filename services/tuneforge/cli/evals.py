"""`tuneforge evals`: evaluation suites, runs and reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuneforge.cli.options import client_for, client_options
from tuneforge.console import follow_eval, run_line


def cmd_evals(args: argparse.Namespace) -> int:
    from tuneforge.v1 import evaluation_pb2

    with client_for(args) as client:
        command = args.evals_command
        if command == "suites":
            suites = client.call(client.evaluation.ListSuites, evaluation_pb2.ListSuitesRequest()).suites
            for suite in suites:
                counts = ", ".join(f"{k} {v}" for k, v in sorted(suite.category_counts.items()))
                print(f"{suite.id:32s} {suite.name:20s} {suite.num_items:>5d} items  {counts}")
        elif command == "upload":
            request = evaluation_pb2.CreateSuiteRequest(name=args.name, jsonl=Path(args.path).read_bytes())
            suite = client.call(client.evaluation.CreateSuite, request).suite
            print(f"{suite.id}  {suite.num_items} items")
        elif command == "run":
            request = evaluation_pb2.CreateEvalRunRequest(
                suite_id=args.suite,
                models=[m.strip() for m in args.models.split(",") if m.strip()],
                judge_model=args.judge or "",
            )
            request.sampling.max_tokens = args.max_tokens
            run = client.call(client.evaluation.CreateEvalRun, request).run
            print(run_line(run))
            if args.follow:
                run = follow_eval(client, run.id)
                print(run_line(run))
                return 0 if run.state == evaluation_pb2.EVAL_RUN_STATE_SUCCEEDED else 1
        elif command == "rate":
            request = evaluation_pb2.ImportHumanScoresRequest(run_id=args.run_id, jsonl=Path(args.path).read_bytes())
            response = client.call(client.evaluation.ImportHumanScores, request)
            print(f"{response.imported} rating(s) stored for {response.run.id}")
        elif command == "list":
            runs = client.call(client.evaluation.ListEvalRuns, evaluation_pb2.ListEvalRunsRequest()).runs
            for run in runs:
                print(run_line(run))
        elif command == "show":
            print(
                run_line(
                    client.call(client.evaluation.GetEvalRun, evaluation_pb2.GetEvalRunRequest(run_id=args.run_id)).run
                )
            )
        elif command == "report":
            fmt = {"json": 1, "md": 2, "html": 3}[args.format]
            report = client.call(
                client.evaluation.GetEvalReport, evaluation_pb2.GetEvalReportRequest(run_id=args.run_id, format=fmt)
            )
            for warning in report.warnings:
                print(f"warning: {warning}", file=sys.stderr)
            if args.out or args.open:
                import tempfile

                out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tuneforge-report-"))
                out.mkdir(parents=True, exist_ok=True)
                path = out / f"{args.run_id}.{args.format}"
                path.write_bytes(report.content)
                print(f"wrote {path}")
                if args.open:
                    import webbrowser

                    webbrowser.open(path.resolve().as_uri())
            else:
                sys.stdout.write(report.content.decode())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evals", help="evaluation suites, runs and reports")
    client_options(p)
    evals = p.add_subparsers(dest="evals_command", required=True)
    evals.add_parser("suites", help="built-in and uploaded suites")
    upload = evals.add_parser("upload", help="upload a suite (JSONL)")
    upload.add_argument("path")
    upload.add_argument("--name", required=True)
    run = evals.add_parser("run", help="run a suite: reference model first, then adapters")
    run.add_argument("--suite", required=True, help="suite id, e.g. builtin/core-zh-en")
    run.add_argument("--models", required=True, help="comma-separated: base,my-adapter:prod")
    run.add_argument("--max-tokens", dest="max_tokens", type=int, default=256)
    run.add_argument("--follow", action="store_true", help="progress bar until the run finishes")
    run.add_argument("--judge", help="model that rates every answer 1-5: base or one of your adapters")
    rate = evals.add_parser("rate", help="import people's 1-5 ratings of a run's answers (JSONL)")
    rate.add_argument("run_id")
    rate.add_argument("path", help='lines of {"item_id", "model", "score", "rater"?, "comment"?}')
    evals.add_parser("list")
    evals.add_parser("show").add_argument("run_id")
    report = evals.add_parser("report")
    report.add_argument("run_id")
    report.add_argument("--format", choices=["md", "html", "json"], default="md")
    report.add_argument("--out", help="directory to write the report to")
    report.add_argument("--open", action="store_true", help="write it and open it in the browser")
    p.set_defaults(func=cmd_evals)
