"""The `tuneforge` command: run services, the embedded platform and the demo, and act as a client."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from pathlib import Path

from pydantic import ValidationError

DEFAULT_ADDRESS = "127.0.0.1:50051"


def _settings(args: argparse.Namespace, **overrides: object):  # -> Settings
    from tuneforge.common.settings import load_settings

    for name in ("host", "port", "metrics_port", "home"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    try:
        return load_settings(getattr(args, "config", None), **overrides)
    except (ValidationError, FileNotFoundError) as exc:
        sys.exit(f"tuneforge: invalid settings: {exc}")


def _run_server(args: argparse.Namespace, component_names: list[str], **overrides: object) -> int:
    from tuneforge.common.logging import configure_logging
    from tuneforge.common.server import build_server
    from tuneforge.services import COMPONENTS

    settings = _settings(args, **overrides)
    configure_logging(settings.log_level, settings.log_format)

    async def main() -> None:
        server, _ = await build_server(settings, [COMPONENTS[name] for name in component_names])
        await server.serve_until_signal()

    asyncio.run(main())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from tuneforge.services import COMPONENTS

    names = list(COMPONENTS) if args.service == "all" else [args.service]
    return _run_server(args, names)


def cmd_up(args: argparse.Namespace) -> int:
    from tuneforge.services import COMPONENTS

    overrides: dict[str, object] = {}
    if args.auth == "local":
        overrides["auth"] = {"mode": "local"}
    return _run_server(args, list(COMPONENTS), **overrides)


def cmd_demo(args: argparse.Namespace) -> int:
    from tuneforge.demo import run_demo

    return run_demo(Path(args.workdir), timeout=args.timeout)


def _client(args: argparse.Namespace):  # -> TuneforgeClient
    from tuneforge.client import TuneforgeClient

    return TuneforgeClient(args.address, api_key=args.api_key)


def cmd_health(args: argparse.Namespace) -> int:
    from tuneforge.services import COMPONENTS, service_names

    with _client(args) as client:
        worst = 0
        for service in ["", *service_names(list(COMPONENTS))]:
            try:
                status = client.health(service)
            except Exception as exc:  # the server may host only some services
                status = str(exc).splitlines()[0]
            worst = worst or int(status != "SERVING")
            print(f"{service or '(server)':40s} {status}")
    return worst


def cmd_files(args: argparse.Namespace) -> int:
    from tuneforge.v1 import curation_pb2

    with _client(args) as client:
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


def cmd_models(args: argparse.Namespace) -> int:
    from tuneforge.models import EMBEDDED_MODELS

    if args.models_command == "list":
        for name in sorted(EMBEDDED_MODELS):
            print(name)
        return 0
    settings = _settings(args, auth={"mode": "local"})
    from tuneforge.models import ModelResolver

    resolved = ModelResolver(settings.models.cache_dir, settings.models.trust_remote_code).resolve(args.name)
    print(resolved.source)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from tuneforge.common.auth import hash_key
    from tuneforge.common.names import check_resource_name

    if args.keys_command == "hash":
        key = args.key or sys.stdin.readline().strip()
        print(hash_key(key))
        return 0
    check_resource_name(args.tenant, "--tenant")
    key = "tf_" + secrets.token_urlsafe(32)
    print(f"# API key for tenant {args.tenant} (give it to the tenant; it is not stored anywhere):\n# {key}")
    print(
        f"- sha256: {hash_key(key)}\n  tenant: {args.tenant}\n  role: {args.role}\n  name: {args.name or args.tenant}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def server_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="YAML settings file (or $TUNEFORGE_CONFIG)")
        p.add_argument("--host", help="interface to bind (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
        p.add_argument("--metrics-port", dest="metrics_port", type=int, help="Prometheus /metrics port")
        p.add_argument("--home", type=Path, help="state directory of the embedded default (default ~/.tuneforge)")

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default=os.environ.get("TUNEFORGE_ADDRESS", DEFAULT_ADDRESS))
        p.add_argument("--api-key", dest="api_key", default=os.environ.get("TUNEFORGE_API_KEY"))

    p = sub.add_parser("serve", help="run one service (or all) as a gRPC server")
    p.add_argument("service", choices=["curation", "training", "inference", "evaluation", "all"])
    server_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("up", help="run every service in one process: the embedded default")
    server_options(p)
    p.add_argument(
        "--auth",
        choices=["local", "configured"],
        default="local",
        help="local: single-tenant, loopback only (default); configured: use auth.* from settings",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("demo", help="start the local platform and run every stage end to end")
    p.add_argument("--workdir", default=".tuneforge/demo", help="state of the demo run (wiped first)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the platform")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("health", help="health of every service at --address")
    client_options(p)
    p.set_defaults(func=cmd_health)

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

    p = sub.add_parser("models", help="embedded models")
    models = p.add_subparsers(dest="models_command", required=True)
    models.add_parser("list")
    prepare = models.add_parser("prepare", help="build an embedded model into the cache and print its path")
    prepare.add_argument("name")
    prepare.add_argument("--config")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("keys", help="API keys")
    keys = p.add_subparsers(dest="keys_command", required=True)
    keys.add_parser("hash", help="SHA-256 of a key, for the keys file").add_argument("key", nargs="?")
    new = keys.add_parser("new", help="a new random key and its keys-file entry")
    new.add_argument("--tenant", required=True)
    new.add_argument("--role", choices=["member", "admin"], default="member")
    new.add_argument("--name")
    p.set_defaults(func=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tuneforge.client import TuneforgeError
    from tuneforge.common.errors import TuneforgeError as DomainError

    try:
        return args.func(args)
    except (TuneforgeError, DomainError) as exc:
        print(f"tuneforge: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
