"""`tuneforge feedback`: rate served answers and turn accepted feedback into the next dataset version.

tuneforge feedback submit chatcmpl-… --down --correct "the right answer"
tuneforge feedback export --dataset support --base-model smollm2-135m-instruct --leakage-suite builtin/smoke
"""

from __future__ import annotations

import argparse
import sys

from tuneforge.cli.options import client_for, client_options
from tuneforge.console import version_line


def feedback_line(item) -> str:
    """One feedback item on one line: id, model, rating, score, whether corrected, exported."""
    from tuneforge.v1 import feedback_pb2

    rating = feedback_pb2.FeedbackRating.Name(item.rating).removeprefix("FEEDBACK_RATING_").lower()
    rating = "-" if rating == "unspecified" else rating
    flags = ("corrected " if item.corrected_answer else "") + ("exported" if item.exported_file_ids else "")
    return f"{item.id}  {item.model:30s} {rating:5s} {item.score or '-'!s:2s} {flags.strip()}"


def _submit(client, stubs, args: argparse.Namespace) -> int:
    from tuneforge.v1 import feedback_pb2

    rating = feedback_pb2.FEEDBACK_RATING_UNSPECIFIED
    if args.up or args.down:
        rating = feedback_pb2.FEEDBACK_RATING_UP if args.up else feedback_pb2.FEEDBACK_RATING_DOWN
    correction = args.correct or ""
    if args.correct_file:
        with open(args.correct_file, encoding="utf-8") as handle:
            correction = handle.read()
    request = feedback_pb2.SubmitFeedbackRequest(
        response_id=args.response_id,
        rating=rating,
        score=args.score or 0,
        corrected_answer=correction,
        comment=args.comment or "",
    )
    print(feedback_line(client.call(stubs.SubmitFeedback, request).feedback))
    return 0


def _export(client, args: argparse.Namespace) -> int:
    from tuneforge.v1 import feedback_pb2, feedback_pb2_grpc

    stub = feedback_pb2_grpc.FeedbackExportServiceStub(client.channel)
    request = feedback_pb2.ExportFeedbackRequest(
        feedback_ids=args.ids or [],
        model=args.model or "",
        include_approved=args.include_approved,
        include_exported=args.include_exported,
    )
    done = client.call(stub.ExportFeedback, request)
    print(f"{done.instruction_file.id}  {done.instruction_file.filename}  {len(done.feedback_ids)} instruction records")
    if done.HasField("preference_file"):
        print(
            f"{done.preference_file.id}  {done.preference_file.filename}  "
            f"{len(done.preference_feedback_ids)} preference pairs (kept for preference tuning)"
        )
    if not args.dataset:
        print("build a dataset version from it: feedback export --dataset NAME --base-model MODEL", file=sys.stderr)
        return 0
    settings = {"leakage_suite_id": args.leakage_suite} if args.leakage_suite else {}
    version = client.create_dataset_version(args.dataset, [done.instruction_file.id], args.base_model, **settings)
    version = client.wait_for_dataset_version(version.id)
    print(version_line(version))
    if version.failure_reason:
        print(f"FAILED: {version.failure_reason}", file=sys.stderr)
        return 1
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from tuneforge.v1 import feedback_pb2, feedback_pb2_grpc

    with client_for(args) as client:
        stubs = feedback_pb2_grpc.FeedbackServiceStub(client.channel)
        command = args.feedback_command
        if command == "submit":
            return _submit(client, stubs, args)
        if command == "export":
            if args.dataset and not args.base_model:
                print("tuneforge: feedback export --dataset needs --base-model", file=sys.stderr)
                return 2
            return _export(client, args)
        if command == "show":
            request = feedback_pb2.GetFeedbackRequest(feedback_id=args.feedback_id)
            print(client.call(stubs.GetFeedback, request).feedback)
        elif command == "list":
            rating = feedback_pb2.FeedbackRating.Value(f"FEEDBACK_RATING_{args.rating.upper()}") if args.rating else 0
            token = ""
            while True:
                page = client.call(
                    stubs.ListFeedback,
                    feedback_pb2.ListFeedbackRequest(
                        page_token=token,
                        model=args.model or "",
                        rating=rating,
                        min_score=args.min_score or 0,
                        only_corrected=args.only_corrected,
                        only_unexported=args.only_unexported,
                    ),
                )
                for item in page.feedback:
                    print(feedback_line(item))
                token = page.next_page_token
                if not token:
                    break
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("feedback", help="rate served answers; export accepted feedback as training data")
    client_options(p)
    commands = p.add_subparsers(dest="feedback_command", required=True)
    submit = commands.add_parser("submit", help="rate an answer by its response id")
    submit.add_argument("response_id", help="the answer's id (chatcmpl-…), from generate or the HTTP API")
    thumbs = submit.add_mutually_exclusive_group()
    thumbs.add_argument("--up", action="store_true", help="thumbs up")
    thumbs.add_argument("--down", action="store_true", help="thumbs down")
    submit.add_argument("--score", type=int, help="1-5")
    correct = submit.add_mutually_exclusive_group()
    correct.add_argument("--correct", help="the answer it should have been")
    correct.add_argument("--correct-file", dest="correct_file", help="read the corrected answer from a file")
    submit.add_argument("--comment")
    listing = commands.add_parser("list", help="the tenant's feedback, newest first")
    listing.add_argument("--model", help="an exact model (name:version) or an adapter name")
    listing.add_argument("--rating", choices=["up", "down"])
    listing.add_argument("--min-score", dest="min_score", type=int)
    listing.add_argument("--only-corrected", dest="only_corrected", action="store_true")
    listing.add_argument("--only-unexported", dest="only_unexported", action="store_true")
    commands.add_parser("show", help="one item with its prompt and answer").add_argument("feedback_id")
    export = commands.add_parser("export", help="write accepted feedback into a new raw file (and build a version)")
    export.add_argument("--ids", nargs="+", help="these feedback items only")
    export.add_argument("--model", help="only feedback on this model")
    export.add_argument("--include-approved", dest="include_approved", action="store_true", help="also up/4-5 answers")
    export.add_argument("--include-exported", dest="include_exported", action="store_true", help="export items again")
    export.add_argument("--dataset", help="also build a version of this dataset from the exported file")
    export.add_argument("--base-model", dest="base_model", help="base model of that version (with --dataset)")
    export.add_argument("--leakage-suite", dest="leakage_suite", help="evaluation suite kept out of it")
    p.set_defaults(func=cmd_feedback)
