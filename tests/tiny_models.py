"""Tiny models made from REAL public configs (tests/data/configs, see SOURCES.md there), for fast tests.

`tiny_config(name)` reads the real config.json and shrinks it: 2 decoder layers, small widths, a small
vocabulary; every other field (architecture, rope scaling, tie_word_embeddings, MLA ranks' presence,
MoE routing, sliding windows, nested text/vision configs) stays as the real file has it.
`save_tiny_checkpoint(name, directory)` builds it with transformers and `save_pretrained`s it (safetensors),
so tests can load it back with load_format="auto". `tiny_spec(config)` gives the ModelSpec.

Shared by the runner, profile and estimate tests; no network, nothing downloaded.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

CONFIG_DIR = Path(__file__).parent / "data" / "configs"

REAL_CONFIGS = {
    "llama": "meta-llama__Llama-3.2-1B.json",          # dense GQA, tied embeddings
    "qwen2": "Qwen__Qwen2.5-7B.json",                  # dense GQA 7:1, untied, qkv bias
    "gemma3": "google__gemma-3-4b-it.json",            # multimodal, sliding 5:1, sparse text_config
    "deepseek_v2": "deepseek-ai__DeepSeek-V2-Lite-Chat.json",  # MLA + MoE (64 routed + 2 shared)
    "mixtral": "mistralai__Mixtral-8x7B-v0.1.json",    # MoE 8 experts top-2
}

# real configs with a tiny form that the all-model runner tests do not iterate over (no rotary caches, ...)
MORE_CONFIGS = {
    "nemotron_h": "nvidia__Nemotron-H-56B-Base-8K.json",  # hybrid Mamba2 (8 groups) + attention + MLP, NoPE
    "deepseek_v3": "deepseek-ai__DeepSeek-V3.json",    # MLA + MoE with the noaux_tc router bias; fp8 dropped
}

# the tiny Nemotron-H mixer: 4 heads of 8 (intermediate 32), 2 groups of state 16, layers "M*-"
TINY_MAMBA_HEADS = 4
TINY_MAMBA_HEAD_DIM = 8
TINY_MAMBA_GROUPS = 2
TINY_MAMBA_STATE = 16

# the shrunk widths (per family below); head_dim * heads need not equal hidden (as in Llama-3.2-1B)
TINY_LAYERS = 2
TINY_HIDDEN = 64
TINY_INTERMEDIATE = 128
TINY_HEADS = 4
TINY_KV_HEADS = 2
TINY_HEAD_DIM = 16
TINY_VOCAB = 512


def real_config(name: str) -> dict:
    """The real config.json of one of REAL_CONFIGS, as published."""
    return json.loads((CONFIG_DIR / {**REAL_CONFIGS, **MORE_CONFIGS}[name]).read_text())


def _shrink_text(text: dict, *, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int,
                 head_dim: int, vocab: int) -> None:
    text["num_hidden_layers"] = layers
    text["hidden_size"] = hidden
    text["intermediate_size"] = intermediate
    text["num_attention_heads"] = heads
    text["num_key_value_heads"] = kv_heads
    text["head_dim"] = head_dim
    text["vocab_size"] = vocab
    if "max_window_layers" in text:
        text["max_window_layers"] = layers


def tiny_config(name: str, *, layers: int = TINY_LAYERS, hidden: int = TINY_HIDDEN,
                intermediate: int = TINY_INTERMEDIATE, heads: int = TINY_HEADS, kv_heads: int = TINY_KV_HEADS,
                head_dim: int = TINY_HEAD_DIM, vocab: int = TINY_VOCAB, dtype: Optional[str] = None) -> dict:
    """The real config of `name`, shrunk to a tiny model of the same architecture."""
    config = copy.deepcopy(real_config(name))
    sizes = dict(layers=layers, hidden=hidden, intermediate=intermediate, heads=heads, kv_heads=kv_heads,
                 head_dim=head_dim, vocab=vocab)
    if name == "gemma3":
        text = config.setdefault("text_config", {})
        _shrink_text(text, **sizes)
        text["sliding_window"] = 8
        # the real 4b file leaves the 5:1 pattern to Gemma3TextConfig's default; with 2 layers keep one of each
        text["layer_types"] = ["sliding_attention", "full_attention"][:layers] + \
            ["full_attention"] * max(0, layers - 2)
        text["query_pre_attn_scalar"] = head_dim
        vision = config["vision_config"]
        vision.update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1,
                      image_size=28, patch_size=14)
        config["mm_tokens_per_image"] = 4          # 2x2 patches per image -> pooled to 2x2 tokens
        config["image_token_index"] = vocab - 1
        config["boi_token_index"] = vocab - 3
        config["eoi_token_index"] = vocab - 2
    else:
        _shrink_text(config, **sizes)
    if name == "deepseek_v3":
        config.pop("quantization_config", None)
        config.update(first_k_dense_replace=1, n_group=1, topk_group=1, q_lora_rank=32)
    if name in ("deepseek_v2", "deepseek_v3"):
        config.update(kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                      n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
        config.pop("head_dim", None)  # MLA sizes its heads from the ranks above
    if name == "mixtral":
        config["num_local_experts"] = 4
    if name == "nemotron_h":
        config.update(mamba_num_heads=TINY_MAMBA_HEADS, mamba_head_dim=TINY_MAMBA_HEAD_DIM,
                      n_groups=TINY_MAMBA_GROUPS, ssm_state_size=TINY_MAMBA_STATE, attention_head_dim=head_dim,
                      time_step_rank=8, hybrid_override_pattern=("M*-" * layers)[:layers])
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = config.get(key)
        if isinstance(value, int) and value >= vocab:
            config[key] = 1
        elif isinstance(value, list):
            config[key] = [1 for _ in value]
    if dtype is not None:
        config["torch_dtype"] = dtype
        if "text_config" in config:
            config["text_config"]["torch_dtype"] = dtype
    return config


def _config_object(config: dict):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING[config["model_type"]].from_dict(copy.deepcopy(config))


def tiny_spec(config: dict, model_id: str = "tiny", config_path: str = "<dict>"):
    """The ModelSpec of a (tiny) config: the spec helper's spec_from_config, else the fields we use."""
    from kvadvise.model.spec import ModelSpec

    try:
        from kvadvise.model.spec import spec_from_config

        return spec_from_config(config, model_id=model_id, config_path=config_path)
    except NotImplementedError:
        pass
    obj = _config_object(config)
    text = obj.get_text_config(decoder=True)
    dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    return ModelSpec(
        model_id=model_id, config_path=config_path, model_type=text.model_type,
        architectures=tuple(config.get("architectures") or ()), num_layers=text.num_hidden_layers,
        layers=(), hidden_size=text.hidden_size, intermediate_size=getattr(text, "intermediate_size", None),
        vocab_size=text.vocab_size, num_attention_heads=text.num_attention_heads,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
        head_size=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        dtype=str(dtype), max_model_len=getattr(text, "max_position_embeddings", None),
        tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
        text_config=text.to_dict(), raw_config=config)


def save_tiny_checkpoint(name: str, directory: Path, *, seed: int = 0, **overrides: Any) -> tuple[Path, dict]:
    """Build the tiny model with transformers (random init) and save_pretrained it (safetensors)."""
    import torch
    import transformers

    config = tiny_config(name, **overrides)
    obj = _config_object(config)
    cls = getattr(transformers, config["architectures"][0])
    torch.manual_seed(seed)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16,
             "float32": torch.float32}[config.get("torch_dtype", "bfloat16")]
    model = cls._from_config(obj, dtype=dtype)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    return directory, config


def safetensors_tensor_bytes(directory: Path, float_bytes: Optional[int] = None) -> dict[str, int]:
    """name -> numel * element size of every tensor in the checkpoint, read from safetensors headers only;
    with `float_bytes`, floating tensors count at that width (held in the model dtype, as vLLM holds them)."""
    import struct

    sizes = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
    out: dict[str, int] = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            numel = 1
            for dim in entry["shape"]:
                numel *= dim
            floating = entry["dtype"] in ("BF16", "F16", "F32", "F64")
            out[key] = numel * (float_bytes if float_bytes and floating else sizes[entry["dtype"]])
    return out
