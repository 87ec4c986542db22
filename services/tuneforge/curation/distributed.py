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
