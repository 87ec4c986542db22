"""`tuneforge files`: raw data files."""

from __future__ import annotations

import argparse

from tuneforge.cli.options import client_for, client_options


def cmd_files(args: argparse.Namespace) -> int:
    from tuneforge.v1 import curation_pb2

    with client_for(args) as client:
        if args.files_command == "upload":
            fmt = curation_pb2.DataFormat.Value(f"DATA_FORMAT_{args.format.upper()}") if args.format else 0
            f = client.upload_file(args.path, data_format=fmt, idempotency_key=args.idempotency_key or "")
            print(f"{f.id}  {f.filename}  {f.digest.size_bytes} bytes  sha256 {f.digest.sha256}")
        elif args.files_command == "list":
            for f in client.list_files():
                state = curation_pb2.FileState.Name(f.state).removeprefix("FILE_STATE_").lower()
                print(f"{f.id}  {f.filename:30s} {state:9s} {f.digest.size_bytes:>10d} bytes")
        elif args.files_command == "get":
            print(client.call(client.datasets.GetFile, curation_pb2.GetFileRequest(file_id=args.file_id)).file)
        elif args.files_command == "delete":
            client.call(client.datasets.DeleteFile, curation_pb2.DeleteFileRequest(file_id=args.file_id))
            print(f"deleted {args.file_id}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("files", help="upload and manage raw data files")
    client_options(p)
    files = p.add_subparsers(dest="files_command", required=True)
    up = files.add_parser("upload")
    up.add_argument("path")
    up.add_argument("--format", choices=["alpaca", "sharegpt", "openai_chat"])
    up.add_argument("--idempotency-key", dest="idempotency_key")
    files.add_parser("list")
    files.add_parser("get").add_argument("file_id")
    files.add_parser("delete").add_argument("file_id")
    p.set_defaults(func=cmd_files)
