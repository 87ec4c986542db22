"""`tuneforge selfinstruct`: Self-Instruct data generation from seed tasks, its review, and a dataset version.

tuneforge selfinstruct create --seeds-file seeds.txt --count 20 --follow
tuneforge selfinstruct review cand-… --accept --answer "a better answer"
tuneforge selfinstruct build gen-… --dataset support --base-model smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import sys
import time

from tuneforge.cli.options import client_for, client_options
from tuneforge.console import version_line


def run_line(run) -> str:
    """One run on one line: id, state, model, proposed/total, kept, accepted."""
    from tuneforge.v1 import generation_pb2

    state = generation_pb2.GenerationRunState.Name(run.state).removeprefix("GENERATION_RUN_STATE_").lower()
    p = run.progress
    counts = f"{p.proposed}/{p.total} proposed  {p.kept} kept  {p.accepted} accepted"
    return f"{run.id}  {state:9s} {run.resolved_model or run.model:30s} {counts}"


def candidate_line(candidate) -> str:
    """One candidate: id, status (and filter reason or reviewer), its instruction."""
    from tuneforge.v1 import generation_pb2

    status = generation_pb2.CandidateStatus.Name(candidate.status).removeprefix("CANDIDATE_STATUS_").lower()
    why = candidate.filter_reason or candidate.reviewer
    instruction = " ".join(candidate.instruction.split())[:80]
    return f"{candidate.id}  {candidate.index:3d} {status:8s} {why:20s} {instruction}"


def _follow(client, stub, run):
    from tuneforge.v1 import generation_pb2

    final = (
        generation_pb2.GENERATION_RUN_STATE_SUCCEEDED,
        generation_pb2.GENERATION_RUN_STATE_FAILED,
        generation_pb2.GENERATION_RUN_STATE_CANCELLED,
    )
    while run.state not in final:
        time.sleep(1.0)
        run = client.call(stub.GetGenerationRun, generation_pb2.GetGenerationRunRequest(run_id=run.id)).run
        print(run_line(run), file=sys.stderr)
    return run


def _create(client, stub, args: argparse.Namespace) -> int:
    from tuneforge.v1 import generation_pb2, inference_pb2

    seeds = list(args.seed or [])
    if args.seeds_file:
        with open(args.seeds_file, encoding="utf-8") as handle:
            seeds += [line.strip() for line in handle if line.strip()]
    sampling = inference_pb2.SamplingParams(temperature=args.temperature or 0.0, max_tokens=args.max_tokens or 0)
    if args.seed_value is not None:
        sampling.seed = args.seed_value
    request = generation_pb2.CreateGenerationRunRequest(
        seeds=seeds,
        seed_file_id=args.seed_file_id or "",
        model=args.model or "",
        count=args.count,
        seeds_per_prompt=args.seeds_per_prompt or 0,
        sampling=sampling,
    )
    run = client.call(stub.CreateGenerationRun, request).run
    run = _follow(client, stub, run) if args.follow else run
    print(run_line(run))
    if run.failure_reason:
        print(f"FAILED: {run.failure_reason}", file=sys.stderr)
        return 1
    return 0


def _build(client, stub, args: argparse.Namespace) -> int:
    from tuneforge.v1 import curation_pb2, generation_pb2

    request = generation_pb2.BuildDatasetFromCandidatesRequest(
        run_id=args.run_id, dataset=args.dataset, settings=curation_pb2.CurationSettings(base_model=args.base_model)
    )
    built = client.call(stub.BuildDatasetFromCandidates, request)
    print(f"{built.file.id}  {built.file.filename}  {len(built.candidate_ids)} accepted pairs")
    version = client.wait_for_dataset_version(built.dataset_version.id)
    print(version_line(version))
    if version.failure_reason:
        print(f"FAILED: {version.failure_reason}", file=sys.stderr)
        return 1
    return 0


def cmd_selfinstruct(args: argparse.Namespace) -> int:
    from tuneforge.v1 import generation_pb2, generation_pb2_grpc

    with client_for(args) as client:
        stub = generation_pb2_grpc.GenerationServiceStub(client.channel)
        command = args.selfinstruct_command
        if command == "create":
            return _create(client, stub, args)
        if command == "build":
            return _build(client, stub, args)
        if command == "list":
            request = generation_pb2.ListGenerationRunsRequest()
            while True:
                page = client.call(stub.ListGenerationRuns, request)
                for run in page.runs:
                    print(run_line(run))
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
        elif command == "show":
            run = client.call(stub.GetGenerationRun, generation_pb2.GetGenerationRunRequest(run_id=args.run_id)).run
            print(run_line(run))
            listed = client.call(stub.ListCandidates, generation_pb2.ListCandidatesRequest(run_id=args.run_id))
            for candidate in listed.candidates:
                print(candidate_line(candidate))
        elif command == "review":
            decision = generation_pb2.REVIEW_DECISION_ACCEPT if args.accept else generation_pb2.REVIEW_DECISION_REJECT
            request = generation_pb2.ReviewCandidateRequest(
                candidate_id=args.candidate_id,
                decision=decision,
                instruction=args.instruction or "",
                answer=args.answer or "",
            )
            print(candidate_line(client.call(stub.ReviewCandidate, request).candidate))
        elif command == "cancel":
            request = generation_pb2.CancelGenerationRunRequest(run_id=args.run_id)
            print(run_line(client.call(stub.CancelGenerationRun, request).run))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("selfinstruct", help="generate instruction data from seed tasks (Self-Instruct) and review it")
    client_options(p)
    commands = p.add_subparsers(dest="selfinstruct_command", required=True)
    create = commands.add_parser("create", help="start a generation run from seed tasks")
    create.add_argument("--seed", action="append", help="a seed task (repeatable)")
    create.add_argument("--seeds-file", dest="seeds_file", help="a local text file: one seed task per line")
    create.add_argument("--seed-file-id", dest="seed_file_id", help="an uploaded file of seed tasks (file-…)")
    create.add_argument("--model", help="base (default) or adapter[:version|alias]")
    create.add_argument("--count", type=int, default=10, help="candidates to propose (1-200)")
    create.add_argument("--seeds-per-prompt", dest="seeds_per_prompt", type=int, help="seeds shown per prompt (3)")
    create.add_argument("--temperature", type=float, help="sampling temperature (0.7)")
    create.add_argument("--max-tokens", dest="max_tokens", type=int, help="tokens per instruction and answer (128)")
    create.add_argument("--sampling-seed", dest="seed_value", type=int, help="sampling seed (recorded)")
    create.add_argument("--follow", action="store_true", help="print progress until the run ends")
    commands.add_parser("list", help="the tenant's runs, newest first")
    commands.add_parser("show", help="a run and its candidates").add_argument("run_id")
    commands.add_parser("cancel", help="stop a run").add_argument("run_id")
    review = commands.add_parser("review", help="accept (optionally edited) or reject a candidate")
    review.add_argument("candidate_id")
    decision = review.add_mutually_exclusive_group(required=True)
    decision.add_argument("--accept", action="store_true")
    decision.add_argument("--reject", action="store_true")
    review.add_argument("--instruction", help="edited instruction (with --accept)")
    review.add_argument("--answer", help="edited answer (with --accept)")
    build = commands.add_parser("build", help="accepted candidates into a new file and a dataset version")
    build.add_argument("run_id")
    build.add_argument("--dataset", required=True)
    build.add_argument("--base-model", dest="base_model", required=True)
    p.set_defaults(func=cmd_selfinstruct)
