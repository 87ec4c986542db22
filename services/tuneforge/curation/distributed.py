"""Running the curation batch function under Ray Data, for datasets larger than one machine.

`ray_data_batches(...)` plugs into `curate(batches=...)`: the driver frames lines (cheap, streaming),
Ray Data fans the CPU-heavy `RecordProcessor` out over a pool of workers (each loads its own
tokenizer once), and the driver consumes results in input order, so dedup keeps the same
representatives and the version id and contents are identical to an in-process run.
Line framing materializes the rows in Ray's object store, which spills to disk past its budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from tuneforge.curation.pipeline import CurationOptions, RecordProcessor


class _RayProcessor:
    """A Ray Data actor wrapping RecordProcessor (constructed once per worker)."""

    def __init__(self, tokenizer_dir: str, options: dict[str, Any], prompt_signatures: bool) -> None:
        self.processor = RecordProcessor(tokenizer_dir, CurationOptions(**options), prompt_signatures)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        return self.processor(batch)


def ray_data_batches(
    tokenizer_dir: str, options: CurationOptions, concurrency: int = 2
) -> Callable[[Iterator[dict[str, list[Any]]], RecordProcessor], Iterator[dict[str, Any]]]:
    """A `batches=` runner for `curate` that maps line batches through Ray Data actors."""

    def run(line_batches: Iterator[dict[str, list[Any]]], local: RecordProcessor) -> Iterator[dict[str, Any]]:
        import ray.data

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # dedup keeps the earliest record: order matters
        rows = [
            {"source": s, "line": n, "raw": r, "format": f}
            for batch in line_batches
            for s, n, r, f in zip(batch["source"], batch["line"], batch["raw"], batch["format"], strict=True)
        ]
        if not rows:
            return
        dataset = ray.data.from_items(rows).map_batches(
            _RayProcessor,
            fn_constructor_args=(tokenizer_dir, asdict(options), local.prompt_signatures),
            batch_size=options.batch_size,
            concurrency=concurrency,
            batch_format="numpy",
        )
        for table in dataset.iter_batches(batch_size=options.batch_size, batch_format="pyarrow"):
            yield table.to_pydict()

    return run


_POOL_PROCESSOR: RecordProcessor | None = None


def _pool_init(tokenizer_source: str, options: dict[str, Any], prompt_signatures: bool) -> None:
    import os

    # the processes already use every core: a tokenizer thread pool per process would oversubscribe them
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _POOL_PROCESSOR
    _POOL_PROCESSOR = RecordProcessor(tokenizer_source, CurationOptions(**options), prompt_signatures)


def _pool_process(batch: dict[str, list[Any]]) -> tuple[dict[str, list[Any]], dict[str, float]]:
    assert _POOL_PROCESSOR is not None
    before = dict(_POOL_PROCESSOR.seconds)
    out = _POOL_PROCESSOR(batch)
    spent = {stage: seconds - before.get(stage, 0.0) for stage, seconds in _POOL_PROCESSOR.seconds.items()}
    return out, spent


def process_pool_batches(
    tokenizer_source: str, options: CurationOptions, processes: int
) -> Callable[[Iterator[dict[str, list[Any]]], RecordProcessor], Iterator[dict[str, Any]]]:
    """A `batches=` runner that uses `processes` local worker processes (all cores of one machine).

    Results come back in input order; at most two batches per process are in flight, so memory
    stays bounded however large the input. Stage timings are summed into the local processor's.
    """

    def run(line_batches: Iterator[dict[str, list[Any]]], local: RecordProcessor) -> Iterator[dict[str, Any]]:
        import collections
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # no fork: tokenizer thread pools do not survive it
        with context.Pool(
            processes, initializer=_pool_init, initargs=(tokenizer_source, asdict(options), local.prompt_signatures)
        ) as pool:
            pending: collections.deque[Any] = collections.deque()
            for batch in line_batches:
                pending.append(pool.apply_async(_pool_process, (batch,)))
                while len(pending) >= 2 * processes:
                    yield _collect(pending.popleft().get(), local)
            while pending:
                yield _collect(pending.popleft().get(), local)

    return run


def _collect(result: tuple[dict[str, list[Any]], dict[str, float]], local: RecordProcessor) -> dict[str, list[Any]]:
    out, spent = result
    local.seconds.update(spent)
    return out
