"""Tuneforge: instruction-tune open LLMs and serve many tenants' LoRA adapters on one shared base model."""

__version__ = "0.1.0"
