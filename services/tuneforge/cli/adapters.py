"""`tuneforge adapters`: the adapter registry."""

from __future__ import annotations

import argparse
import sys

from tuneforge.cli.options import client_for, client_options


def cmd_adapters(args: argparse.Namespace) -> int:
    from tuneforge.v1 import training_pb2

    with client_for(args) as client:
        command = args.adapters_command
        if command == "list":
            token = ""
            while True:
                page = client.call(client.adapters.ListAdapters, training_pb2.ListAdaptersRequest(page_token=token))
                for adapter in page.adapters:
                    aliases = ", ".join(f"{k}→{v}" for k, v in sorted(adapter.aliases.items()))
                    print(f"{adapter.name:30s} latest {adapter.latest_version:<4d} {adapter.base_model:30s} {aliases}")
                token = page.next_page_token
                if not token:
                    break
        elif command == "show":
            print(client.call(client.adapters.GetAdapterVersion, adapter_version_request(args.ref)).adapter_version)
        elif command == "alias":
            adapter = client.call(
                client.adapters.SetAdapterAlias,
                training_pb2.SetAdapterAliasRequest(adapter=args.adapter, alias=args.alias, version=args.version),
            ).adapter
            print(f"{args.adapter}:{args.alias} → {adapter.aliases[args.alias]}")
        elif command == "delete":
            name, _, version = args.ref.partition(":")
            if not version.isdigit():
                print("tuneforge: delete takes NAME:VERSION", file=sys.stderr)
                return 2
            client.call(
                client.adapters.DeleteAdapterVersion,
                training_pb2.DeleteAdapterVersionRequest(adapter=name, version=int(version)),
            )
            print(f"deleted {args.ref}")
    return 0


def adapter_version_request(ref: str):  # -> training_pb2.GetAdapterVersionRequest
    """The GetAdapterVersion request for `name`, `name:<version>` or `name:<alias>`."""
    from tuneforge.v1 import training_pb2

    name, _, selector = ref.partition(":")
    request = training_pb2.GetAdapterVersionRequest(adapter=name)
    if selector.isascii() and selector.isdigit():
        request.version = int(selector)
    else:
        request.alias = selector or "latest"
    return request


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapters", help="the adapter registry")
    client_options(p)
    adapters = p.add_subparsers(dest="adapters_command", required=True)
    adapters.add_parser("list")
    adapters.add_parser("show", help="NAME[:VERSION|ALIAS]").add_argument("ref")
    alias = adapters.add_parser("alias", help="point ALIAS of ADAPTER at VERSION")
    alias.add_argument("adapter")
    alias.add_argument("alias")
    alias.add_argument("version", type=int)
    adapters.add_parser("delete", help="NAME:VERSION").add_argument("ref")
    p.set_defaults(func=cmd_adapters)
