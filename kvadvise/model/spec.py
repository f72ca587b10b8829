"""The model as vLLM sees it, read from a config.json without importing torch.

Knows: layers and, for every layer, its KV kind (full, sliding window, chunked local, MLA, Mamba /
linear-attention state, none); kv heads and head size by vLLM's lookup order; dtype; vocab, hidden,
intermediate sizes; MoE experts; quantization; nested `text_config`. Does not know: anything about TP,
PP or the KV cache's size (that is plan/), nor anything measured on a device (that is profile/).

Reads JSON with Python's json only; transformers' class defaults for fields a config leaves out come from
the copied table in kvadvise/model/defaults.py (importing transformers would import torch), and every
default used is listed in `ModelSpec.notes`. Families whose cache vLLM lays out differently and that are
not implemented (gemma-4, DeepSeek-V3.2's indexer, Falcon-H1, Zamba, MiniMax, encoder-decoders, ...) raise
InputError instead of giving a number. Not modelled: VLLM_MLA_DISABLE, a platform's max_model_len cap,
the dtype vLLM reads from hub safetensors metadata when a config declares none (noted; float32 assumed).

INTERFACE (fixed; the implementation fills it in): `load_model_spec` and `spec_from_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Optional

from kvadvise.errors import InputError
from kvadvise.model.defaults import (ATTRIBUTE_ALIASES, SSM_STATE_DTYPE_DEFAULTS, TRANSFORMERS_VERSION,
                                     class_defaults)
from kvadvise.model.resolve import find_config


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
    # Added by the implementation: "config" when the file sets ssm_state_dtype, else None.
    ssm_state_dtype_from: Optional[str] = None
    # The transformers-5 class default of the SSM dtype field when the file is silent (NemotronH: float32).
    # vLLM >= 0.24 reads it (its NemotronH hook: float16 if unset after PR #29978, float32 after PR #39032);
    # vLLM up to 0.12 ignored the field and kept the state in the model dtype. plan/ picks by version.
    ssm_state_dtype_class_default: Optional[str] = None


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
    # Added by the implementation (optional, with defaults):
    config_dtype: Optional[str] = None  # the dtype the config declares, before vLLM's "auto" rule (None: none declared)
    top_model_type: Optional[str] = None  # config.json's own model_type (differs from model_type when nested)
    num_mtp_layers: int = 0             # multi-token-prediction layers the config declares (not in num_layers)


# ---------------------------------------------------------------------------------------------------------
# Implementation. Each rule names the vLLM / transformers source it mirrors. "vLLM config/model.py" is
# ModelConfig as read in vLLM main of the transformers-5 era (>= 0.24; before ~0.11 the same class lived in
# vllm/config/__init__.py). get_total_num_kv_heads, get_head_size, is_deepseek_mla and the rope rule of
# _get_and_verify_max_len (factor skipped for su / longrope / llama3, yarn = original * factor) read the same
# in the 0.10-0.12 copies we checked; where a rule changed between versions, its comment says so.

# vLLM config/model.py is_deepseek_mla: these text model types use MLA when kv_lora_rank is set.
MLA_MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "kimi_k2")
# vLLM config/model.py get_total_num_kv_heads: falcon ignores multi_query with new_decoder_architecture.
_FALCON_MODEL_TYPES = ("falcon", "RefinedWeb", "RefinedWebModel")
# vLLM config/model.py _FLOAT16_NOT_SUPPORTED_MODELS (since 0.9.1, PR #18751): "auto" never picks float16.
_FLOAT16_NOT_SUPPORTED = ("gemma2", "gemma3", "gemma3_text", "plamo2", "glm4")
# vLLM config/model.py _get_and_verify_max_len possible_keys, in its order.
_MAX_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                 "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
# vLLM config/model.py get_num_experts order.
_EXPERT_KEYS = ("num_experts", "moe_num_experts", "n_routed_experts", "num_local_experts")
_EXPERTS_PER_TOKEN_KEYS = ("num_experts_per_tok", "experts_per_token", "moe_topk", "num_experts_per_token")
# Families whose routed experts use `intermediate_size` (no moe_intermediate_size key): Mixtral's
# MixtralSparseMoeBlock, gpt-oss's experts, Llama 4's Llama4MoE (vLLM llama4.py intermediate_size_moe).
_EXPERT_SIZE_IS_INTERMEDIATE = ("mixtral", "gpt_oss", "llama4_text")
# Nested multimodal configs whose text_config may omit its model_type.
_TEXT_MODEL_TYPE_OF = {"gemma3": "gemma3_text", "llama4": "llama4_text", "qwen3_vl": "qwen3_vl_text",
                       "qwen3_5": "qwen3_5_text", "qwen3_5_moe": "qwen3_5_moe_text"}
# Gated-DeltaNet hybrids: transformers Qwen3NextConfig / Qwen3_5(Moe)TextConfig layer_types.
_GATED_DELTA_NET_TYPES = ("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text")
_QWEN_SLIDING_TYPES = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "qwen2_vl_text", "qwen2_5_vl_text")
# Model types we know vLLM builds differently from a plain decoder and that we do not describe yet: fail
# closed rather than print a number for a model we would get wrong.
_UNSUPPORTED_MODEL_TYPES = {
    "deepseek_v32": "DeepSeek-V3.2's sparse-attention indexer keeps its own KV cache",
    "gemma4_text": "gemma-4 uses a separate head size and kv-head count on its global layers",
    "gemma4": "gemma-4 uses a separate head size and kv-head count on its global layers",
    "mamba": "attention-free Mamba models are not described yet",
    "mamba2": "attention-free Mamba2 models are not described yet",
    "falcon_h1": "Falcon-H1 (parallel Mamba2 + attention) is not described yet",
    "bamba": "Bamba (Mamba2 + attention) is not described yet",
    "zamba": "Zamba (Mamba + shared attention) is not described yet",
    "zamba2": "Zamba2 (Mamba2 + shared attention) is not described yet",
    "plamo2": "PLaMo2 (Mamba + attention) is not described yet",
    "lfm2": "LFM2 (short convolutions + attention) is not described yet",
    "lfm2_moe": "LFM2 (short convolutions + attention) is not described yet",
    "minimax": "MiniMax (lightning attention) is not described yet",
    "minimax_text_01": "MiniMax (lightning attention) is not described yet",
    "kimi_linear": "Kimi-Linear (KDA + MLA) is not described yet",
    "longcat_flash": "LongCat-Flash (two MLA blocks per layer) is not described yet",
    "olmo_hybrid": "OLMo hybrid (linear + full attention) is not described yet",
}
# Keys that announce a layer layout we only understand for the families that own them.
_HYBRID_MARKERS = ("hybrid_override_pattern", "layers_block_type", "attn_type_list", "attn_layer_period",
                   "block_configs", "linear_num_key_heads", "mamba_num_heads", "ssm_state_size", "mamba_d_state",
                   "mamba_n_heads")
# vLLM registry names of the families described here; anything else gets a note (it still has a model_type).
_KNOWN_ARCHITECTURES = {
    "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM",
    "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Qwen3NextForCausalLM", "Qwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration", "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration",
    "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration",
    "GptOssForCausalLM", "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "KimiK25ForConditionalGeneration",
    "Llama4ForCausalLM", "Llama4ForConditionalGeneration", "NemotronHForCausalLM", "DeciLMForCausalLM",
    "GPT2LMHeadModel", "OPTForCausalLM", "FalconForCausalLM", "GPTBigCodeForCausalLM", "Phi3ForCausalLM",
    "Starcoder2ForCausalLM", "JambaForCausalLM", "GraniteMoeHybridForCausalLM",
    "RWForCausalLM",  # vLLM model_executor/models/registry.py: the early falcon uploads, loaded as FalconForCausalLM
}
# Text model types whose layer layout this module implements (or checked to be vLLM's generic decoder).
_FAMILIES_WITH_RULES = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "qwen3_next", "qwen3_vl_text",
    "qwen3_5_text", "qwen3_5_moe_text", "gemma", "gemma2", "gemma3_text", "cohere2", "gpt_oss", "deepseek_v2",
    "deepseek_v3", "kimi_k2", "llama4_text", "nemotron_h", "nemotron-nas", "jamba", "granitemoehybrid", "gpt2",
    "opt", "falcon", "RefinedWeb", "RefinedWebModel", "gpt_bigcode", "phi3", "starcoder2", "mpt", "dbrx",
}
_DTYPE_NAMES = {"float16": "float16", "half": "float16", "fp16": "float16", "bfloat16": "bfloat16",
                "bf16": "bfloat16", "float32": "float32", "float": "float32", "fp32": "float32"}


def load_model_spec(model: str, *, revision: Optional[str] = None) -> ModelSpec:
    """Resolve MODEL (hub id via the local HF cache first, a directory with config.json, or a JSON file)."""
    found = find_config(model, revision=revision)
    return spec_from_config(found.config, model_id=model, config_path=found.config_path,
                            extra_files=found.extra_files)


def spec_from_config(config: Mapping[str, Any], *, model_id: str, config_path: str = "<dict>",
                     extra_files: Optional[Mapping[str, Mapping[str, Any]]] = None) -> ModelSpec:
    """Build a ModelSpec from a parsed config dict. extra_files: e.g. {"hf_quant_config.json": {...}}."""
    if not isinstance(config, Mapping):
        raise InputError(f"{config_path}: a model config must be a JSON object")
    try:
        return _describe(config, model_id, config_path, extra_files or {})
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # a field of an unexpected type or shape: bad input, reported as such rather than as a crash
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(f"{config_path}: cannot read the config ({exc.__class__.__name__}: {detail})") from None


def _describe(config: Mapping[str, Any], model_id: str, config_path: str,
              extra_files: Mapping[str, Mapping[str, Any]]) -> ModelSpec:
    notes: list[str] = []
    top = dict(config)
    top_type = top.get("model_type")
    architectures = top.get("architectures") or ()
    architectures = (architectures,) if isinstance(architectures, str) else tuple(str(a) for a in architectures)

    text_raw, nested = _text_config(top, config_path)
    lm_type = text_raw.get("model_type") or (_TEXT_MODEL_TYPE_OF.get(top_type, top_type) if nested else top_type)
    lm_type = str(lm_type) if lm_type else None
    where = "text_config" if nested else "config"

    if lm_type in _UNSUPPORTED_MODEL_TYPES or top_type in _UNSUPPORTED_MODEL_TYPES:
        reason = _UNSUPPORTED_MODEL_TYPES.get(lm_type) or _UNSUPPORTED_MODEL_TYPES[top_type]
        raise InputError(f"{config_path}: model type {lm_type or top_type!r} is not supported: {reason}")
    if text_raw.get("is_encoder_decoder") or top.get("is_encoder_decoder"):
        raise InputError(f"{config_path}: encoder-decoder models (cross-attention caches) are not supported")

    text = _fill_defaults(text_raw, lm_type, where, notes, top if nested else None)
    _check_markers(text, lm_type, config_path)
    if lm_type == "nemotron_h" and text.get("num_hidden_layers") is None:
        # transformers 5 NemotronHConfig derives num_hidden_layers from the layer list and saves no count
        layout = text.get("hybrid_override_pattern") or text.get("layers_block_type")
        if isinstance(layout, (str, list)) and layout:
            text["num_hidden_layers"] = len(layout)

    num_layers = _require_int(text, "num_hidden_layers", where, config_path, what="layer count")
    hidden_size = _require_int(text, "hidden_size", where, config_path)
    num_heads = _require_int(text, "num_attention_heads", where, config_path)
    vocab_size = _require_int(text, "vocab_size", where, config_path)

    is_mla = lm_type in MLA_MODEL_TYPES and text.get("kv_lora_rank") is not None
    total_kv_heads = 1 if is_mla else _total_kv_heads(top_type, lm_type, text, num_heads, config_path)
    head_size = _head_size(lm_type, text, hidden_size, num_heads, is_mla, config_path)

    layers = _layers(lm_type, text, num_layers, total_kv_heads, head_size, num_heads, is_mla, config_path, notes)
    if lm_type == "nemotron_h":
        attention_sizes = {layer.head_size for layer in layers if layer.kind is LayerKind.FULL}
        if attention_sizes and attention_sizes != {head_size}:
            head_size = attention_sizes.pop()

    config_dtype, dtype = _dtype(top, text, top_type, config_path, notes)
    max_model_len = _max_model_len(text, lm_type, config_path, notes)
    quantization = _quantization(top, text, extra_files, config_path)

    num_experts = _first_value(text, _EXPERT_KEYS)
    if isinstance(num_experts, list):  # vLLM takes the first (Ernie VL)
        num_experts = num_experts[0] if num_experts else None
    num_experts = int(num_experts) if num_experts else None
    if lm_type == "nemotron_h":
        # transformers 5 saves n_routed_experts (default 8) even for dense Nemotron-H: experts only if E layers
        layout = text.get("hybrid_override_pattern") or text.get("layers_block_type") or ()
        if "E" not in layout and "moe" not in layout:
            num_experts = None
    experts_per_token = _first_value(text, _EXPERTS_PER_TOKEN_KEYS) if num_experts else None
    moe_intermediate = text.get("moe_intermediate_size") if num_experts else None
    if num_experts and moe_intermediate is None and lm_type in _EXPERT_SIZE_IS_INTERMEDIATE:
        moe_intermediate = text.get("intermediate_size")

    intermediate = _first_value(text, ("intermediate_size", "ffn_dim", "n_inner"))
    if intermediate is None and lm_type in ("gpt2", "gpt_bigcode"):
        intermediate = 4 * hidden_size  # transformers GPT2MLP / vLLM gpt2.py: n_inner None -> 4 * hidden

    tie = text.get("tie_word_embeddings", top.get("tie_word_embeddings"))
    if tie is None:
        tie = False
        notes.append("tie_word_embeddings not in the config and no known class default: assumed false")

    num_mtp = int(text.get("num_nextn_predict_layers") or text.get("mtp_num_hidden_layers") or 0)
    if num_mtp:
        notes.append(f"{num_mtp} multi-token-prediction layer(s) not counted: vLLM builds them only as a "
                     "speculative draft (vLLM config/model.py get_total_num_hidden_layers)")

    if architectures and architectures[0] not in _KNOWN_ARCHITECTURES:
        notes.append(f"architecture {architectures[0]} is not a vLLM built-in name we know; described from "
                     f"model_type {lm_type!r} (vLLM loads it only if the class is registered)")
    if not architectures:
        notes.append("config has no `architectures`; described from its model_type")
    if lm_type is None:
        notes.append("config has no model_type; described from its standard fields only")
    elif lm_type not in _FAMILIES_WITH_RULES:
        notes.append(f"model type {lm_type!r} has no family rules in kvadvise: layers are read as vLLM's generic "
                     "decoder (full attention, or the model-level sliding_window), kv heads and head size by "
                     "vLLM's lookup order")

    return ModelSpec(
        model_id=model_id,
        config_path=config_path,
        model_type=lm_type or "",
        architectures=architectures,
        num_layers=num_layers,
        layers=tuple(layers),
        hidden_size=hidden_size,
        intermediate_size=int(intermediate) if intermediate is not None else None,
        vocab_size=vocab_size,
        num_attention_heads=num_heads,
        num_kv_heads=total_kv_heads,
        head_size=head_size,
        dtype=dtype,
        max_model_len=max_model_len,
        tie_word_embeddings=bool(tie),
        is_mla=is_mla,
        num_experts=num_experts,
        num_experts_per_token=int(experts_per_token) if experts_per_token else None,
        moe_intermediate_size=int(moe_intermediate) if moe_intermediate else None,
        quantization=quantization,
        text_config=text,
        raw_config=top,
        notes=tuple(notes),
        config_dtype=config_dtype,
        top_model_type=str(top_type) if top_type else None,
        num_mtp_layers=num_mtp,
    )


# --- reading fields ------------------------------------------------------------------------------------------

def _text_config(top: dict[str, Any], config_path: str) -> tuple[dict[str, Any], bool]:
    """The language model's config: `text_config` (vLLM get_hf_text_config; `llm_config` is remapped to it)."""
    for key in ("text_config", "llm_config"):
        nested = top.get(key)
        if nested is None:
            continue
        if not isinstance(nested, Mapping):
            raise InputError(f"{config_path}: `{key}` is not a JSON object")
        return dict(nested), True
    return top, False


def _fill_defaults(text: dict[str, Any], model_type: Optional[str], where: str, notes: list[str],
                   outer: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """Apply transformers' attribute aliases and class defaults for keys the config leaves out (noted).

    OUTER is the enclosing multimodal config: a tie_word_embeddings it declares is used instead of a default.
    """
    filled = dict(text)
    key = "falcon" if model_type in _FALCON_MODEL_TYPES else model_type
    for standard, alias in ATTRIBUTE_ALIASES.get(key or "", {}).items():
        if filled.get(standard) is None and filled.get(alias) is not None:
            filled[standard] = filled[alias]
    if outer is not None and "tie_word_embeddings" not in filled and outer.get("tie_word_embeddings") is not None:
        filled["tie_word_embeddings"] = outer["tie_word_embeddings"]
    unused = ("sliding_window_pattern", "full_attention_interval") if filled.get("layer_types") else ()
    taken = []
    for name, value in class_defaults(key or "").items():
        if name not in filled and name not in unused:
            filled[name] = value
            taken.append(f"{name}={value}")
    if taken:
        notes.append(f"{where} leaves {len(taken)} field(s) to transformers {TRANSFORMERS_VERSION} defaults of "
                     f"{model_type}: " + ", ".join(taken))
    return filled


def _check_markers(text: Mapping[str, Any], model_type: Optional[str], config_path: str) -> None:
    """Fail closed on hybrid-layout keys outside the families whose layout we implement."""
    owners = {"hybrid_override_pattern": ("nemotron_h",), "layers_block_type": ("nemotron_h",),
              "block_configs": ("nemotron-nas",), "linear_num_key_heads": _GATED_DELTA_NET_TYPES,
              "mamba_num_heads": ("nemotron_h",), "ssm_state_size": ("nemotron_h",),
              "attn_layer_period": ("jamba",), "mamba_d_state": ("jamba", "granitemoehybrid"),
              "mamba_n_heads": ("granitemoehybrid",)}
    for marker in _HYBRID_MARKERS:
        if text.get(marker) is not None and model_type not in owners.get(marker, ()):
            raise InputError(f"{config_path}: `{marker}` announces a hybrid / heterogeneous layer layout that "
                             f"kvadvise does not describe for model type {model_type!r}")


def _require_int(text: Mapping[str, Any], key: str, where: str, config_path: str, what: str = "") -> int:
    value = text.get(key)
    if value is None:
        label = f" ({what})" if what else ""
        raise InputError(f"{config_path}: {where} has no `{key}`{label}; cannot describe the model")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{config_path}: `{key}` must be a positive integer, got {value!r}")
    return value


def _first_value(text: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if text.get(key) is not None:
            return text[key]
    return None


def _total_kv_heads(top_type: Any, model_type: Optional[str], text: Mapping[str, Any], num_heads: int,
                    config_path: str) -> int:
    """mirrors vLLM config/model.py get_total_num_kv_heads (same lookup order 0.10.2-0.33)."""
    new_decoder_falcon = top_type in _FALCON_MODEL_TYPES and text.get("new_decoder_architecture", False)
    if not new_decoder_falcon and text.get("multi_query", False):
        return 1  # gpt_bigcode / falcon-7b multi-query attention: one kv head
    attn_config = text.get("attn_config")
    if model_type in ("mpt", "dbrx"):
        if isinstance(attn_config, Mapping) and attn_config.get("kv_n_heads") is not None:
            return int(attn_config["kv_n_heads"])
        return num_heads
    if model_type == "nemotron-nas":
        for block in text.get("block_configs") or ():
            attention = block.get("attention") if isinstance(block, Mapping) else None
            if isinstance(attention, Mapping) and not attention.get("no_op", False):
                if not attention.get("n_heads_in_group"):
                    raise InputError(f"{config_path}: a block_configs attention entry has no n_heads_in_group")
                return num_heads // int(attention["n_heads_in_group"])
        raise InputError(f"{config_path}: every block_configs entry has no_op attention; no kv heads")
    for key in ("n_head_kv", "num_kv_heads", "num_key_value_heads", "multi_query_group_num"):
        value = text.get(key)
        if value is not None:
            return int(value)
    return num_heads


def _head_size(model_type: Optional[str], text: Mapping[str, Any], hidden_size: int, num_heads: int,
               is_mla: bool, config_path: str) -> int:
    """mirrors vLLM config/model.py get_head_size (MLA: kv_lora_rank + qk_rope_head_dim)."""
    if is_mla:
        return int(text["kv_lora_rank"]) + int(text.get("qk_rope_head_dim") or 0)
    for key in ("head_dim", "hidden_size_per_head"):
        if text.get(key) is not None:
            return int(text[key])
    if hidden_size % num_heads:
        raise InputError(f"{config_path}: no head_dim and hidden_size {hidden_size} is not a multiple of "
                         f"num_attention_heads {num_heads}")
    return hidden_size // num_heads


# --- layers ---------------------------------------------------------------------------------------------------

def _effective_sliding_window(text: Mapping[str, Any]) -> Optional[int]:
    """The model-level window: vLLM ignores `sliding_window` when `use_sliding_window` is false (Qwen2)."""
    if text.get("use_sliding_window") is False:
        return None
    window = text.get("sliding_window")
    return int(window) if window is not None else None


def _layers(model_type: Optional[str], text: Mapping[str, Any], num_layers: int, kv_heads: int, head_size: int,
            num_heads: int, is_mla: bool, config_path: str, notes: list[str]) -> list[LayerSpec]:
    """Every decoder layer's KV kind, by the rule vLLM's model file for this family applies."""

    def full(i: int, heads: int = kv_heads, size: int = head_size) -> LayerSpec:
        return LayerSpec(i, LayerKind.FULL, num_kv_heads=heads, head_size=size)

    def sliding(i: int) -> LayerSpec:
        window = text.get("sliding_window")
        if window is None:
            raise InputError(f"{config_path}: layer {i} is a sliding-window layer but the config has no sliding_window")
        return LayerSpec(i, LayerKind.SLIDING, num_kv_heads=kv_heads, head_size=head_size, sliding_window=int(window))

    def check_length(values: Any, key: str) -> list:
        if not isinstance(values, (list, tuple, str)) or len(values) != num_layers:
            length = len(values) if isinstance(values, (list, tuple, str)) else "not a list"
            raise InputError(f"{config_path}: `{key}` has {length} entries for {num_layers} layers")
        return list(values)

    if is_mla:
        return [LayerSpec(i, LayerKind.MLA, num_kv_heads=1, head_size=head_size) for i in range(num_layers)]

    if model_type == "nemotron-nas":
        return _nemotron_nas_layers(text, num_layers, num_heads, head_size, config_path, notes)

    if model_type == "nemotron_h":
        return _nemotron_h_layers(text, num_layers, kv_heads, num_heads, config_path, notes)

    if model_type == "jamba":
        # vLLM jamba.py / transformers JambaConfig.layers_block_type: attention iff
        # i % attn_layer_period == attn_layer_offset, else a Mamba1 layer (JambaMambaDecoderLayer)
        period, offset = int(text["attn_layer_period"]), int(text["attn_layer_offset"])
        conv, state, expand = _need(text, ("mamba_d_conv", "mamba_d_state", "mamba_expand"), config_path, "Mamba")
        mixer = MambaMixerSpec(mixer="mamba1", conv_kernel=conv, state_size=state,
                               intermediate_size=expand * int(text["hidden_size"]),
                               ssm_state_dtype=_ssm_dtype(text, config_path),
                               ssm_state_dtype_from="config" if _ssm_dtype(text, config_path) else None)
        return [full(i) if i % period == offset else LayerSpec(i, LayerKind.MAMBA, mamba=mixer)
                for i in range(num_layers)]

    if model_type == "granitemoehybrid":
        # vLLM granitemoehybrid.py: layer_types "mamba" -> MambaMixer2 (mamba_n_heads, mamba_d_head,
        # mamba_d_state, mamba_n_groups, intermediate mamba_expand * hidden), "attention" -> attention
        types = text.get("layer_types") or text.get("layers_block_type")
        if types is None:
            raise InputError(f"{config_path}: granitemoehybrid config has no layer_types")
        mixer = _granite_mamba2(text, config_path)
        result = []
        for i, layer_type in enumerate(check_length(types, "layer_types")):
            if layer_type in ("attention", "full_attention"):
                result.append(full(i))
            elif layer_type in ("mamba", "linear_attention"):
                result.append(LayerSpec(i, LayerKind.MAMBA, mamba=mixer))
            else:
                raise InputError(f"{config_path}: layer {i} has layer type {layer_type!r}, unknown for {model_type}")
        return result

    if model_type in _GATED_DELTA_NET_TYPES:
        types = text.get("layer_types")
        if types is None:
            interval = int(text["full_attention_interval"])
            # transformers Qwen3NextConfig: "linear_attention" if (i + 1) % interval else "full_attention"
            types = ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(num_layers)]
        mixer = _gated_delta_net(text, config_path)
        result = []
        for i, layer_type in enumerate(check_length(types, "layer_types")):
            if layer_type == "full_attention":
                result.append(full(i))
            elif layer_type == "linear_attention":
                result.append(LayerSpec(i, LayerKind.MAMBA, mamba=mixer))
            else:
                raise InputError(f"{config_path}: layer {i} has layer type {layer_type!r}, unknown for {model_type}")
        return result

    if model_type == "llama4_text":
        # vLLM llama4.py Llama4Attention: nope = no_rope_layers[i] == 0; RoPE layers use ChunkedLocalAttention
        # when attention_chunk_size is set (use_chunked_local_attn = not nope and attention_chunk_size).
        chunk = text.get("attention_chunk_size")
        flags = text.get("no_rope_layers")
        if not flags:
            interval = int(text.get("no_rope_layer_interval") or 4)
            # transformers Llama4TextConfig default: int((i + 1) % no_rope_layer_interval != 0)
            flags = [int((i + 1) % interval != 0) for i in range(num_layers)]
            notes.append(f"no_rope_layers not in the config: transformers' default applies (every {interval}th "
                         "layer is a global NoPE layer, the others chunked), as vLLM sees it")
        result = []
        for i, flag in enumerate(check_length(flags, "no_rope_layers")):
            if flag and chunk:
                result.append(LayerSpec(i, LayerKind.CHUNKED, num_kv_heads=kv_heads, head_size=head_size,
                                        attention_chunk_size=int(chunk)))
            else:
                result.append(full(i))
        return result

    layer_types = text.get("layer_types")
    if layer_types is not None:
        # transformers >= 4.53 / vLLM gemma2.py, gemma3.py, gpt_oss.py, qwen2.py: a layer slides iff
        # layer_types[i] == "sliding_attention".
        result = []
        for i, layer_type in enumerate(check_length(layer_types, "layer_types")):
            if layer_type in ("full_attention", "attention"):
                result.append(full(i))
            elif layer_type == "sliding_attention":
                result.append(sliding(i))
            elif layer_type == "chunked_attention" and text.get("attention_chunk_size"):
                result.append(LayerSpec(i, LayerKind.CHUNKED, num_kv_heads=kv_heads, head_size=head_size,
                                        attention_chunk_size=int(text["attention_chunk_size"])))
            else:
                raise InputError(f"{config_path}: layer {i} has layer type {layer_type!r}, which kvadvise does not "
                                 f"describe for model type {model_type!r}")
        return result

    if model_type == "gemma2":
        # transformers Gemma2Config layer_types default: "sliding_attention" if (i + 1) % 2 else
        # "full_attention", i.e. even layers (0, 2, ...) slide; vLLM gemma2.py reads config.layer_types.
        return [sliding(i) if (i + 1) % 2 else full(i) for i in range(num_layers)]

    pattern = text.get("sliding_window_pattern")
    if pattern is not None and model_type in ("gemma3_text", "cohere2"):
        # transformers Gemma3TextConfig: "sliding_attention" if (i + 1) % sliding_window_pattern else full
        pattern = int(pattern)
        return [sliding(i) if (i + 1) % pattern else full(i) for i in range(num_layers)]

    window = _effective_sliding_window(text)
    if model_type in _QWEN_SLIDING_TYPES and window is not None and text.get("max_window_layers") is not None:
        # transformers Qwen2Config: "sliding_attention" if sliding_window and i >= max_window_layers
        first = int(text["max_window_layers"])
        return [sliding(i) if i >= first else full(i) for i in range(num_layers)]
    if window is not None:
        # vLLM attention/layer.py Attention: no per-layer window -> the model-level cache_config.sliding_window
        return [sliding(i) for i in range(num_layers)]
    return [full(i) for i in range(num_layers)]


def _nemotron_nas_layers(text: Mapping[str, Any], num_layers: int, num_heads: int, head_size: int,
                         config_path: str, notes: list[str]) -> list[LayerSpec]:
    """mirrors vLLM nemotron_nas.py DeciLMDecoderLayer: no_op attention has no KV; else heads // n_heads_in_group."""
    blocks = text.get("block_configs")
    if not isinstance(blocks, list) or len(blocks) != num_layers:
        raise InputError(f"{config_path}: block_configs must list one block per layer ({num_layers})")
    result = []
    linear, windowed = [], []
    for i, block in enumerate(blocks):
        attention = block.get("attention") if isinstance(block, Mapping) else None
        if not isinstance(attention, Mapping):
            raise InputError(f"{config_path}: block_configs[{i}] has no attention entry")
        if attention.get("no_op", False):
            result.append(LayerSpec(i, LayerKind.NONE))
        elif attention.get("replace_with_linear", False):
            linear.append(i)
            result.append(LayerSpec(i, LayerKind.NONE))
        else:
            group = attention.get("n_heads_in_group")
            if not group:
                raise InputError(f"{config_path}: block_configs[{i}].attention has no n_heads_in_group")
            if attention.get("window_length") is not None:
                windowed.append(i)
            result.append(LayerSpec(i, LayerKind.FULL, num_kv_heads=num_heads // int(group), head_size=head_size))
    if linear:
        notes.append(f"layers {linear}: attention replaced by a linear layer (no KV cache); vLLM's DeciLM "
                     "code has no such path, so vLLM itself may not load this checkpoint")
    if windowed:
        notes.append(f"layers {windowed}: window_length set, but vLLM's DeciLM builds full attention (counted full)")
    return result


def _nemotron_h_layers(text: Mapping[str, Any], num_layers: int, kv_heads: int, num_heads: int,
                       config_path: str, notes: list[str]) -> list[LayerSpec]:
    """mirrors vLLM nemotron_h.py: hybrid_override_pattern M = Mamba2, * = attention, - = MLP, E = MoE."""
    pattern = text.get("hybrid_override_pattern")
    if pattern is None and isinstance(text.get("layers_block_type"), list):
        # transformers 5 NemotronHConfig._pattern_to_list, reversed
        names = {"linear_attention": "M", "mamba": "M", "full_attention": "*", "attention": "*", "mlp": "-", "moe": "E"}
        try:
            pattern = "".join(names[t] for t in text["layers_block_type"])
        except KeyError as exc:
            raise InputError(f"{config_path}: layers_block_type has unknown entry {exc.args[0]!r}") from None
    if not isinstance(pattern, str):
        raise InputError(f"{config_path}: nemotron_h config has no hybrid_override_pattern")
    if len(pattern) != num_layers:
        raise InputError(f"{config_path}: hybrid_override_pattern has {len(pattern)} entries for {num_layers} layers")
    # vLLM nemotron_h.py NemotronHAttention: head_dim, else attention_head_dim, else hidden // heads
    head = text.get("head_dim") or text.get("attention_head_dim") or int(text["hidden_size"]) // num_heads
    mixer: Optional[MambaMixerSpec] = None
    result = []
    for i, symbol in enumerate(pattern):
        if symbol == "M":
            mixer = mixer or _mamba2(text, config_path, notes)
            result.append(LayerSpec(i, LayerKind.MAMBA, mamba=mixer))
        elif symbol == "*":
            result.append(LayerSpec(i, LayerKind.FULL, num_kv_heads=kv_heads, head_size=int(head)))
        elif symbol in "-E":
            result.append(LayerSpec(i, LayerKind.NONE))
        else:
            raise InputError(f"{config_path}: hybrid_override_pattern has unknown symbol {symbol!r} at layer {i}")
    return result


def _need(text: Mapping[str, Any], keys: tuple[str, ...], config_path: str, what: str) -> list[int]:
    missing = [key for key in keys if text.get(key) is None]
    if missing:
        raise InputError(f"{config_path}: {what} layers need {', '.join(missing)}, missing from the config")
    return [int(text[key]) for key in keys]


def _mamba2(text: Mapping[str, Any], config_path: str, notes: list[str]) -> MambaMixerSpec:
    """vLLM nemotron_h.py MambaMixer2 arguments: intermediate = mamba_num_heads * mamba_head_dim."""
    conv, heads, head_dim, state, groups = _need(
        text, ("conv_kernel", "mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups"), config_path, "Mamba2")
    ssm_dtype = _ssm_dtype(text, config_path)
    class_default = None
    if ssm_dtype is None:
        # vLLM models/config.py NemotronHForCausalLMConfig reads hf_config.mamba_ssm_cache_dtype: no hook up to
        # 0.12 (model dtype), PR #29978 (Dec 2025) float16 if unset, PR #39032 (Apr 2026) float32 if unset;
        # with transformers 5 (vLLM >= 0.24) the attribute is never unset: its class default is float32.
        class_default = SSM_STATE_DTYPE_DEFAULTS.get("nemotron_h")
        notes.append("mamba_ssm_cache_dtype not in the config: vLLM up to 0.12 keeps NemotronH SSM state in the "
                     f"model dtype; vLLM >= 0.24 reads transformers 5's default {class_default}")
    return MambaMixerSpec(mixer="mamba2", conv_kernel=conv, num_heads=heads, head_dim=head_dim, state_size=state,
                          n_groups=groups, intermediate_size=heads * head_dim, ssm_state_dtype=ssm_dtype,
                          ssm_state_dtype_from="config" if ssm_dtype else None,
                          ssm_state_dtype_class_default=class_default)


def _ssm_dtype(text: Mapping[str, Any], config_path: str) -> Optional[str]:
    """The SSM state dtype a config asks for (NemotronH mamba_ssm_cache_dtype, Qwen3.5 mamba_ssm_dtype)."""
    value = text.get("mamba_ssm_cache_dtype") or text.get("mamba_ssm_dtype")
    return _normalize_dtype(value, config_path) if value else None


def _granite_mamba2(text: Mapping[str, Any], config_path: str) -> MambaMixerSpec:
    """Granite-4.0-H Mamba2 mixer; mamba_d_head "auto" = mamba_expand * hidden // mamba_n_heads (transformers)."""
    conv, heads, state, groups, expand = _need(
        text, ("mamba_d_conv", "mamba_n_heads", "mamba_d_state", "mamba_n_groups", "mamba_expand"), config_path,
        "Mamba2")
    intermediate = expand * int(text["hidden_size"])
    head_dim = text.get("mamba_d_head")
    head_dim = intermediate // heads if head_dim in (None, "auto") else int(head_dim)
    return MambaMixerSpec(mixer="mamba2", conv_kernel=conv, num_heads=heads, head_dim=head_dim, state_size=state,
                          n_groups=groups, intermediate_size=intermediate,
                          ssm_state_dtype=_ssm_dtype(text, config_path),
                          ssm_state_dtype_from="config" if _ssm_dtype(text, config_path) else None)


def _gated_delta_net(text: Mapping[str, Any], config_path: str) -> MambaMixerSpec:
    """Qwen3-Next / Qwen3.5 Gated DeltaNet (vLLM qwen3_next.py Qwen3NextGatedDeltaNet) from the linear_* fields."""
    conv, k_heads, v_heads, k_dim, v_dim = _need(
        text, ("linear_conv_kernel_dim", "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
               "linear_value_head_dim"), config_path, "Gated DeltaNet")
    return MambaMixerSpec(mixer="gated_delta_net", conv_kernel=conv, num_k_heads=k_heads, num_v_heads=v_heads,
                          head_k_dim=k_dim, head_v_dim=v_dim, ssm_state_dtype=_ssm_dtype(text, config_path),
                          ssm_state_dtype_from="config" if _ssm_dtype(text, config_path) else None)


# --- dtype, length, quantization --------------------------------------------------------------------------------

def _normalize_dtype(value: Any, config_path: str) -> str:
    name = str(value).lower().removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise InputError(f"{config_path}: unknown dtype {value!r} (expected float16, bfloat16 or float32)")
    return _DTYPE_NAMES[name]


def _dtype(top: Mapping[str, Any], text: Mapping[str, Any], top_type: Any, config_path: str,
           notes: list[str]) -> tuple[Optional[str], str]:
    """mirrors vLLM config/model.py _find_dtype + _resolve_auto_dtype for --dtype auto on a CUDA GPU with bf16."""
    declared = None
    sources = [top, text]
    vision = top.get("vision_config")
    if isinstance(vision, Mapping):
        sources.append(vision)
    for source in sources:
        # transformers 5 writes `dtype`, earlier versions `torch_dtype`
        declared = source.get("dtype") or source.get("torch_dtype")
        if declared is not None:
            break
    if declared is None:
        notes.append("no dtype in the config: vLLM reads the hub's safetensors metadata, else assumes float32; "
                     "float32 resolves to bfloat16 under --dtype auto")
        config_dtype = None
        effective = "float32"
    else:
        config_dtype = _normalize_dtype(declared, config_path)
        effective = config_dtype
    # vLLM >= 0.9.1 (PR #18751) _resolve_auto_dtype: float32 models take the platform's first dtype, which on
    # CUDA with bf16 support is bfloat16 (float16 before 0.9.1; pre-Ampere GPUs still get float16).
    if effective == "float32":
        if config_dtype == "float32":
            notes.append("float32 config: vLLM --dtype auto downcasts to bfloat16 (float16 on GPUs without bf16)")
        return config_dtype, "bfloat16"
    if effective == "float16" and top_type in _FLOAT16_NOT_SUPPORTED:
        notes.append(f"{top_type} does not run in float16 in vLLM: --dtype auto uses bfloat16")
        return config_dtype, "bfloat16"
    return config_dtype, effective


def _rope_entries(text: Mapping[str, Any]) -> list[dict[str, Any]]:
    """rope_parameters (transformers 5) or rope_scaling, one dict per layer type when nested."""
    rope = text.get("rope_parameters") or text.get("rope_scaling")
    if not isinstance(rope, Mapping) or not rope:
        return []
    if all(isinstance(value, Mapping) or value is None for value in rope.values()):
        entries = [dict(value) for value in rope.values() if value]
    else:
        entries = [dict(rope)]
    for entry in entries:
        # vLLM transformers_utils/config.py patch_legacy_rope_type: type -> rope_type, su -> longrope, mrope -> default
        rope_type = entry.get("rope_type", entry.get("type", "default"))
        entry["rope_type"] = {"su": "longrope", "mrope": "default"}.get(rope_type, rope_type)
    return entries


def _max_model_len(text: Mapping[str, Any], model_type: Optional[str], config_path: str,
                   notes: list[str]) -> Optional[int]:
    """mirrors vLLM config/model.py _get_and_verify_max_len with max_model_len=None (the derived default)."""
    derived = float("inf")
    for key in _MAX_LEN_KEYS:
        value = text.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise InputError(f"{config_path}: `{key}` must be a positive number, got {value!r}")
            derived = min(derived, value)
    if text.get("model_max_length"):  # Command-R / Cohere: model_max_length wins outright
        derived = text["model_max_length"]
    if derived == float("inf"):
        notes.append("no max-length key in the config: vLLM assumes 2048 tokens")
        derived = 2048
    entries = _rope_entries(text)
    # Gemma 3's max_position_embeddings is already scaled, so vLLM skips the factor for "gemma3" types.
    if entries and "gemma3" not in (model_type or ""):
        factor = 1.0
        for entry in entries:
            if entry["rope_type"] not in ("su", "longrope", "llama3"):
                factor = entry.get("factor", factor)
                if entry["rope_type"] == "yarn":
                    derived = entry.get("original_max_position_embeddings", derived)
        derived *= factor
    if any(entry["rope_type"] == "longrope" for entry in entries):
        return int(text.get("original_max_position_embeddings", derived))
    return int(derived)


def _quantization(top: Mapping[str, Any], text: Mapping[str, Any], extra_files: Mapping[str, Mapping[str, Any]],
                  config_path: str) -> Optional[QuantizationSpec]:
    """mirrors vLLM get_config + ModelConfig._parse_quant_hf_config (config, text_config, hf_quant_config.json)."""
    raw = top.get("quantization_config") or top.get("compression_config")
    if raw is None and text is not top:
        raw = text.get("quantization_config") or text.get("compression_config")
    if raw is None:
        raw = extra_files.get("hf_quant_config.json")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InputError(f"{config_path}: quantization_config is not a JSON object")
    raw = dict(raw)
    method = str(raw.get("quant_method", "")).lower().replace("compressed_tensors", "compressed-tensors")
    producer = raw.get("producer", {}).get("name") if isinstance(raw.get("producer"), Mapping) else None
    if producer == "modelopt" or method.startswith("modelopt"):
        section = raw.get("quantization") if isinstance(raw.get("quantization"), Mapping) else raw
        algo = str(section.get("quant_algo") or "").upper()
        kv_algo = section.get("kv_cache_quant_algo")
        bits = {"FP8": 8, "NVFP4": 4}.get(algo)
        return QuantizationSpec(method="modelopt_fp4" if algo == "NVFP4" else "modelopt", weight_bits=bits,
                                group_size=16 if algo == "NVFP4" else None,
                                kv_cache_dtype="fp8" if str(kv_algo).upper() == "FP8" else None, raw=raw)
    if method == "fp8":
        return QuantizationSpec(method="fp8", weight_bits=8, raw=raw)
    if method in ("gptq", "awq"):
        bits = raw.get("bits", raw.get("w_bit"))
        group = raw.get("group_size", raw.get("q_group_size"))
        return QuantizationSpec(method=method, weight_bits=int(bits) if bits else None,
                                group_size=int(group) if group and int(group) > 0 else None, raw=raw)
    if method == "mxfp4":
        return QuantizationSpec(method="mxfp4", weight_bits=4, group_size=32, raw=raw)  # OCP MX: 32-element blocks
    if method == "bitsandbytes" or raw.get("load_in_4bit") or raw.get("load_in_8bit"):
        bits = 4 if raw.get("load_in_4bit") else 8 if raw.get("load_in_8bit") else None
        return QuantizationSpec(method="bitsandbytes", weight_bits=bits, raw=raw)
    if method == "compressed-tensors":
        bits = group = None
        for group_config in (raw.get("config_groups") or {}).values():
            weights = group_config.get("weights") if isinstance(group_config, Mapping) else None
            if isinstance(weights, Mapping):
                bits, group = weights.get("num_bits"), weights.get("group_size")
                break
        kv_scheme = raw.get("kv_cache_scheme")
        kv_dtype = None
        if isinstance(kv_scheme, Mapping) and kv_scheme.get("num_bits") == 8 and kv_scheme.get("type") == "float":
            kv_dtype = "fp8"  # vLLM attention/layer.py: llm-compressor's FP8 kv_cache_scheme sets an fp8 cache
        return QuantizationSpec(method="compressed-tensors", weight_bits=bits, group_size=group,
                                kv_cache_dtype=kv_dtype, raw=raw)
    return QuantizationSpec(method=method or "unknown", raw=raw)
