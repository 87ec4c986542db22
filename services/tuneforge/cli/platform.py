"""`tuneforge serve`, `up`, `demo` and `health`: run the platform and check it."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from tuneforge.cli.options import DEFAULT_ADDRESS, client_for, client_options, server_options, settings_from


def _run_server(
    args: argparse.Namespace, component_names: list[str], console_port: int | None = None, **overrides: object
) -> int:
    from tuneforge.common.logging import configure_logging
    from tuneforge.common.server import exit_process
    from tuneforge.platform import build_server
    from tuneforge.services import COMPONENTS

    settings = settings_from(args, **overrides)
    configure_logging(settings.log_level, settings.log_format)

    async def main() -> None:
        server, _ = await build_server(settings, [COMPONENTS[name] for name in component_names])
        console = None
        if console_port is not None:  # the web console in this process, over this server, with its key check
            from tuneforge.web import ConsoleServer, ServiceAddresses
            from tuneforge.web.app import reachable_host

            own = reachable_host(settings.host)
            own = f"[{own}]" if ":" in own else own
            console = ConsoleServer(ServiceAddresses.single(f"{own}:{server.port}"), server.resolver)
            try:
                await console.start(settings.host, console_port)
            except OSError as exc:  # the port is taken: the platform serves on without its console
                print(f"Tuneforge console NOT started on port {console_port}: {exc} (--console-port 0: any free port)")
                console = None
            else:
                print(f"Tuneforge console: {console.url} (sign in with an API key)", flush=True)
        await server.serve_until_signal()
        if console is not None:
            await console.stop()
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
    console_port = None if args.console_port < 0 else args.console_port
    return _run_server(args, list(COMPONENTS), console_port, **overrides)


def cmd_console(args: argparse.Namespace) -> int:
    """The web console alone, over services elsewhere (its own Deployment in a cluster)."""
    from tuneforge.common.logging import configure_logging
    from tuneforge.common.server import key_resolver
    from tuneforge.web import ConsoleServer, ServiceAddresses

    overrides: dict[str, object] = {}
    if args.keys_file:
        overrides["auth"] = {"mode": "api_keys", "keys_file": args.keys_file}
    settings = settings_from(args, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    if settings.auth.mode == "local" and args.listen_host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("tuneforge: a console in local auth mode signs anyone in: it serves on loopback only")
    resolver = key_resolver(settings)  # the keys file the gRPC servers read: the same check, the same keys
    addresses = ServiceAddresses(
        curation=args.curation_address or args.address,
        training=args.training_address or args.address,
        inference=args.inference_address or args.address,
        evaluation=args.evaluation_address or args.address,
    )

    async def main() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        console = ConsoleServer(addresses, resolver, secure_cookies=args.secure_cookies)
        await console.start(args.listen_host, args.listen_port)
        print(f"Tuneforge console: {console.url}", flush=True)
        refresh = asyncio.create_task(_refresh_keys(resolver))
        await stop.wait()
        refresh.cancel()
        await console.stop()

    asyncio.run(main())
    return 0


async def _refresh_keys(resolver) -> None:
    """Re-reads the keys file every second, as the gRPC servers do (rotated keys apply at once)."""
    from tuneforge.common.server import KEYS_RECHECK_S

    while True:
        await asyncio.to_thread(resolver.refresh)
        await asyncio.sleep(KEYS_RECHECK_S)


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
    p.add_argument(
        "--console-port",
        dest="console_port",
        type=int,
        default=8800,
        help="port of the web console on --host (default 8800; 0 = any free port; -1 = no console)",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("console", help="run the web console over the services at --address")
    p.add_argument("--config", help="YAML settings file (or $TUNEFORGE_CONFIG): its auth.* checks the keys")
    p.add_argument("--address", default=os.environ.get("TUNEFORGE_ADDRESS", DEFAULT_ADDRESS), help="gRPC address")
    for service in ("curation", "training", "inference", "evaluation"):
        p.add_argument(f"--{service}-address", dest=f"{service}_address", help=f"{service} service, if not --address")
    p.add_argument("--host", dest="listen_host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", dest="listen_port", type=int, default=8800, help="HTTP port (default 8800)")
    p.add_argument("--keys-file", dest="keys_file", help="API keys file (auth.keys_file; the services' own)")
    p.add_argument(
        "--secure-cookies", dest="secure_cookies", action="store_true", help="mark the session cookie Secure (HTTPS)"
    )
    p.set_defaults(func=cmd_console)

    p = sub.add_parser("demo", help="start the local platform and run every stage end to end")
    p.add_argument("--workdir", default=".tuneforge/demo", help="state of the demo run (wiped first)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the platform")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("health", help="health of every service at --address")
    client_options(p)
    p.set_defaults(func=cmd_health)
