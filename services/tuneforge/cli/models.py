"""`tuneforge models`: model versions in the registry (full fine-tunes, merged models).

They share the registry (and its calls) with adapters: `list` shows the model lines, `show`,
`alias` and `delete` work as for adapters.
"""

from __future__ import annotations

import argparse

from tuneforge.cli.adapters import adapter_version_request, add_alias_parser, delete_version, list_lines, move_alias
from tuneforge.cli.options import client_for, client_options


def cmd_models(args: argparse.Namespace) -> int:
    from tuneforge.v1 import inference_pb2

    with client_for(args) as client:
        command = args.models_command
        if command == "list":
            list_lines(client, [inference_pb2.MODEL_KIND_FULL_FINE_TUNE, inference_pb2.MODEL_KIND_MERGED])
        elif command == "show":
            print(client.call(client.adapters.GetAdapterVersion, adapter_version_request(args.ref)).adapter_version)
        elif command == "alias":
            return move_alias(client, args)
        elif command == "delete":
            return delete_version(client, args.ref)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model versions: full fine-tunes and merged models")
    client_options(p)
    models = p.add_subparsers(dest="models_command", required=True)
    models.add_parser("list", help="the model lines with their kind, latest version and aliases")
    models.add_parser("show", help="NAME[:VERSION|ALIAS]: a version with its lineage and files").add_argument("ref")
    add_alias_parser(models, "model")
    models.add_parser("delete", help="NAME:VERSION").add_argument("ref")
    p.set_defaults(func=cmd_models)
