"""Options and helpers every command group shares: settings for servers, a client for the rest."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pydantic import ValidationError

DEFAULT_ADDRESS = "127.0.0.1:50051"


def settings_from(args: argparse.Namespace, **overrides: object):  # -> Settings
    """The settings a server command runs with: --config (or $TUNEFORGE_CONFIG), then its flags."""
    from tuneforge.common.settings import load_settings

    for name in ("host", "port", "metrics_port", "home"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    try:
        return load_settings(getattr(args, "config", None), **overrides)
    except (ValidationError, FileNotFoundError) as exc:
        sys.exit(f"tuneforge: invalid settings: {exc}")


def client_for(args: argparse.Namespace):  # -> TuneforgeClient
    from tuneforge.client import TuneforgeClient

    return TuneforgeClient(args.address, api_key=args.api_key)


def server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML settings file (or $TUNEFORGE_CONFIG)")
    p.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    p.add_argument("--metrics-port", dest="metrics_port", type=int, help="Prometheus /metrics port")
    p.add_argument("--home", type=Path, help="state directory of the embedded default (default ~/.tuneforge)")


def client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=os.environ.get("TUNEFORGE_ADDRESS", DEFAULT_ADDRESS))
    p.add_argument("--api-key", dest="api_key", default=os.environ.get("TUNEFORGE_API_KEY"))


def sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", help="system message")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", dest="top_p", type=float, default=0.0)
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=256)
    p.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    p.add_argument("--seed", type=int)
