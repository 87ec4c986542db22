"""Merging a LoRA adapter into its base model: a standalone transformers model directory.

PEFT does the arithmetic (`merge_and_unload`, W + B·A·scale per adapted module); this module
loads the two, checks that the adapter belongs to the base, and writes safetensors shards with their
index, the config, the generation config, the tokenizer files and the chat template, so the result
loads with `from_pretrained(dir)` alone and serves or exports like any model.

The merge itself runs in fp32 whatever the output precision: the sum is rounded once, when the
merged weights are cast to `dtype` for saving (bf16 output is then within bf16's own rounding of the
fp32 merge). Only safetensors are read (`use_safetensors=True`); nothing is unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.common.errors import FailedPrecondition, InvalidArgument

#: Output precisions a merge may write, by their names on the wire.
MERGE_DTYPES = ("float32", "bfloat16", "float16")
#: Default largest safetensors shard: big enough for few files, small enough for any file system.
DEFAULT_SHARD_BYTES = 2 * 1024**3
#: Files of a model directory that travel with it (registry copies, exports): weights as safetensors
#: only (pickles are never stored or sent), configs, tokenizer files of every kind, chat templates.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".txt", ".jinja", ".model", ".tiktoken")

Progress = Callable[[float, str], None]


class Cancelled(Exception):
    """Raised by a progress callback to stop a merge or an export between two steps."""


@dataclass(frozen=True)
class MergeResult:
    """What a merge wrote: the directory, its files (names and sizes), and the model's facts."""

    directory: Path
    files: list[dict[str, Any]]
    dtype: str
    architecture: str
    num_parameters: int


def check_dtype(dtype: str, field: str = "dtype") -> str:
    """`dtype` (empty means float32) when it is one a merge writes; INVALID_ARGUMENT naming `field` otherwise."""
    dtype = dtype or "float32"
    if dtype not in MERGE_DTYPES:
        raise InvalidArgument.for_field(field, f"{dtype!r} is not one of {', '.join(MERGE_DTYPES)}")
    return dtype


def _noop(fraction: float, stage: str) -> None:
    return None


def merge_lora(
    base_source: str,
    adapter_dir: Path,
    out_dir: Path,
    dtype: str = "float32",
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    trust_remote_code: bool = False,
    expected_template_hash: str = "",
    progress: Progress = _noop,
) -> MergeResult:
    """Writes base + adapter, merged, as a model directory into `out_dir` (which must be empty or absent).

    `base_source` is what `from_pretrained` loads (a local directory or a hub id); `adapter_dir` a
    PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`). When
    `expected_template_hash` is set, the base's tokenizer must hash to it (the adapter's lineage),
    else FAILED_PRECONDITION: an adapter merged into a base it was not trained on is noise.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.models.resolver import template_hash

    dtype = check_dtype(dtype)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FailedPrecondition(f"{out_dir} is not empty; merge into a new directory")
    if not (Path(adapter_dir) / "adapter_model.safetensors").is_file():
        raise FailedPrecondition(f"{adapter_dir} holds no adapter_model.safetensors (only safetensors are loaded)")
    progress(0.02, "loading the tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"the base model {base_source!r} could not be loaded: {exc}") from exc
    if expected_template_hash and template_hash(tokenizer) != expected_template_hash:
        raise FailedPrecondition(
            f"the base model {base_source!r} does not have the tokenizer and chat template the adapter was "
            "trained with (template hashes differ); merge it into the base model of its lineage"
        )
    progress(0.05, "loading the base model")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base_source, dtype=torch.float32, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except (OSError, ValueError, KeyError) as exc:  # e.g. a base shipped as .bin only (never unpickled here)
        raise FailedPrecondition(f"the base model {base_source!r} could not be loaded as safetensors: {exc}") from exc
    progress(0.4, "loading the adapter")
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # target modules or shapes of another base
        raise FailedPrecondition(
            f"the adapter in {adapter_dir} does not fit the base model {base_source!r}: {exc}"
        ) from exc
    progress(0.5, "merging")
    merged = peft_model.merge_and_unload(progressbar=False, safe_merge=True)
    merged.eval()
    if dtype != "float32":
        merged = merged.to(getattr(torch, dtype))
    progress(0.7, "writing safetensors")
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_bytes)
    tokenizer.save_pretrained(out_dir)
    if tokenizer.chat_template and not (out_dir / "chat_template.jinja").exists():
        # tokenizer_config.json carries it too; a separate file is what llama.cpp-side tools read
        (out_dir / "chat_template.jinja").write_text(tokenizer.chat_template)
    # names and sizes only: whoever keeps the directory hashes it as it copies (the registry does)
    files = [
        {"name": p.relative_to(out_dir).as_posix(), "size_bytes": p.stat().st_size}
        for p in sorted(out_dir.rglob("*"))
        if p.is_file()
    ]
    architecture = (merged.config.architectures or [type(merged).__name__])[0]
    count = sum(p.numel() for p in merged.parameters())
    progress(1.0, "merged")
    return MergeResult(out_dir, files, dtype, architecture, count)


def file_digests(directory: Path) -> list[dict[str, Any]]:
    """Name, SHA-256 and size of every file under `directory` (sorted by name), read in 1 MiB blocks."""
    from tuneforge.store.artifacts import file_digest

    found = []
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        digest = file_digest(path)
        found.append(
            {"name": path.relative_to(directory).as_posix(), "sha256": digest.sha256, "size_bytes": digest.size_bytes}
        )
    return found


def read_config(model_dir: Path) -> dict[str, Any]:
    """A model directory's config.json; FAILED_PRECONDITION when it has none or it does not parse."""
    try:
        return json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"{model_dir} is not a model directory with a readable config.json: {exc}") from exc
