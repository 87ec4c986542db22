"""`tuneforge adapters merge` and `tuneforge models export`: ExportService from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from tuneforge.console import follow_export


def merge_adapter(client, args: argparse.Namespace) -> int:  # client: TuneforgeClient
    """Merges NAME:VERSION into its base, follows the merge, and prints the model version it registered."""
    from tuneforge.v1 import export_pb2

    request = export_pb2.MergeAdapterRequest(adapter=args.ref, model_name=args.name or "", dtype=args.dtype or "")
    export = client.call(client.exports.MergeAdapter, request).export
    print(f"merging {export.source} ({export.id})")
    export = follow_export(client, export.id)
    if export.state != export_pb2.EXPORT_STATE_SUCCEEDED:
        return 1
    size = sum(f.digest.size_bytes for f in export.files)
    print(f"registered {export.model_version}: {len(export.files)} files, {size / 1e6:.1f} MB ({export.dtype})")
    return 0


def export_model(client, args: argparse.Namespace) -> int:  # client: TuneforgeClient
    """Exports NAME:VERSION, follows the export, and downloads its files into --out."""
    from tuneforge.v1 import export_pb2

    request = export_pb2.ExportModelRequest(model=args.ref, format=args.format, quant=args.quant or "")
    export = client.call(client.exports.ExportModel, request).export
    quant = f" {export.quant}" if export.quant else ""
    print(f"exporting {export.source} as {export.format}{quant} ({export.id})")
    export = follow_export(client, export.id)
    if export.state != export_pb2.EXPORT_STATE_SUCCEEDED:
        return 1
    for path in client.download_export(export.id, Path(args.out)):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def add_merge_parser(commands: argparse._SubParsersAction) -> None:
    merge = commands.add_parser("merge", help="NAME:VERSION: merge the adapter into its base as a model version")
    merge.add_argument("ref")
    merge.add_argument("--name", help="model line to register under (default NAME-merged)")
    merge.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="saved precision (float32)")


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="NAME:VERSION: download a model (or adapter, merged) as files")
    export.add_argument("ref")
    export.add_argument("--format", required=True, help="safetensors or gguf")
    export.add_argument("--quant", help="gguf tensor type: f16 (default), bf16 or q8_0")
    export.add_argument("--out", default=".", help="directory to write the files into (default: here)")
