"""Running the curation batch function under Ray Data, for datasets larger than one machine.

`ray_data_batches(...)` plugs into `curate(batches=...)`: the driver frames lines (cheap, streaming),
Ray Data fans the CPU-heavy `RecordProcessor` out over a pool of workers (each loads its own
tokenizer once per window), and the driver consumes results in input order, so dedup keeps the
same representatives and the version id and contents are identical to an in-process run. The
driver feeds Ray Data one window of line batches at a time, so the input streams instead of
being materialized in the driver. `ProcessPoolBatches` does the same over local processes; it is
what dataset builds use (`WorkerConfig.processes`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from tuneforge.curation.pipeline import CurationOptions, RecordProcessor


class _RayProcessor:
    """A Ray Data actor wrapping RecordProcessor (constructed once per worker)."""

    def __init__(self, tokenizer_dir: str, options: dict[str, Any], prompt_signatures: bool) -> None:
        self.processor = RecordProcessor(tokenizer_dir, CurationOptions(**options), prompt_signatures)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        return self.processor(batch)


def ray_data_batches(
    tokenizer_dir: str, options: CurationOptions, concurrency: int = 2, window_batches: int = 64
) -> Callable[[Iterator[dict[str, list[Any]]], RecordProcessor], Iterator[dict[str, Any]]]:
    """A `batches=` runner for `curate` that maps line batches through Ray Data actors.

    The input streams: the driver takes `window_batches` line batches at a time from the iterator,
    hands them to Ray Data as one block each and yields their results before it reads further, so
    it never holds more than one window of lines whatever the input's size.
    """
    if window_batches < 1:
        raise ValueError(f"window_batches must be at least 1, got {window_batches}")

    def run(line_batches: Iterator[dict[str, list[Any]]], local: RecordProcessor) -> Iterator[dict[str, Any]]:
        import itertools

        import pyarrow as pa
        import ray.data

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # dedup keeps the earliest record: order matters
        while window := list(itertools.islice(line_batches, window_batches)):
            blocks = [pa.table({name: batch[name] for name in ("source", "line", "raw", "format")}) for batch in window]
            del window
            dataset = ray.data.from_arrow(blocks).map_batches(
                _RayProcessor,
                fn_constructor_args=(tokenizer_dir, options.model_dump(), local.prompt_signatures),
                batch_size=options.batch_size,
                concurrency=concurrency,
                batch_format="numpy",
            )
            for table in dataset.iter_batches(batch_size=options.batch_size, batch_format="pyarrow"):
                yield table.to_pydict()

    return run


_POOL_PROCESSOR: RecordProcessor | None = None


def _pool_init(tokenizer_source: str, options: dict[str, Any], prompt_signatures: bool) -> None:
    # the processes already use every core: a tokenizer thread pool per process would oversubscribe them
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _POOL_PROCESSOR
    _POOL_PROCESSOR = RecordProcessor(tokenizer_source, CurationOptions(**options), prompt_signatures)


def _pool_process(batch: dict[str, list[Any]]) -> tuple[dict[str, list[Any]], dict[str, float], int]:
    assert _POOL_PROCESSOR is not None
    before = dict(_POOL_PROCESSOR.seconds)
    out = _POOL_PROCESSOR(batch)
    spent = {stage: seconds - before.get(stage, 0.0) for stage, seconds in _POOL_PROCESSOR.seconds.items()}
    return out, spent, os.getpid()


class ProcessPoolBatches:
    """A `batches=` runner that uses `processes` local worker processes (all cores of one machine).

    Results come back in input order; at most two batches per process are in flight, so memory
    stays bounded however large the input. Stage timings are summed into the local processor's;
    `worker_pids` names the pool's processes and `pids` those that processed a batch.
    """

    def __init__(self, tokenizer_source: str, options: CurationOptions, processes: int) -> None:
        self.tokenizer_source = tokenizer_source
        self.options = options
        self.processes = processes
        self.worker_pids: set[int] = set()
        self.pids: set[int] = set()

    def __call__(
        self, line_batches: Iterator[dict[str, list[Any]]], local: RecordProcessor
    ) -> Iterator[dict[str, Any]]:
        import collections
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # no fork: tokenizer thread pools do not survive it
        initargs = (self.tokenizer_source, self.options.model_dump(), local.prompt_signatures)
        # a pool process killed (the OOM killer) breaks the executor: its batch's result raises
        # BrokenProcessPool, which fails the build with the cause, instead of waiting for it forever
        with ProcessPoolExecutor(self.processes, mp_context=context, initializer=_pool_init, initargs=initargs) as pool:
            pending: collections.deque[Any] = collections.deque()
            for batch in line_batches:
                pending.append(pool.submit(_pool_process, batch))
                self.worker_pids |= set(pool._processes)  # type: ignore[attr-defined]
                while len(pending) >= 2 * self.processes:
                    yield self._collect(pending.popleft().result(), local)
            while pending:
                yield self._collect(pending.popleft().result(), local)

    def _collect(
        self, result: tuple[dict[str, list[Any]], dict[str, float], int], local: RecordProcessor
    ) -> dict[str, list[Any]]:
        out, spent, pid = result
        local.seconds.update(spent)
        self.pids.add(pid)
        return out


def process_pool_batches(
    tokenizer_source: str, options: CurationOptions, processes: int
) -> Callable[[Iterator[dict[str, list[Any]]], RecordProcessor], Iterator[dict[str, Any]]]:
    """A `batches=` runner over `processes` local processes (see ProcessPoolBatches)."""
    return ProcessPoolBatches(tokenizer_source, options, processes)
