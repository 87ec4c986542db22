"""Exporting a model directory: safetensors (the directory as it is) or one GGUF file.

GGUF is what llama.cpp and Ollama run. The file is written with the `gguf` library the way
llama.cpp's `convert_hf_to_gguf.py` writes it, so both llama.cpp and transformers' GGUF reader
(`from_pretrained(dir, gguf_file=...)`) load it:

- tensor names from gguf's own table (`get_tensor_name_map`: `model.layers.0.self_attn.q_proj` →
  `blk.0.attn_q`), the output projection left out when it is tied to the embeddings;
- Llama's q/k rows permuted into the rotary layout llama.cpp expects (transformers' reader undoes
  it); Qwen2 is written as it is (its q/k/v biases included);
- 1-D tensors (norms, biases) in F32; matrices in F16, BF16 or Q8_0 (a matrix whose rows do not
  split into 32-value blocks stays F16, as llama.cpp does);
- the tokenizer as llama.cpp's `gpt2` byte-level BPE: every id up to the model's vocabulary size
  (`[PADn]` where the tokenizer has none), token types (control / user-defined / normal), merges,
  special ids and the chat template, from the directory's JSON files (`gguf.SpecialVocab`).

Weights are read from safetensors only (never unpickled), one tensor at a time, and written as they
are converted, so memory stays at one tensor whatever the model's size.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge.common.errors import FailedPrecondition, InvalidArgument
from tuneforge.models.merge import MODEL_FILE_SUFFIXES, Cancelled, Progress, _noop, read_config

FORMATS = ("safetensors", "gguf")
#: GGUF tensor types an export writes its matrices in.
GGUF_QUANTS = ("f16", "bf16", "q8_0")
#: transformers architectures GGUF export knows, and llama.cpp's name of each.
GGUF_ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}
__all__ = ["Cancelled", "check_format", "check_quant", "export_gguf", "export_safetensors", "gguf_file_name"]


def check_format(fmt: str, field: str = "format") -> str:
    if fmt not in FORMATS:
        raise InvalidArgument.for_field(field, f"{fmt!r} is not one of {', '.join(FORMATS)}")
    return fmt


def check_quant(fmt: str, quant: str, field: str = "quant") -> str:
    """The GGUF tensor type (empty means f16); a quant with safetensors is INVALID_ARGUMENT."""
    if fmt != "gguf":
        if quant:
            raise InvalidArgument.for_field(field, "applies to the gguf format only; leave it empty for safetensors")
        return ""
    quant = quant or "f16"
    if quant not in GGUF_QUANTS:
        raise InvalidArgument.for_field(field, f"{quant!r} is not one of {', '.join(GGUF_QUANTS)}")
    return quant


def gguf_file_name(name: str, quant: str) -> str:
    """`NAME-Q8_0.gguf`: the file name llama.cpp's tools give an export."""
    return f"{name}-{quant.upper()}.gguf"


def export_safetensors(model_dir: Path, out_dir: Path, progress: Progress = _noop) -> list[Path]:
    """Copies a model directory's safetensors, index, config and tokenizer files into `out_dir`."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    read_config(model_dir)
    sources = [p for p in sorted(model_dir.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if not any(p.suffix == ".safetensors" for p in sources):
        raise FailedPrecondition(f"{model_dir} holds no safetensors weights")
    sources = [p for p in sources if p.suffix in MODEL_FILE_SUFFIXES]
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(p.stat().st_size for p in sources) or 1
    done = 0
    for source in sources:
        progress(done / total, f"copying {source.name}")
        shutil.copyfile(source, out_dir / source.name)
        done += source.stat().st_size
    progress(1.0, "copied")
    return [out_dir / p.name for p in sources]


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / name for name in names]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise FailedPrecondition(f"{model_dir} holds no model.safetensors (nor a sharded index); export needs safetensors")


def _tensors(files: list[Path]) -> Iterator[tuple[str, Any]]:
    """(name, fp32 numpy array) of every weight, one at a time, from memory-mapped safetensors."""
    import torch
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has no iteration protocol
                yield name, handle.get_tensor(name).to(torch.float32).numpy()


def _permute_qk(weights: Any, n_head: int, n_head_kv: int | None) -> Any:
    """llama.cpp's rotary row order for a Llama q/k projection (`LlamaModel.permute` in its converter)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tokenizer_entries(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int], str]:
    """Tokens by id (padded to `vocab_size`), their GGUF token types, and the pre-tokenizer name."""
    import gguf
    from transformers import AutoTokenizer

    _check_byte_level_bpe(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = tokenizer.get_vocab()
    by_id = {index: token for token, index in vocab.items()}
    if len(by_id) > vocab_size:
        raise FailedPrecondition(
            f"the tokenizer has {len(by_id)} tokens, more than the model's {vocab_size} embeddings"
        )
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types, _pre_tokenizer_name(model_dir)


def _byte_level(component: Any) -> bool:
    if not isinstance(component, dict):
        return False
    return component.get("type") == "ByteLevel" or any(
        _byte_level(part) for part in component.get("pretokenizers", []) + component.get("decoders", [])
    )


def _check_byte_level_bpe(model_dir: Path) -> None:
    """The GGUF file says `gpt2` (byte-level BPE): a SentencePiece or WordPiece vocabulary written so
    would load and then tokenize wrongly in llama.cpp, so such models are refused instead."""
    try:
        spec = json.loads((model_dir / "tokenizer.json").read_text())
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(
            f"GGUF export needs the model's tokenizer.json (a byte-level BPE tokenizer): {exc}"
        ) from exc
    model_type = (spec.get("model") or {}).get("type")
    if model_type != "BPE" or not (_byte_level(spec.get("pre_tokenizer")) or _byte_level(spec.get("decoder"))):
        raise FailedPrecondition(
            f"GGUF export writes byte-level BPE tokenizers (Qwen2, Llama 3, SmolLM); this model's is "
            f"{model_type or 'unknown'} without byte-level pre-tokenization (e.g. SentencePiece); "
            "export it as safetensors instead"
        )


def _pre_tokenizer_name(model_dir: Path) -> str:
    """llama.cpp's name for how the tokenizer splits text before BPE (`default`: GPT-2's)."""
    try:
        spec = json.loads((model_dir / "tokenizer.json").read_text()).get("pre_tokenizer") or {}
    except (OSError, ValueError):
        return "default"
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    names: dict[str, str] = {}
    for pre_name, pattern in GGUF_PRE_TOKENIZER_SPLITS.items():  # the reader's table, read backwards
        names.setdefault(pattern, pre_name)  # its first name for a split (`qwen2`, `llama3`) is llama.cpp's too
    parts = spec.get("pretokenizers", [spec])
    for part in parts:
        pattern = (part.get("pattern") or {}).get("Regex") if part.get("type") == "Split" else None
        if pattern in names:
            return names[pattern]
    if any(p.get("type") == "Digits" and p.get("individual_digits") for p in parts):
        return "smollm"  # digits one by one, then GPT-2's byte-level split (SmolLM's tokenizer)
    return "default"


def _tensor_plan(config: dict[str, Any], quant: str, names_shapes: list[tuple[str, tuple[int, ...]]]) -> list[Any]:
    """(hf name, gguf name, ggml type) of every tensor to write, in the file's order."""
    import gguf

    arch = GGUF_ARCHITECTURES[config["architectures"][0]]
    arch_id = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch)
    name_map = gguf.get_tensor_name_map(arch_id, int(config["num_hidden_layers"]))
    matrix_type = {
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[quant]
    plan = []
    for name, shape in names_shapes:
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # llama.cpp reads the embeddings as the output projection when no output.weight exists
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise FailedPrecondition(f"tensor {name!r} has no GGUF name for {arch}; this model cannot be exported")
        if len(shape) == 1:
            kind = gguf.GGMLQuantizationType.F32
        elif matrix_type == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[matrix_type][0]:
            kind = gguf.GGMLQuantizationType.F16
        else:
            kind = matrix_type
        plan.append((name, gguf_name, kind, shape))
    return plan


def _nbytes(shape: tuple[int, ...], kind: Any) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[kind]
    return math.prod(shape) // block * size


def export_gguf(
    model_dir: Path,
    out_file: Path,
    quant: str = "f16",
    name: str = "",
    progress: Progress = _noop,
) -> Path:
    """Writes the model in `model_dir` (safetensors) as one GGUF file with its tokenizer; returns the path."""
    import gguf
    from safetensors import safe_open

    model_dir, out_file = Path(model_dir), Path(out_file)
    quant = check_quant("gguf", quant)
    config = read_config(model_dir)
    architecture = (config.get("architectures") or [""])[0]
    if architecture not in GGUF_ARCHITECTURES:
        raise FailedPrecondition(
            f"GGUF export supports {', '.join(sorted(GGUF_ARCHITECTURES))}; this model is {architecture or 'unknown'}"
        )
    arch = GGUF_ARCHITECTURES[architecture]
    files = _safetensors_files(model_dir)
    names_shapes = []
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            names_shapes += [(n, tuple(handle.get_slice(n).get_shape())) for n in handle.keys()]  # noqa: SIM118
    plan = _tensor_plan(config, quant, names_shapes)
    order = {hf: index for index, (hf, *_) in enumerate(plan)}
    progress(0.02, "reading the tokenizer")
    vocab_size = int(config["vocab_size"])
    tokens, types, pre = _tokenizer_entries(model_dir, vocab_size)

    n_head, n_head_kv = int(config["num_attention_heads"]), int(config.get("num_key_value_heads") or 0) or None
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_file), arch)
    try:
        writer.add_name(name or model_dir.name)
        writer.add_type("model")
        writer.add_context_length(int(config.get("max_position_embeddings") or 4096))
        writer.add_embedding_length(hidden)
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_block_count(int(config["num_hidden_layers"]))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv or n_head)
        rope = config.get("rope_parameters") or {}
        writer.add_rope_freq_base(float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0))
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-6))
        writer.add_file_type(
            {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16}.get(
                quant, gguf.LlamaFileType.MOSTLY_Q8_0
            )
        )
        if arch == "llama":
            writer.add_vocab_size(vocab_size)
            writer.add_rope_dimension_count(head_dim)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
        special.add_to_gguf(writer, quiet=True)
        for _, gguf_name, kind, shape in plan:
            plain = kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            byte_shape = shape if plain else gguf.quant_shape_to_byte_shape(shape, kind)
            writer.add_tensor_info(gguf_name, byte_shape, _numpy_dtype(kind), _nbytes(shape, kind), raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        # tensor data in the order of the table: read each tensor where its plan entry says
        pending: dict[str, Any] = {}
        written = 0
        for hf_name, weights in _tensors(files):
            if hf_name not in order:
                continue
            pending[hf_name] = weights
            while written < len(plan) and plan[written][0] in pending:
                source, gguf_name, kind, _ = plan[written]
                data = pending.pop(source)
                if arch == "llama" and gguf_name.endswith("attn_q.weight"):
                    data = _permute_qk(data, n_head, n_head)
                elif arch == "llama" and gguf_name.endswith("attn_k.weight"):
                    data = _permute_qk(data, n_head, n_head_kv)
                writer.write_tensor_data(_convert(data, kind))
                written += 1
                progress(0.05 + 0.95 * written / len(plan), "writing GGUF tensors")
        if written != len(plan):
            raise FailedPrecondition(f"{model_dir}: {len(plan) - written} tensor(s) of the index were not found")
    except BaseException:
        writer.close()
        out_file.unlink(missing_ok=True)
        raise
    writer.close()
    return out_file


def _numpy_dtype(kind: Any) -> Any:
    import gguf
    import numpy as np

    return {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}.get(kind, np.uint8)


def _convert(data: Any, kind: Any) -> Any:
    import gguf
    import numpy as np

    if kind == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if kind == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(data.astype(np.float16))
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), kind)
