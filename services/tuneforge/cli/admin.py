"""`tuneforge keys`: API keys, no server needed (`tuneforge models` is in `models.py`)."""

from __future__ import annotations

import argparse
import secrets
import sys


def cmd_keys(args: argparse.Namespace) -> int:
    from tuneforge.common.auth import hash_key
    from tuneforge.common.names import check_resource_name

    if args.keys_command == "hash":
        key = args.key or sys.stdin.readline().strip()
        print(hash_key(key))
        return 0
    key = "tf_" + secrets.token_urlsafe(32)
    if args.role == "service":
        if args.tenant:
            raise SystemExit("--tenant: a service key acts for the tenant each call names; leave it out")
        name = args.name or "service"
        print(f"# service key {name} (put it in the calling service's Secret; it is not stored anywhere):\n# {key}")
        print(f"- sha256: {hash_key(key)}\n  role: service\n  name: {name}")
        return 0
    if not args.tenant:
        raise SystemExit("--tenant is required for member and admin keys")
    check_resource_name(args.tenant, "--tenant")
    print(f"# API key for tenant {args.tenant} (give it to the tenant; it is not stored anywhere):\n# {key}")
    print(
        f"- sha256: {hash_key(key)}\n  tenant: {args.tenant}\n  role: {args.role}\n  name: {args.name or args.tenant}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="API keys")
    keys = p.add_subparsers(dest="keys_command", required=True)
    keys.add_parser("hash", help="SHA-256 of a key, for the keys file").add_argument("key", nargs="?")
    new = keys.add_parser("new", help="a new random key and its keys-file entry")
    new.add_argument("--tenant", help="tenant of a member or admin key")
    new.add_argument("--role", choices=["member", "admin", "service"], default="member")
    new.add_argument("--name")
    p.set_defaults(func=cmd_keys)
