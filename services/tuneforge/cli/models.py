"""`tuneforge models`: model versions in the registry (full fine-tunes, merged models), and embedded models.

Model versions share the registry (and its calls) with adapters: `list` shows the model lines,
`show`, `alias` and `delete` work as for adapters. `list --embedded` and `prepare` need no server:
they list the embedded base models and build one into the model cache.
"""

from __future__ import annotations

import argparse

from tuneforge.cli.adapters import adapter_version_request, add_alias_parser, delete_version, list_lines, move_alias
from tuneforge.cli.exports import add_export_parser, export_model
from tuneforge.cli.options import client_for, client_options, settings_from


def cmd_models(args: argparse.Namespace) -> int:
    from tuneforge.v1 import inference_pb2

    if args.models_command in ("list", "prepare") and (args.models_command == "prepare" or args.embedded):
        return _embedded(args)
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
        elif command == "export":
            return export_model(client, args)
    return 0


def _embedded(args: argparse.Namespace) -> int:
    """The embedded base models (`list --embedded`), or one built into the model cache (`prepare NAME`)."""
    from tuneforge.models import EMBEDDED_MODELS, ModelResolver

    if args.models_command == "list":
        for name in sorted(EMBEDDED_MODELS):
            print(name)
        return 0
    settings = settings_from(args, auth={"mode": "local"})
    resolved = ModelResolver(settings.models.cache_dir, settings.models.trust_remote_code).resolve(args.name)
    print(resolved.source)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model versions: full fine-tunes and merged models")
    client_options(p)
    models = p.add_subparsers(dest="models_command", required=True)
    listing = models.add_parser("list", help="the model lines with their kind, latest version and aliases")
    listing.add_argument("--embedded", action="store_true", help="the embedded base models instead (no server)")
    prepare = models.add_parser("prepare", help="build an embedded model into the cache and print its path")
    prepare.add_argument("name")
    prepare.add_argument("--config")
    models.add_parser("show", help="NAME[:VERSION|ALIAS]: a version with its lineage and files").add_argument("ref")
    add_alias_parser(models, "model")
    models.add_parser("delete", help="NAME:VERSION").add_argument("ref")
    add_export_parser(models)
    p.set_defaults(func=cmd_models)
