"""`tuneforge generate` and `chat`: answers from an adapter or the base model."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from tuneforge.cli.adapters import adapter_version_request
from tuneforge.cli.options import client_for, client_options, sampling_options
from tuneforge.console import stream_answer


def _sampling(args: argparse.Namespace):  # -> inference_pb2.SamplingParams
    from tuneforge.v1 import inference_pb2

    sampling = inference_pb2.SamplingParams(
        temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, stop=args.stop or []
    )
    if args.seed is not None:
        sampling.seed = args.seed
    return sampling


def _response_format(args: argparse.Namespace):  # -> inference_pb2.ResponseFormat | None
    """`--json` / `--json-schema FILE` as the request's ResponseFormat (the server checks the schema)."""
    from tuneforge.v1 import inference_pb2

    if args.json_schema is not None:
        try:
            schema = Path(args.json_schema).read_text(encoding="utf-8")
        except OSError as exc:
            raise SystemExit(f"tuneforge: cannot read --json-schema {args.json_schema}: {exc}") from exc
        return inference_pb2.ResponseFormat(
            type=inference_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema=schema, name=Path(args.json_schema).stem
        )
    if args.json:
        return inference_pb2.ResponseFormat(type=inference_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    return None


def cmd_generate(args: argparse.Namespace) -> int:
    from tuneforge.v1 import inference_pb2

    messages = ([("system", args.system)] if args.system else []) + [("user", args.prompt)]
    response_format = _response_format(args)
    with client_for(args) as client:
        if args.no_stream:
            from tuneforge.v1 import common_pb2

            response = client.call(
                client.inference.Generate,
                inference_pb2.GenerateRequest(
                    model=args.model,
                    messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in messages],
                    sampling=_sampling(args),
                    response_format=response_format,
                ),
            )
            print(response.text)
            print(
                f"[{response.resolved_model}: {response.usage.prompt_tokens} prompt + "
                f"{response.usage.completion_tokens} completion tokens]",
                file=sys.stderr,
            )
            print(f"[rate it: tuneforge feedback submit {response.response_id} --up|--down ...]", file=sys.stderr)
            return 0
        _, last = stream_answer(client, args.model, messages, _sampling(args), response_format=response_format)
        if last is not None:
            print(f"[{last.usage.completion_tokens} tokens]", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """An interactive conversation with an adapter (or the base model), streamed to the terminal.

    The adapter is checked first (unknown: exit status 2). Ctrl-C during an answer stops that answer
    (what was shown stays in the conversation); at the prompt it drops the line. A server error
    is shown and the conversation goes on without that turn. An empty line or Ctrl-D ends it.
    """
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - line editing and history for input()
    from tuneforge.client import TuneforgeError

    history: list[tuple[str, str]] = [("system", args.system)] if args.system else []
    model = args.adapter or ""
    with client_for(args) as client:
        if model:
            try:
                version = client.call(client.adapters.GetAdapterVersion, adapter_version_request(model))
            except TuneforgeError as exc:
                if exc.code not in ("NOT_FOUND", "INVALID_ARGUMENT"):
                    raise
                print(
                    f"tuneforge: cannot chat with adapter {model!r}: {exc.message}. "
                    "`tuneforge adapters list` shows the adapters of your key's tenant.",
                    file=sys.stderr,
                )
                return 2
            described = f"{model} ({version.adapter_version.adapter}:{version.adapter_version.version})"
        else:
            described = "the base model"
        print(f"chatting with {described}; Ctrl-C stops an answer, an empty line or Ctrl-D ends", file=sys.stderr)
        while True:
            try:
                line = input("> ")
            except EOFError:
                break
            except KeyboardInterrupt:
                print(file=sys.stderr)
                continue
            if not line.strip():
                break
            shown: list[str] = []
            try:
                text, _ = stream_answer(client, model, [*history, ("user", line)], _sampling(args), shown=shown)
            except KeyboardInterrupt:
                text = "".join(shown)
                print("[answer stopped]", file=sys.stderr)
            except TuneforgeError as exc:
                print(f"error: {exc} (the conversation goes on without this turn)", file=sys.stderr)
                continue
            history += [("user", line), ("assistant", text)]
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="one answer from an adapter or the base model")
    client_options(p)
    sampling_options(p)
    p.add_argument("--model", default="", help="adapter[:version|alias]; empty for the base model")
    p.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="the answer is a JSON object (enforced while decoding)")
    shape.add_argument(
        "--json-schema", metavar="FILE", help="the answer is JSON matching the JSON schema in FILE (enforced)"
    )
    p.add_argument("prompt")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="talk to an adapter in the terminal, answers streamed")
    client_options(p)
    sampling_options(p)
    p.add_argument("--adapter", default="", help="adapter[:version|alias]; empty for the base model")
    p.set_defaults(func=cmd_chat)
