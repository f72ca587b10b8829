"""The model as vLLM sees it, read from a config.json without importing torch.

Knows: layers and, for every layer, its KV kind (full, sliding window, chunked local, MLA, Mamba /
linear-attention state, none); kv heads and head size by vLLM's lookup order; dtype; vocab, hidden,
intermediate sizes; MoE experts; quantization; nested `text_config`. Does not know: anything about TP,
PP or the KV cache's size (that is plan/), nor anything measured on a device (that is profile/).

INTERFACE (fixed; the implementation fills it in): `load_model_spec` and `spec_from_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Optional


class LayerKind(str, Enum):
    """The KV-cache kind of one layer, named as vLLM's kv_cache_interface specs are."""

    FULL = "full_attention"
    SLIDING = "sliding_window"
    CHUNKED = "chunked_local_attention"
    MLA = "mla"
    MAMBA = "mamba"  # Mamba / Mamba2 / gated delta net / other linear attention: a fixed state per request
    NONE = "none"  # no KV cache at all (e.g. Nemotron-NAS no_op attention, MLP-only layers)


@dataclass(frozen=True)
class MambaMixerSpec:
    """The recurrent-state mixer of a Mamba-kind layer, at TP=1, as the config gives it.

    mixer: "mamba2" (Nemotron-H, Jamba-style Mamba2), "mamba1", or "gated_delta_net" (Qwen3-Next,
    Qwen3.5). Fields that a mixer does not use are None. State dtypes come from the model dtype unless
    the config sets `mamba_ssm_cache_dtype` (ssm_state_dtype).
    """

    mixer: str
    conv_kernel: int
    # mamba / mamba2
    num_heads: Optional[int] = None          # mamba_num_heads
    head_dim: Optional[int] = None           # mamba_head_dim
    state_size: Optional[int] = None         # ssm_state_size (d_state)
    n_groups: Optional[int] = None
    intermediate_size: Optional[int] = None  # mamba intermediate (= num_heads * head_dim for mamba2)
    # gated delta net
    num_k_heads: Optional[int] = None        # linear_num_key_heads
    num_v_heads: Optional[int] = None        # linear_num_value_heads
    head_k_dim: Optional[int] = None         # linear_key_head_dim
    head_v_dim: Optional[int] = None         # linear_value_head_dim
    ssm_state_dtype: Optional[str] = None    # None = model dtype


@dataclass(frozen=True)
class LayerSpec:
    """One decoder layer's KV-relevant attributes (total heads, before any TP split)."""

    index: int
    kind: LayerKind
    num_kv_heads: Optional[int] = None        # attention layers; MLA: 1
    head_size: Optional[int] = None           # attention layers; MLA: kv_lora_rank + qk_rope_head_dim
    sliding_window: Optional[int] = None      # SLIDING only
    attention_chunk_size: Optional[int] = None  # CHUNKED only
    mamba: Optional[MambaMixerSpec] = None    # MAMBA only


@dataclass(frozen=True)
class QuantizationSpec:
    """Weight (and possibly KV) quantization as the checkpoint declares it."""

    method: str                         # "fp8", "gptq", "awq", "mxfp4", "bitsandbytes", "compressed-tensors", "modelopt", ...
    weight_bits: Optional[int] = None   # 8, 4, ...
    group_size: Optional[int] = None
    kv_cache_dtype: Optional[str] = None  # e.g. "fp8" when the checkpoint also quantizes the KV cache
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """An immutable description of a model's language part, as vLLM would size its KV cache."""

    model_id: str                       # what the user named (hub id, directory or file)
    config_path: str                    # the file it was read from
    model_type: str                     # of the language model (text_config's when nested)
    architectures: tuple[str, ...]
    num_layers: int                     # decoder layers vLLM builds (MTP / draft layers excluded)
    layers: tuple[LayerSpec, ...]       # len == num_layers
    hidden_size: int
    intermediate_size: Optional[int]
    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int                   # of full-attention layers (vLLM lookup order); MLA: 1
    head_size: int                      # vLLM lookup order; MLA: kv_lora_rank + qk_rope_head_dim
    dtype: str                          # "bfloat16", "float16", "float32" (torch_dtype/dtype; float32 -> vLLM's auto rule)
    max_model_len: Optional[int]        # vLLM's derived default max_model_len from the config
    tie_word_embeddings: bool = False
    is_mla: bool = False
    num_experts: Optional[int] = None   # routed experts per MoE layer (None = dense)
    num_experts_per_token: Optional[int] = None
    moe_intermediate_size: Optional[int] = None
    quantization: Optional[QuantizationSpec] = None
    text_config: Mapping[str, Any] = field(default_factory=dict)  # the LM's config dict, defaults filled
    raw_config: Mapping[str, Any] = field(default_factory=dict)   # the whole config.json as read
    notes: tuple[str, ...] = ()         # e.g. "text_config defaults filled from transformers Gemma3TextConfig"


def load_model_spec(model: str, *, revision: Optional[str] = None) -> ModelSpec:
    """Resolve MODEL (hub id via the local HF cache first, a directory with config.json, or a JSON file)."""
    raise NotImplementedError


def spec_from_config(config: Mapping[str, Any], *, model_id: str, config_path: str = "<dict>",
                     extra_files: Optional[Mapping[str, Mapping[str, Any]]] = None) -> ModelSpec:
    """Build a ModelSpec from a parsed config dict. extra_files: e.g. {"hf_quant_config.json": {...}}."""
    raise NotImplementedError
