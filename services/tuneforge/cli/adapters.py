"""`tuneforge adapters`: the adapter registry."""

from __future__ import annotations

import argparse
import sys

from tuneforge.cli.exports import add_merge_parser, merge_adapter
from tuneforge.cli.options import client_for, client_options


def cmd_adapters(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        command = args.adapters_command
        if command == "list":
            list_lines(client, [])
        elif command == "show":
            print(client.call(client.adapters.GetAdapterVersion, adapter_version_request(args.ref)).adapter_version)
        elif command == "alias":
            return move_alias(client, args)
        elif command == "gate":
            return _gate(client, args)
        elif command == "delete":
            return delete_version(client, args.ref)
        elif command == "merge":
            return merge_adapter(client, args)
    return 0


def list_lines(client, kinds: list[int]) -> None:  # client: TuneforgeClient
    """Prints the caller's registry lines of `kinds` (ModelKind values; empty: adapters), one a line."""
    from tuneforge.v1 import inference_pb2, training_pb2

    token = ""
    while True:
        request = training_pb2.ListAdaptersRequest(page_token=token, kinds=kinds)
        page = client.call(client.adapters.ListAdapters, request)
        for line in page.adapters:
            aliases = ", ".join(f"{k}→{v}" for k, v in sorted(line.aliases.items()))
            kind = inference_pb2.ModelKind.Name(line.kind).removeprefix("MODEL_KIND_").lower()
            shown = f"{line.name:30s} latest {line.latest_version:<4d} {line.base_model:30s} "
            print(shown + (f"{kind:15s} " if kinds else "") + aliases)
        token = page.next_page_token
        if not token:
            return


def move_alias(client, args: argparse.Namespace) -> int:  # client: TuneforgeClient
    """`alias NAME ALIAS VERSION [--force --reason]` of an adapter or model line, with the gate's verdict."""
    from tuneforge.v1 import training_pb2

    if args.force and not args.reason:
        print("tuneforge: --force needs --reason (it is recorded with your key name)", file=sys.stderr)
        return 2
    request = training_pb2.SetAdapterAliasRequest(
        adapter=args.adapter, alias=args.alias, version=args.version, force=args.force, reason=args.reason or ""
    )
    moved = client.call(client.adapters.SetAdapterAlias, request)
    print(f"{args.adapter}:{args.alias} → {moved.adapter.aliases[args.alias]}")
    if moved.HasField("promotion"):
        print(describe_promotion(moved.promotion))
    return 0


def delete_version(client, ref: str) -> int:  # client: TuneforgeClient
    """Deletes `NAME:VERSION` (an adapter or model version)."""
    from tuneforge.v1 import training_pb2

    name, _, version = ref.partition(":")
    if not version.isdigit():
        print("tuneforge: delete takes NAME:VERSION", file=sys.stderr)
        return 2
    client.call(
        client.adapters.DeleteAdapterVersion,
        training_pb2.DeleteAdapterVersionRequest(adapter=name, version=int(version)),
    )
    print(f"deleted {ref}")
    return 0


def add_alias_parser(commands: argparse._SubParsersAction, what: str) -> None:
    """The `alias NAME ALIAS VERSION [--force --reason]` subcommand."""
    alias = commands.add_parser("alias", help=f"point ALIAS of {what} NAME at VERSION")
    alias.add_argument("adapter", metavar="name")
    alias.add_argument("alias")
    alias.add_argument("version", type=int)
    alias.add_argument("--force", action="store_true", help="move even though the version fails the alias's gate")
    alias.add_argument("--reason", help="why a forced move is justified (recorded in the version's lineage)")


def _gate(client, args: argparse.Namespace) -> int:  # client: TuneforgeClient
    from tuneforge.v1 import training_pb2

    if args.gate_command == "set":
        gate = training_pb2.PromotionGate(
            suite_ids=args.suite, target_categories=args.target or [], max_drop=args.max_drop
        )
        if args.min_judge_score is not None:
            gate.min_judge_score = args.min_judge_score
        request = training_pb2.SetPromotionGateRequest(adapter=args.adapter, alias=args.alias, gate=gate)
        print(describe_gate(client.call(client.adapters.SetPromotionGate, request).gate))
    elif args.gate_command == "show":
        request = training_pb2.GetPromotionGateRequest(adapter=args.adapter, alias=args.alias)
        print(describe_gate(client.call(client.adapters.GetPromotionGate, request).gate))
    else:
        request = training_pb2.DeletePromotionGateRequest(adapter=args.adapter, alias=args.alias)
        client.call(client.adapters.DeletePromotionGate, request)
        print(f"removed the gate of {args.adapter}:{args.alias}")
    return 0


def describe_gate(gate) -> str:  # gate: training_pb2.PromotionGate
    """A gate in a few lines: what the alias's next version must show."""
    from tuneforge.v1 import common_pb2

    source = (
        "platform default" if gate.source == common_pb2.PROMOTION_GATE_SOURCE_PLATFORM else "set by " + gate.updated_by
    )
    lines = [
        f"gate on {gate.adapter}:{gate.alias} ({source})",
        f"  suites:  {', '.join(gate.suite_ids)}",
        f"  improve: {', '.join(gate.target_categories) or '(nothing required)'} (95% interval above zero)",
        f"  others may drop at most {gate.max_drop:.1%}",
    ]
    if gate.HasField("min_judge_score"):
        lines.append(f"  mean judge score at least {gate.min_judge_score:.2f}")
    return "\n".join(lines)


def describe_promotion(promotion) -> str:  # promotion: common_pb2.Promotion
    """A gate's verdict on a move: pass/fail, the runs, each category's difference and interval."""
    if promotion.passed:
        head = "gate PASSED"
    elif promotion.forced:
        head = f"gate FAILED, forced by {promotion.moved_by}: {promotion.reason}"
    else:
        head = "gate FAILED"
    lines = [f"{head} (runs: {', '.join(promotion.run_ids) or 'none'})"]
    for c in promotion.categories:
        role = "target" if c.target else "other "
        lines.append(
            f"  {'ok  ' if c.passed else 'FAIL'} {role} {c.category:24s} {c.difference:+.1%} "
            f"[{c.difference_ci_low:+.1%}, {c.difference_ci_high:+.1%}]  {c.run_id}"
        )
    lines += [f"  - {failure}" for failure in promotion.failures]
    return "\n".join(lines)


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
    add_alias_parser(adapters, "adapter")
    gate = adapters.add_parser("gate", help="promotion gates: what a version must show before ALIAS moves to it")
    gates = gate.add_subparsers(dest="gate_command", required=True)
    set_gate = gates.add_parser("set", help="set the gate on ADAPTER's ALIAS")
    for parser in (set_gate, gates.add_parser("show"), gates.add_parser("delete")):
        parser.add_argument("adapter")
        parser.add_argument("alias")
    set_gate.add_argument("--suite", action="append", required=True, help="suite id to be evaluated on (repeatable)")
    set_gate.add_argument("--target", action="append", help="category that must improve (repeatable)")
    set_gate.add_argument(
        "--max-drop", dest="max_drop", type=float, default=0.0, help="largest drop of another category (0-1)"
    )
    set_gate.add_argument("--min-judge-score", dest="min_judge_score", type=float, help="least mean judge score (1-5)")
    adapters.add_parser("delete", help="NAME:VERSION").add_argument("ref")
    add_merge_parser(adapters)
    p.set_defaults(func=cmd_adapters)
