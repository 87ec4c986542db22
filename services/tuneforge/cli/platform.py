"""`tuneforge serve`, `up`, `demo` and `health`: run the platform and check it."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from tuneforge.cli.options import client_for, client_options, server_options, settings_from


def _run_server(args: argparse.Namespace, component_names: list[str], **overrides: object) -> int:
    from tuneforge.common.logging import configure_logging
    from tuneforge.common.server import exit_process
    from tuneforge.platform import build_server
    from tuneforge.services import COMPONENTS

    settings = settings_from(args, **overrides)
    configure_logging(settings.log_level, settings.log_format)

    async def main() -> None:
        server, _ = await build_server(settings, [COMPONENTS[name] for name in component_names])
        await server.serve_until_signal()
        # stopped and drained: exit here, not after asyncio.run has waited for every executor thread
        # (a call abandoned at the drain bound may still be running in one) and the interpreter's teardown
        exit_process(0)

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


def cmd_health(args: argparse.Namespace) -> int:
    from tuneforge.services import SERVICE_NAMES, service_names

    with client_for(args) as client:
        worst = 0
        for service in ["", *service_names(list(SERVICE_NAMES))]:
            try:
                status = client.health(service)
            except Exception as exc:  # the server may host only some services
                status = str(exc).splitlines()[0]
            worst = worst or int(status != "SERVING")
            print(f"{service or '(server)':40s} {status}")
    return worst


def register(sub: argparse._SubParsersAction) -> None:
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
