"""The curation pipeline: raw instruction files → a cleaned, deduplicated, rendered dataset version.

Streaming in three passes, with memory bounded by the batch size plus a few small arrays per record:

1. `RecordProcessor` (a batch function: columns in, columns out) parses and validates each line,
   cleans and scrubs PII, renders with the base model's chat template into token ids and an
   assistant-only loss mask, applies the length policy and computes dedup keys and MinHash
   signatures. The same callable runs in-process here or under Ray Data (`map_batches`) for data
   larger than one machine. Valid rows go to a staging Parquet file, signatures to a flat file.
2. Exact and near-duplicate clusters (and evaluation leakage) are found over the dedup arrays.
3. The staging file is read back in row groups: duplicates dropped, rows split train/validation by
   a seeded hash of their content (stable across re-runs), and written as Parquet shards.

Then the manifest and the report (JSON, Markdown, an SVG token-length histogram) are written.
"""

from __future__ import annotations

import hashlib
import json
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneforge.chat import ChatRenderer
from tuneforge.common.errors import FieldViolation
from tuneforge.curation import formats
from tuneforge.curation.clean import clean_text
from tuneforge.curation.pii import scrub_content
from tuneforge.curation.report import write_report
from tuneforge.similarity import (
    LEAKAGE_THRESHOLD,
    NUM_PERM,
    dedup_text,
    exact_duplicates,
    exact_key,
    leaked,
    minhash_batch,
    near_duplicates,
    prompt_text,
)

#: Part of every version's content address: raised whenever the same inputs and settings build other data
#: (3: leakage compares the user's turns at similarity.LEAKAGE_THRESHOLD, not the near-duplicate threshold).
PIPELINE_VERSION = 3
SHARD_ROWS = 100_000
TOO_LONG = "too_long"
TRUNCATED = "truncated"
STAGES = ("parse+validate", "clean+pii", "tokenize+mask", "dedup", "split+write")

STAGING_SCHEMA = pa.schema(
    [
        ("origin", pa.string()),
        ("messages", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.bool_())),
        ("num_tokens", pa.int32()),
        ("num_loss_tokens", pa.int32()),
        ("content_hash", pa.binary(16)),
    ]
)
OUTPUT_SCHEMA = STAGING_SCHEMA


#: Each option's name in a CreateDatasetVersion request, for errors.
OPTION_FIELDS = {
    name: f"settings.{name}"
    for name in (
        "max_seq_len",
        "length_policy",
        "validation_fraction",
        "near_duplicate_threshold",
        "scrub_pii",
        "seed",
        "max_invalid_fraction",
    )
}


class CurationOptions(BaseModel):
    """How a dataset version is built: every default and range, in one place.

    `canonical()` is part of a version's content address. The request maps only the settings it
    sets (`curation/servicer.py`), the CLI sends only the flags given, and the service's own
    default for `max_invalid_fraction` (`curation.max_invalid_fraction`) fills that one when unset.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Longest sample in tokens (longer ones are dropped or truncated).
    max_seq_len: int = Field(4096, ge=16, le=131072)
    length_policy: Literal["drop", "truncate"] = "drop"
    validation_fraction: float = Field(0.05, ge=0, le=0.5)
    #: Estimated Jaccard similarity at or above which records are near duplicates; 1 disables it.
    near_duplicate_threshold: float = Field(0.85, gt=0, le=1)
    scrub_pii: bool = True
    seed: int = Field(0, ge=-(2**63), le=2**63 - 1)
    #: Share of invalid records above which the version fails (1 never fails).
    max_invalid_fraction: float = Field(0.5, ge=0, le=1)
    max_line_bytes: int = Field(formats.DEFAULT_MAX_LINE_BYTES, ge=1)
    batch_size: int = Field(2000, ge=1)

    def canonical(self) -> dict[str, Any]:
        values = self.model_dump()
        values.pop("batch_size")  # how work is chunked does not change the result
        return values


def parse_options(values: dict[str, Any]) -> tuple[CurationOptions, list[FieldViolation]]:
    """The options `values` set (others take their defaults) and every problem with them, named as
    the request's fields; a bad option's default stands in so the rest of a request is still checked."""
    values = dict(values)
    problems: list[FieldViolation] = []
    while True:
        try:
            return CurationOptions(**values), problems
        except ValidationError as exc:
            for error in exc.errors():
                name = str(error["loc"][0]) if error["loc"] else ""
                described = error["msg"].replace("Input should be", "must be")
                problems.append(FieldViolation(OPTION_FIELDS.get(name, f"settings.{name}"), described))
                if name not in values:
                    raise
                values.pop(name)


@dataclass
class InputFile:
    """One input: a readable local path, the name issues cite, its content hash, a format override."""

    name: str
    path: Path
    sha256: str
    data_format: str = "auto"


def version_id(
    inputs: list[InputFile], options: CurationOptions, template_hash: str, leakage_suite: str = "", dataset: str = ""
) -> str:
    """Content address: the same input bytes with the same settings and tokenizer give the same id.

    `leakage_suite` is the SHA-256 of the evaluation suite whose prompts were removed, if any. The
    dataset name is part of the address: identical bytes uploaded under two names are two versions,
    each listed under its own name.
    """
    payload = {
        "pipeline": PIPELINE_VERSION,
        "dataset": dataset,
        "inputs": [[f.sha256, f.data_format] for f in inputs],
        "options": options.canonical(),
        "template": template_hash,
    }
    if leakage_suite:
        payload["leakage_suite"] = leakage_suite
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"dsv-{digest[:24]}"


class RecordProcessor:
    """Batch function: `{source, line, raw, format}` columns → one output row per input line.

    Output columns: `ok`, `format` (the one the record was read as; None where it could not be
    told), `origin`, `messages` (JSON), `input_ids`, `loss_mask`, `num_tokens`,
    `num_loss_tokens`, `content_hash`, `signature` (uint32 MinHash as bytes), `prompt_signature`,
    `issues` (JSON list), `pii` (JSON counts). Construct with a tokenizer or a directory to load one
    from (Ray Data workers load their own).
    """

    def __init__(self, tokenizer: Any, options: CurationOptions, prompt_signatures: bool = False) -> None:
        if isinstance(tokenizer, (str, Path)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        self.renderer = ChatRenderer(tokenizer)
        self.options = options
        self.prompt_signatures = prompt_signatures
        self.seconds: Counter[str] = Counter()

    def _clean(
        self,
        messages: list[dict[str, str]],
        issues: list[formats.Issue],
        pii: list[str],
        index: int,
        where: tuple[str, int],
    ) -> list[dict[str, str]] | None:
        """Cleaned (and PII-scrubbed) messages, or None after recording why the record is dropped."""
        counts: Counter[str] = Counter()
        result = []
        for position, message in enumerate(messages):
            content = message["content"]
            if "\x00" in content:
                issues.append(
                    formats.Issue(
                        formats.NUL_REMOVED,
                        f"NUL characters (\\u0000) were removed from message {position}",
                        *where,
                        f"messages[{position}]",
                        False,
                    )
                )
            text = clean_text(content)
            if self.options.scrub_pii:
                text = scrub_content(text, counts)
            result.append({"role": message["role"], "content": text})
        if counts:
            pii[index] = json.dumps(dict(counts))
        empty = next((k for k, m in enumerate(result) if not m["content"]), None)
        if empty is not None:
            issues.append(
                formats.Issue(
                    formats.EMPTY_CONTENT, f"message {empty} is empty after cleaning", *where, f"messages[{empty}]"
                )
            )
            return None
        return result

    def _render(self, conversations: list[list[dict[str, str]]]) -> list[Any]:
        """Rendered conversations; where the batch fails, each is rendered alone and failures come back as errors."""
        try:
            return list(self.renderer.render_batch(conversations))
        except Exception:
            rendered: list[Any] = []
            for conversation in conversations:
                try:
                    rendered.append(self.renderer.render_batch([conversation])[0])
                except Exception as exc:
                    rendered.append(exc)
            return rendered

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        sources, lines, raws, data_formats = batch["source"], batch["line"], batch["raw"], batch["format"]
        count = len(sources)
        out: dict[str, list[Any]] = {
            name: [None] * count
            for name in (
                "origin",
                "messages",
                "input_ids",
                "loss_mask",
                "num_tokens",
                "num_loss_tokens",
                "content_hash",
                "signature",
                "prompt_signature",
                "format",
            )
        }
        out["ok"] = [False] * count
        out["issues"] = ["[]"] * count
        out["pii"] = ["{}"] * count
        issues: list[list[formats.Issue]] = [[] for _ in range(count)]

        started = time.perf_counter()
        parsed: list[tuple[int, list[dict[str, str]]]] = []
        for i in range(count):
            source, line = str(sources[i]), int(lines[i])
            raw = raws[i]
            if raw is None:
                issues[i].append(
                    formats.Issue(
                        formats.LINE_TOO_LONG, f"line longer than {self.options.max_line_bytes} bytes", source, line
                    )
                )
                continue
            try:
                value, warnings = formats.decode_line(bytes(raw), line, source)
                data_format = formats.record_format(value, str(data_formats[i]))
                out["format"][i] = data_format
                messages, notes = formats.to_messages(value, data_format)
            except formats.RecordError as exc:
                issues[i].append(formats.Issue(exc.code, exc.message, source, line, exc.field))
                continue
            except Exception as exc:  # a bug must cost one line, never the build
                issues[i].append(_internal_issue(exc, source, line))
                continue
            issues[i] += warnings
            issues[i] += [formats.Issue(code, text, source, line, fld, False) for code, text, fld in notes]
            parsed.append((i, messages))
        now = time.perf_counter()
        self.seconds["parse+validate"] += now - started

        started = now
        cleaned: list[tuple[int, list[dict[str, str]]]] = []
        for i, messages in parsed:
            where = (str(sources[i]), int(lines[i]))
            try:
                result = self._clean(messages, issues[i], out["pii"], i, where)
            except Exception as exc:
                issues[i].append(_internal_issue(exc, *where))
                continue
            if result is not None:
                cleaned.append((i, result))
        now = time.perf_counter()
        self.seconds["clean+pii"] += now - started

        started = now
        rendered = self._render([messages for _, messages in cleaned])
        kept: list[tuple[int, list[dict[str, str]]]] = []
        limit = self.options.max_seq_len
        for (i, messages), conversation in zip(cleaned, rendered, strict=True):
            where = (str(sources[i]), int(lines[i]))
            if isinstance(conversation, Exception):
                issues[i].append(_internal_issue(conversation, *where))
                continue
            ids, mask = conversation.input_ids, conversation.loss_mask
            if len(ids) > limit:
                if self.options.length_policy == "truncate" and any(mask[:limit]):
                    ids, mask = ids[:limit], mask[:limit]
                    issues[i].append(
                        formats.Issue(TRUNCATED, f"{conversation.num_tokens} tokens cut to {limit}", *where, "", False)
                    )
                else:
                    issues[i].append(
                        formats.Issue(TOO_LONG, f"{conversation.num_tokens} tokens is over max_seq_len {limit}", *where)
                    )
                    continue
            out["input_ids"][i], out["loss_mask"][i] = ids, mask
            out["num_tokens"][i], out["num_loss_tokens"][i] = len(ids), sum(mask)
            kept.append((i, messages))
        now = time.perf_counter()
        self.seconds["tokenize+mask"] += now - started

        started = now
        texts = [dedup_text(messages) for _, messages in kept]
        signatures = minhash_batch(texts) if texts else np.zeros((0, NUM_PERM), np.uint32)
        if self.prompt_signatures and kept:
            prompts = [prompt_text(messages) for _, messages in kept]
            prompt_signatures = minhash_batch(prompts)
        for row, ((i, messages), text) in enumerate(zip(kept, texts, strict=True)):
            out["ok"][i] = True
            out["origin"][i] = f"{sources[i]}:{int(lines[i])}"
            out["messages"][i] = json.dumps(messages, ensure_ascii=False)
            out["content_hash"][i] = exact_key(text)
            out["signature"][i] = signatures[row].tobytes()
            if self.prompt_signatures:
                out["prompt_signature"][i] = prompt_signatures[row].tobytes()
        self.seconds["dedup"] += time.perf_counter() - started
        for i in range(count):
            if issues[i]:
                out["issues"][i] = json.dumps([issue.to_json() for issue in issues[i]], ensure_ascii=False)
        return out


def _internal_issue(exc: Exception, source: str, line: int) -> formats.Issue:
    return formats.Issue(
        formats.INTERNAL_ERROR,
        f"this record could not be processed ({type(exc).__name__}: {str(exc)[:200]}); it was skipped, "
        "please report it",
        source,
        line,
    )


def iter_line_batches(
    inputs: list[InputFile],
    options: CurationOptions,
    issues: list[formats.Issue],
    progress: Callable[[int], None] | None = None,
) -> Iterator[dict[str, list[Any]]]:
    """Batches of `{source, line, raw, format}` over every input; file-level problems go to `issues`.

    `format` is the input's override or `auto` (each record is then read as the format its keys say).
    """
    for item in inputs:
        with item.path.open("rb") as raw_stream:
            head = raw_stream.read(64 * 1024)
            shape = formats.diagnose_file(head)
            if shape.code:
                issues.append(formats.Issue(shape.code, shape.message, item.name, 0))
                continue
            if not head.strip(b"\xef\xbb\xbf \t\r\n"):
                issues.append(formats.Issue(formats.EMPTY_FILE, "the file has no records", item.name))
                continue
            if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
                issues.append(
                    formats.Issue(
                        formats.JSON_ARRAY_FILE,
                        "the file is a JSON array; upload JSON Lines (one object per line), e.g. `jq -c '.[]' in.json`",
                        item.name,
                        1,
                    )
                )
                continue
            if shape.cr_only or shape.crlf:
                ending = "CR only (classic Mac OS)" if shape.cr_only else "CRLF (Windows)"
                issues.append(
                    formats.Issue(
                        formats.LINE_ENDINGS_CONVERTED,
                        f"lines end in {ending}; they were read as LF line endings",
                        item.name,
                        0,
                        "",
                        False,
                    )
                )
            raw_stream.seek(0)
            stream = formats.line_stream(raw_stream, shape)
            batch: dict[str, list[Any]] = {"source": [], "line": [], "raw": [], "format": []}
            position = 0
            for number, raw in formats.iter_lines(stream, options.max_line_bytes):
                if raw is not None and not raw.strip():
                    continue  # blank lines separate nothing in JSONL; skip them silently
                batch["source"].append(item.name)
                batch["line"].append(number)
                batch["raw"].append(raw)
                batch["format"].append(item.data_format)
                if len(batch["line"]) >= options.batch_size:
                    if progress is not None:
                        progress(raw_stream.tell() - position)
                        position = raw_stream.tell()
                    yield batch
                    batch = {"source": [], "line": [], "raw": [], "format": []}
            if batch["line"]:
                yield batch
            if progress is not None:
                progress(raw_stream.tell() - position)


@dataclass
class StagingArea:
    """Collects processed batches: valid rows to Parquet, dedup arrays to flat files, issues to JSONL."""

    directory: Path
    keep_prompt_signatures: bool = False
    records_in: int = 0
    valid: int = 0
    pii: Counter[str] = field(default_factory=Counter)
    issue_counts: Counter[str] = field(default_factory=Counter)
    issue_examples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    invalid: int = 0
    truncated: int = 0
    too_long: int = 0
    by_format: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.staging_path = self.directory / "staging.parquet"
        self._writer = pq.ParquetWriter(self.staging_path, STAGING_SCHEMA)
        self._keys = bytearray()
        self._signatures = (self.directory / "signatures.u32").open("wb")
        self._prompts = (self.directory / "prompts.u32").open("wb") if self.keep_prompt_signatures else None
        self._issues = (self.directory / "issues.jsonl").open("w", encoding="utf-8")

    def add_issues(self, issues: list[formats.Issue]) -> None:
        for issue in issues:
            self._record_issue(issue.to_json())

    def _record_issue(self, issue: dict[str, Any]) -> None:
        self.issue_counts[issue["code"]] += 1
        examples = self.issue_examples[issue["code"]]
        if len(examples) < 3:
            examples.append(issue)
        self._issues.write(json.dumps(issue, ensure_ascii=False) + "\n")

    def add(self, batch: dict[str, Any]) -> None:
        oks = list(batch["ok"])
        self.records_in += len(oks)
        self.by_format.update(name for name in batch["format"] if name)
        for ok, issue_json, pii_json in zip(oks, batch["issues"], batch["pii"], strict=True):
            record_issues = json.loads(issue_json)
            for issue in record_issues:
                self._record_issue(issue)
                self.truncated += issue["code"] == TRUNCATED
            if not ok:
                self.invalid += 1
                self.too_long += any(issue["code"] == TOO_LONG for issue in record_issues)
            elif pii_json != "{}":
                self.pii.update(json.loads(pii_json))
        rows = [i for i, ok in enumerate(oks) if ok]
        if not rows:
            return
        self.valid += len(rows)
        columns = {name: [batch[name][i] for i in rows] for name in STAGING_SCHEMA.names}
        self._writer.write_table(pa.table(columns, schema=STAGING_SCHEMA))
        for i in rows:
            self._keys += batch["content_hash"][i]
            self._signatures.write(batch["signature"][i])
            if self._prompts is not None:
                self._prompts.write(batch["prompt_signature"][i])

    def close(self) -> None:
        self._writer.close()
        self._signatures.close()
        self._issues.close()
        if self._prompts is not None:
            self._prompts.close()

    def content_hashes(self) -> np.ndarray:
        return np.frombuffer(bytes(self._keys), dtype="S16")

    def signatures(self, name: str = "signatures.u32") -> np.ndarray:
        path = self.directory / name
        if self.valid == 0 or path.stat().st_size == 0:
            return np.zeros((0, NUM_PERM), dtype=np.uint32)
        return np.memmap(path, dtype=np.uint32, mode="r").reshape(-1, NUM_PERM)


@dataclass
class CurationResult:
    """What a finished pipeline run produced."""

    ok: bool
    failure_reason: str
    counts: dict[str, Any]
    report: dict[str, Any]


def _split_value(seed: int, content_hash: bytes) -> float:
    digest = hashlib.blake2b(content_hash, digest_size=8, key=seed.to_bytes(8, "little", signed=True)).digest()
    return int.from_bytes(digest, "little") / 2**64


def curate(
    inputs: list[InputFile],
    tokenizer: Any,
    options: CurationOptions,
    out_dir: Path,
    work_dir: Path,
    *,
    eval_prompts: list[list[dict[str, str]]] | None = None,
    progress: Callable[[int], None] | None = None,
    batches: Callable[[Iterator[dict[str, list[Any]]], RecordProcessor], Iterator[dict[str, Any]]] | None = None,
    metadata: dict[str, Any] | None = None,
) -> CurationResult:
    """Runs the pipeline over `inputs` and writes the version's files into `out_dir`.

    `batches` maps line batches through the processor (default: in this process; pass a Ray Data
    runner to fan out). `eval_prompts` enables the leakage check.
    """
    started_at = time.perf_counter()
    processor = RecordProcessor(tokenizer, options, prompt_signatures=bool(eval_prompts))
    staging = StagingArea(work_dir, keep_prompt_signatures=bool(eval_prompts))
    file_issues: list[formats.Issue] = []
    line_batches = iter_line_batches(inputs, options, file_issues, progress)
    mapped = batches(line_batches, processor) if batches else (processor(b) for b in line_batches)
    try:
        for out in mapped:
            staging.add(out)
        staging.add_issues(file_issues)
    finally:  # also when a build stops unexpectedly: its issues so far stay readable for the report
        staging.close()
    seconds: Counter[str] = Counter(processor.seconds)

    started = time.perf_counter()
    hashes = staging.content_hashes()
    exact = exact_duplicates(hashes)
    remaining = np.setdiff1d(np.arange(hashes.size), exact.removed, assume_unique=True)
    near = near_duplicates(staging.signatures(), options.near_duplicate_threshold, remaining)
    removed = np.zeros(hashes.size, dtype=bool)
    removed[exact.removed] = True
    removed[near.removed] = True
    leaked_rows = np.zeros(0, dtype=np.int64)
    if eval_prompts:
        eval_signatures = minhash_batch([prompt_text(c) for c in eval_prompts])
        candidates = np.flatnonzero(~removed)
        hits = leaked(staging.signatures("prompts.u32")[candidates], eval_signatures, LEAKAGE_THRESHOLD)
        leaked_rows = candidates[hits]
        removed[leaked_rows] = True
    seconds["dedup"] += time.perf_counter() - started

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    writers: dict[str, Any] = {}
    shard_rows: Counter[str] = Counter()
    shard_index: Counter[str] = Counter()
    split_counts: Counter[str] = Counter()
    split_tokens: Counter[str] = Counter()
    lengths = array("i")
    origins: dict[int, str] = {}
    wanted_origins = _reported_rows(exact, near, leaked_rows)
    shards: list[str] = []
    offset = 0
    if staging.valid:
        for table in pq.ParquetFile(staging.staging_path).iter_batches(batch_size=options.batch_size):
            table = pa.Table.from_batches([table])
            size = table.num_rows
            for row in wanted_origins.intersection(range(offset, offset + size)):
                origins[row] = table.column("origin")[row - offset].as_py()
            keep = ~removed[offset : offset + size]
            offset += size
            if not keep.any():
                continue
            table = table.filter(pa.array(keep))
            kept_hashes = table.column("content_hash").to_pylist()
            is_validation = np.array([_split_value(options.seed, h) < options.validation_fraction for h in kept_hashes])
            for split, selector in (("train", ~is_validation), ("validation", is_validation)):
                if not selector.any():
                    continue
                part = table.filter(pa.array(selector))
                split_counts[split] += part.num_rows
                split_tokens[split] += pc.sum(part.column("num_tokens")).as_py()
                if split == "train":
                    lengths.extend(part.column("num_tokens").to_pylist())
                if split not in writers or shard_rows[split] >= SHARD_ROWS:
                    if split in writers:
                        writers[split].close()
                        shard_index[split] += 1
                    name = f"{split}-{shard_index[split]:05d}.parquet"
                    shards.append(name)
                    writers[split] = pq.ParquetWriter(out_dir / name, OUTPUT_SCHEMA)
                    shard_rows[split] = 0
                writers[split].write_table(part)
                shard_rows[split] += part.num_rows
    for writer in writers.values():
        writer.close()
    (out_dir / "issues.jsonl").write_bytes((work_dir / "issues.jsonl").read_bytes())
    seconds["split+write"] += time.perf_counter() - started

    counts = {
        "records_in": staging.records_in,
        "invalid": staging.invalid - staging.too_long,
        "exact_duplicates": int(exact.removed.size),
        "near_duplicates": int(near.removed.size),
        "too_long": staging.too_long,
        "truncated": staging.truncated,
        "leaked": int(leaked_rows.size),
        "train_records": split_counts["train"],
        "validation_records": split_counts["validation"],
        "train_tokens": split_tokens["train"],
        "validation_tokens": split_tokens["validation"],
        "pii_replacements": dict(staging.pii),
        "records_by_format": dict(sorted(staging.by_format.items())),
    }
    failure = ""
    if staging.records_in == 0 and file_issues:
        failure = "no records could be read: " + "; ".join(f"{i.source}: {i.message}" for i in file_issues)
    elif staging.records_in and counts["invalid"] / staging.records_in > options.max_invalid_fraction:
        failure = (
            f"{counts['invalid']} of {staging.records_in} records are invalid (over "
            f"{options.max_invalid_fraction:.0%}); fix the file using the report's line-numbered issues, or keep "
            "the valid records by raising the invalid-share limit (settings.max_invalid_fraction, --max-invalid)"
        )
    elif split_counts["train"] == 0:
        failure = "no valid training records remain after validation, length filter and deduplication"
    clusters = _clusters_for_report(exact, near, leaked_rows, origins)
    report = write_report(
        out_dir,
        counts=counts,
        issue_counts=dict(staging.issue_counts),
        issue_examples=dict(staging.issue_examples),
        clusters=clusters,
        token_lengths=np.frombuffer(lengths, dtype=np.int32) if lengths else np.zeros(0, np.int32),
        max_seq_len=options.max_seq_len,
        seconds={stage: round(seconds[stage], 3) for stage in STAGES},
        total_seconds=round(time.perf_counter() - started_at, 3),
        metadata={
            **(metadata or {}),
            "options": options.canonical(),
            "shards": sorted(shards),
            "pipeline_version": PIPELINE_VERSION,
        },
        failure_reason=failure,
    )
    return CurationResult(ok=not failure, failure_reason=failure, counts=counts, report=report)


def _reported_rows(exact: Any, near: Any, leaked_rows: np.ndarray, limit: int = 1000) -> set[int]:
    rows: set[int] = set()
    for clusters in (exact.groups, near.groups):
        for keep, dropped in list(clusters.items())[:limit]:
            rows.add(keep)
            rows.update(dropped[:50])
    rows.update(leaked_rows[:limit].tolist())
    return rows


def _clusters_for_report(
    exact: Any, near: Any, leaked_rows: np.ndarray, origins: dict[int, str], limit: int = 1000
) -> list[dict[str, Any]]:
    result = []
    for kind, clusters in (("exact", exact.groups), ("near", near.groups)):
        for keep, dropped in sorted(clusters.items())[:limit]:
            result.append(
                {
                    "kind": kind,
                    "kept": origins.get(keep, str(keep)),
                    "removed": [origins.get(d, str(d)) for d in dropped[:50]],
                }
            )
    for row in leaked_rows[:limit].tolist():
        result.append({"kind": "leaked", "kept": "", "removed": [origins.get(row, str(row))]})
    return result
