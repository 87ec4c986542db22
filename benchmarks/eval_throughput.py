"""Evaluation throughput: a 200-item suite through a real EvaluationService run, in items/s.

Starts the inference and evaluation services in this process (tiny-qwen2 by default, local auth),
uploads a 200-item suite (the built-in zh/en items repeated under new ids, so every check type is
scored), runs it against the base model over gRPC, and prints the run's wall time split into
generation and scoring: scoring is timed again on the stored outputs with the same checks, and
generation is the rest. Baseline in the same run: the engine generating the same prompts directly
(no service, no scoring), the floor the service's generation can reach.

    .venv/bin/python benchmarks/eval_throughput.py [--items 200] [--max-tokens 64] [--model tiny-qwen2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", default="tiny-qwen2")
    args = parser.parse_args()

    from tuneforge.catalog.suites import BUILTIN_DIR
    from tuneforge.client import TuneforgeClient
    from tuneforge.common.settings import load_settings
    from tuneforge.evaluation.checks import run_check
    from tuneforge.evaluation.server import EvaluationComponent
    from tuneforge.inference.engine import Sampling
    from tuneforge.inference.server import InferenceComponent
    from tuneforge.platform import BackgroundServer
    from tuneforge.v1 import evaluation_pb2

    builtin = [json.loads(line) for line in (BUILTIN_DIR / "core-zh-en.jsonl").read_text().splitlines() if line]
    items = [{**builtin[i % len(builtin)], "id": f"item-{i:04d}"} for i in range(args.items)]
    home = Path(tempfile.mkdtemp(prefix="tuneforge-eval-bench-"))
    settings = load_settings(
        None,
        home=home,
        port=0,
        auth={"mode": "local"},
        inference={"base_model": args.model, "max_batch_size": 16},
        log_level="WARNING",
    )
    server = BackgroundServer(settings, [InferenceComponent, EvaluationComponent])
    try:
        with TuneforgeClient(server.address) as client:
            suite = client.call(
                client.evaluation.CreateSuite,
                evaluation_pb2.CreateSuiteRequest(name="bench", jsonl="\n".join(map(json.dumps, items)).encode()),
            ).suite
            request = evaluation_pb2.CreateEvalRunRequest(suite_id=suite.id, models=["base"])
            request.sampling.max_tokens = args.max_tokens
            started = time.perf_counter()
            run = client.call(client.evaluation.CreateEvalRun, request).run
            for message in client.stream(
                client.evaluation.StreamEvalRun, evaluation_pb2.StreamEvalRunRequest(run_id=run.id)
            ):
                run = message.run
            wall = time.perf_counter() - started
            assert run.state == evaluation_pb2.EVAL_RUN_STATE_SUCCEEDED, run.failure_reason
            results = []
            token = ""
            while True:
                page = client.call(
                    client.evaluation.ListEvalResults,
                    evaluation_pb2.ListEvalResultsRequest(run_id=run.id, page_size=1000, page_token=token),
                )
                results += page.results
                token = page.next_page_token
                if not token:
                    break
        by_id = {item["id"]: item for item in items}
        scoring_started = time.perf_counter()
        for result in results:
            item = by_id[result.item_id]
            for check in item["checks"]:
                run_check(check, result.output, item.get("reference", ""))
        scoring = time.perf_counter() - scoring_started

        # baseline: the engine alone on the same prompts, all submitted at once
        component = next(c for c in server.server.components if isinstance(c, InferenceComponent))
        frontend = component.servicer.frontend
        prompts = [frontend.prompt_ids([(m["role"], m["content"]) for m in item["messages"]]) for item in items]
        done = threading.Semaphore(0)
        engine = component.engine
        baseline_started = time.perf_counter()
        for prompt in prompts:
            from tuneforge.inference.engine import Request

            engine.submit(
                Request(
                    prompt, None, Sampling(max_tokens=args.max_tokens), lambda e: e.finish_reason and done.release()
                )
            )
        for _ in prompts:
            done.acquire()
        baseline = time.perf_counter() - baseline_started
    finally:
        server.stop()
    result = {
        "items": args.items,
        "model": args.model,
        "max_tokens": args.max_tokens,
        "items_per_s": round(args.items / wall, 2),
        "wall_s": round(wall, 2),
        "generation_s": round(wall - scoring, 2),
        "scoring_s": round(scoring, 3),
        "baseline_engine_only_s": round(baseline, 2),
        "baseline_items_per_s": round(args.items / baseline, 2),
    }
    print("RESULT", json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
