"""Weight bytes of one GPU (one TP rank of one PP stage) as vLLM holds them, without reading a weight.

Two sources of tensor shapes and dtypes:
- a local checkpoint's safetensors headers (8-byte little-endian length + JSON, nothing else read): dtype-
  and quantization-exact, floating tensors cast to the model dtype as vLLM casts them;
- else the model built from its config on torch's meta device (no storage is allocated), every parameter
  and buffer, with quantized linear layers re-counted as vLLM stores them (kvadvise/estimate/quantization.py).
Each tensor is then assigned to a PP stage (embedding on the first, final norm and lm_head on the last,
decoder layer i on its stage) and sharded for one TP rank by vLLM's parallel-layer rules (column-, row-,
vocab-parallel, replicated; kv heads replicated when fewer than ranks), read from the tensor's name.

Totals, so that each comparison is exact:
- `parameter_bytes`: the model's parameters and checkpoint buffers at HF shapes, quantized as vLLM holds
  them, for this rank and stage;
- `hf_buffer_bytes`: transformers' non-persistent buffers (rotary `inv_freq`, gemma's embed scale; < 1 KiB
  a model): the profile measures them, so they stay counted (vLLM keeps small buffers of its own, e.g.
  gemma's normalizer; counting them can only lower "fit");
- `vllm_buffers`: vLLM's weight-time buffers that the HF model lacks, from the one source both commands use
  (kvadvise/plan/vllm_buffers.py: rotary cos/sin caches, vocabulary padding to a multiple of 64);
- `vllm_extra_bytes`: those buffers plus what only a quantized or staged layout adds (MLA's dequantized
  W_UK/W_UV when kv_b_proj is quantized; the lm_head copy of a tied embedding on the last PP stage).
`weights_bytes` = parameter_bytes + hf_buffer_bytes + vllm_extra_bytes (vLLM's "Model loading took");
`profile_equivalent_bytes` = parameter_bytes + hf_buffer_bytes: the HF tensors `kvadvise profile` measures
before it adds the same vLLM buffers (so profile's weights equal weights_bytes on an unquantized model).
Does not know: kernel-specific layouts beyond the padding named in quantization.py, LoRA adapters,
speculative-decoding draft layers (MTP layers beyond num_hidden_layers are dropped, as vLLM drops them).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from kvadvise.errors import InputError
from kvadvise.estimate.quantization import (QuantScheme, cdiv, linear_bytes, mxfp4_padded_sizes,
                                            parse_quantization, quantizes_linear)
from kvadvise.plan.vllm_buffers import (NO_BUFFERS, VLLM_FLOAT32_LEAVES, VllmWeightBuffers, VocabTensor,
                                        vllm_weight_buffers)

# safetensors dtype names -> bytes per element (F4 packs two values per byte: not used by HF checkpoints)
SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "U16": 2, "U32": 4, "U64": 8,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
MODEL_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "half": 2, "float": 4}


@dataclass(frozen=True)
class ShardPlan:
    """Which part of the model one GPU holds: a TP rank's share of the layers of one PP stage."""

    tensor_parallel_size: int = 1
    layer_start: int = 0
    layer_end: Optional[int] = None      # exclusive; None = to the last layer
    first_stage: bool = True
    last_stage: bool = True

    def holds_layer(self, index: int) -> bool:
        return self.layer_start <= index and (self.layer_end is None or index < self.layer_end)


@dataclass(frozen=True)
class TensorRecord:
    """One tensor's name, shape and stored dtype bytes; kind: parameter / buffer (checkpoint) / hf_buffer."""

    name: str
    shape: tuple[int, ...]
    element_bytes: int
    kind: str = "parameter"
    is_float: bool = True
    is_linear_weight: bool = False   # the weight of an nn.Linear (2-D) or a fused experts tensor (3-D)
    is_expert: bool = False


@dataclass(frozen=True)
class WeightsEstimate:
    """Weight bytes for one GPU, split so that each comparison (vLLM log, CPU profile) is exact."""

    parameter_bytes: int
    hf_buffer_bytes: int
    vllm_extra_bytes: int
    source: str                              # "safetensors headers" or "meta-device build"
    quantization: Optional[str]
    quantization_scale_bytes: int            # the part of parameter_bytes that is scales / zeros / g_idx
    vllm_extra_detail: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    vllm_buffers: VllmWeightBuffers = NO_BUFFERS

    @property
    def weights_bytes(self) -> int:
        return self.parameter_bytes + self.hf_buffer_bytes + self.vllm_extra_bytes

    @property
    def profile_equivalent_bytes(self) -> int:
        return self.parameter_bytes + self.hf_buffer_bytes


# ---------------------------------------------------------------------------------------------------------
# tensor records from a meta-device model or from safetensors headers
# ---------------------------------------------------------------------------------------------------------

def records_from_model(model: Any) -> list[TensorRecord]:
    """Every parameter and buffer of a (meta-device) torch model, tied tensors once."""
    import torch

    linear_modules = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    expert_modules = {name for name, module in model.named_modules()
                      if type(module).__name__.endswith("Experts")}
    persistent = set(model.state_dict().keys())
    records: list[TensorRecord] = []
    seen: set[int] = set()
    for name, tensor in model.named_parameters(remove_duplicate=False):
        key = id(tensor)
        if key in seen:
            continue
        seen.add(key)
        module, _, leaf = name.rpartition(".")
        is_linear = (module in linear_modules and leaf == "weight" and tensor.dim() == 2)
        is_expert = module in expert_modules and tensor.dim() == 3
        records.append(TensorRecord(name, tuple(tensor.shape), tensor.element_size(), "parameter",
                                    tensor.is_floating_point(), is_linear or is_expert, is_expert))
    for name, tensor in model.named_buffers(remove_duplicate=False):
        key = id(tensor)
        if key in seen:
            continue
        seen.add(key)
        kind = "buffer" if name in persistent else "hf_buffer"
        records.append(TensorRecord(name, tuple(tensor.shape), tensor.element_size(), kind,
                                    tensor.is_floating_point()))
    return records


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file: 8 bytes of little-endian length, then that much JSON."""
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        if len(prefix) != 8:
            raise InputError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", prefix)
        if length > 100 * (1 << 20):
            raise InputError(f"{path}: safetensors header of {length} bytes is implausible")
        raw = stream.read(length)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: malformed safetensors header: {exc.msg}") from None


def records_from_safetensors(directory: Path) -> list[TensorRecord]:
    """Tensor records from every *.safetensors header in a checkpoint directory (no tensor data read)."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise InputError(f"no *.safetensors files in {directory}")
    records: list[TensorRecord] = []
    for path in files:
        for name, entry in read_safetensors_header(path).items():
            if name == "__metadata__":
                continue
            dtype = entry["dtype"]
            if dtype not in SAFETENSORS_DTYPE_BYTES:
                raise InputError(f"{path}: tensor {name} has unknown dtype {dtype}")
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = entry["data_offsets"]
            numel = 1
            for dim in shape:
                numel *= dim
            element = SAFETENSORS_DTYPE_BYTES[dtype]
            if numel * element != end - begin:
                raise InputError(f"{path}: tensor {name} spans {end - begin} bytes, its shape says "
                                 f"{numel * element}")
            records.append(TensorRecord(name, shape, element, "parameter", dtype in FLOAT_DTYPES,
                                        is_linear_weight=False))
    return records


# ---------------------------------------------------------------------------------------------------------
# stage and tensor-parallel rules
# ---------------------------------------------------------------------------------------------------------

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
_VISION = ("vision_tower", "visual", "vision_model", "multi_modal_projector", "mm_projector", "vision_embed")
_VOCAB_NAMES = ("embed_tokens", "wte", "word_embeddings", "lm_head", "embed_out", "embeddings")


def _is_vocab(name: str) -> bool:
    """The token embedding or the lm_head (vocab-parallel in vLLM), not a vision tower's embeddings."""
    if any(part in name for part in _VISION):
        return False
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2] in _VOCAB_NAMES
_COLUMN = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "q_b_proj", "kv_b_proj", "query_key_value",
           "qkv_proj", "qkv", "c_attn", "c_fc", "fc1", "w1", "w3", "gate_up_proj", "in_proj", "in_proj_qkvz",
           "in_proj_ba", "wq", "wk", "wv", "dense_h_to_4h", "query", "key", "value", "linear_fc1", "conv1d",
           "A_log", "dt_bias", "D", "sinks"}
_ROW = {"o_proj", "down_proj", "dense", "out_proj", "c_proj", "fc2", "w2", "wo", "dense_4h_to_h",
        "linear_fc2"}


def _stage_of(name: str, num_layers: int) -> tuple[str, Optional[int]]:
    """("layer", i), ("first", None) for embeddings / vision, ("last", None) for final norm and lm_head."""
    match = _LAYER_INDEX.search(name)
    if match and not any(part in name for part in _VISION):
        return "layer", int(match.group(1))
    if any(part in name for part in _VISION) or any(part in name for part in ("embed_tokens", "wte", "wpe",
                                                                             "word_embeddings",
                                                                             "embed_positions")) \
            or (_is_vocab(name) and "lm_head" not in name and "embed_out" not in name):
        return "first", None
    if "lm_head" in name or "embed_out" in name:
        return "last", None
    if "rotary" in name:
        return "every", None
    return "last", None  # final norm (model.norm, ln_f, final_layernorm)


def _in_plan(name: str, plan: ShardPlan, num_layers: int) -> bool:
    where, index = _stage_of(name, num_layers)
    if where == "layer":
        assert index is not None
        return index < num_layers and plan.holds_layer(index)
    if where == "first":
        return plan.first_stage
    if where == "every":
        return True
    return plan.last_stage


def _split(dim: int, tp: int) -> int:
    return cdiv(dim, tp)


@dataclass(frozen=True)
class _Widths:
    hidden_size: int
    num_kv_heads: Optional[int]
    vocab_size: int


def shard_shape(record: TensorRecord, tp: int, widths: _Widths) -> tuple[tuple[int, ...], str]:
    """This record's shape on one TP rank and the rule applied (column / row / vocab / replicated / ...)."""
    shape = record.shape
    parts = record.name.split(".")
    leaf = parts[-1]
    owner = parts[-2] if len(parts) >= 2 else ""
    if tp == 1 or not shape:
        return shape, "whole"
    if _is_vocab(record.name) and len(shape) == 2:
        return (_split(shape[0], tp), shape[1]), "vocab"
    if record.is_expert and len(shape) == 3:
        # fused experts [E, a, b]: the intermediate dim (the one that is not hidden_size) is split
        dims = list(shape)
        target = 1 if dims[1] != widths.hidden_size else 2
        if dims[1] != widths.hidden_size and dims[2] != widths.hidden_size:
            target = 1
        dims[target] = _split(dims[target], tp)
        return tuple(dims), "experts"
    if leaf in ("gate_up_proj_bias", "down_proj_bias") and len(shape) == 2:
        return ((shape[0], _split(shape[1], tp)) if leaf == "gate_up_proj_bias" else shape), "experts-bias"
    name = owner if leaf in ("weight", "bias", "qweight", "qzeros", "scales", "g_idx", "weight_scale_inv",
                             "weight_scale", "weight_packed", "input_scale", "weight_zero_point") else leaf
    transposed = leaf in ("qweight", "qzeros", "scales")  # GPTQ / AWQ store [in, out]
    if name in ("k_proj", "v_proj") and widths.num_kv_heads and leaf != "g_idx":
        out_dim = 1 if transposed else 0
        if len(shape) > out_dim and shape[out_dim] % widths.num_kv_heads == 0:
            heads_per_rank = max(1, widths.num_kv_heads // tp)
            # mirrors vLLM 0.11 layers/linear.py QKVParallelLinear: kv heads replicated when tp > kv heads
            dims = list(shape)
            dims[out_dim] = shape[out_dim] // widths.num_kv_heads * heads_per_rank
            return tuple(dims), "kv-heads"
    if name == "norm" and len(parts) >= 3 and parts[-3] == "mixer" and len(shape) == 1:
        # mirrors vLLM 0.11 layers/mamba/mamba_mixer2.py Mixer2RMSNormGated: the gated norm over the
        # intermediate size is split with the heads (a decoder layer's own pre-norm is replicated)
        return (_split(shape[0], tp),), "column"
    if name in _COLUMN or leaf in _COLUMN:
        if leaf == "bias" or len(shape) == 1:
            return (_split(shape[0], tp),) + shape[1:], "column"
        if leaf == "g_idx":
            return shape, "replicated"
        dims = list(shape)
        out_dim = len(shape) - 1 if transposed else 0
        dims[out_dim] = _split(dims[out_dim], tp)
        return tuple(dims), "column"
    if name in _ROW:
        if leaf == "bias":
            return shape, "replicated"
        dims = list(shape)
        in_dim = 0 if transposed or leaf == "g_idx" else (1 if len(shape) >= 2 else 0)
        dims[in_dim] = _split(dims[in_dim], tp)
        return tuple(dims), "row"
    return shape, "replicated"


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


# ---------------------------------------------------------------------------------------------------------
# the estimate
# ---------------------------------------------------------------------------------------------------------

def text_config_of(config: Mapping[str, Any]) -> Mapping[str, Any]:
    text = config.get("text_config")
    return text if isinstance(text, Mapping) and text else config


def _widths(config: Mapping[str, Any]) -> _Widths:
    text = text_config_of(config)
    heads = text.get("num_attention_heads")
    kv = None
    for key in ("n_head_kv", "num_kv_heads", "num_key_value_heads", "multi_query_group_num"):
        if text.get(key):
            kv = int(text[key])
            break
    if kv is None and heads and not text.get("kv_lora_rank"):
        kv = int(heads)
    return _Widths(int(text.get("hidden_size") or text.get("n_embd") or 0), kv,
                   int(text.get("vocab_size") or 0))


def _model_layer_count(model: Any, filled: Mapping[str, Any]) -> int:
    """Decoder layers of a built model: its text config's num_hidden_layers (a property on some configs,
    e.g. Nemotron-H, so absent from to_dict()), else the dict's."""
    config = getattr(model, "config", None)
    if config is not None:
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        value = getattr(text, "num_hidden_layers", None)
        if isinstance(value, int) and value > 0:
            return value
    return _layer_count(filled)


def _layer_count(config: Mapping[str, Any]) -> int:
    text = text_config_of(config)
    return int(text.get("num_hidden_layers") or text.get("n_layer") or text.get("num_layers") or 0)


def estimate_weights(config: Mapping[str, Any], *, model_dtype: str, plan: ShardPlan = ShardPlan(),
                     checkpoint_dir: Optional[Path] = None, model: Any = None,
                     model_is_shard: bool = False, num_layers: Optional[int] = None,
                     extra_files: Optional[Mapping[str, Mapping[str, Any]]] = None,
                     mxfp4_backend: str = "marlin") -> WeightsEstimate:
    """Weights of one GPU: from safetensors headers when `checkpoint_dir` holds them, else from `model`
    (a meta or fake-tensor model; built here from `config`, whole, when not given).

    `plan` is the rank / stage of the whole model. `model_is_shard`: `model` already is that rank's
    shard (kvadvise.profile.build.build_model with a ShardShape), so its tensors are counted as they are;
    the header path still applies `plan` by tensor names. `num_layers`: the whole model's decoder layers
    (checkpoint layers at or beyond it, e.g. MTP, are dropped as vLLM drops them); read from the configs
    when not given.
    """
    dtype_bytes = MODEL_DTYPE_BYTES.get(model_dtype)
    if dtype_bytes is None:
        raise InputError(f"unsupported model dtype {model_dtype!r}", hint="use bfloat16, float16 or float32")
    scheme, warnings = parse_quantization(config, extra_files)
    notes: list[str] = list(warnings)
    tp = plan.tensor_parallel_size
    header_records: Optional[list[TensorRecord]] = None
    if checkpoint_dir is not None and any(Path(checkpoint_dir).glob("*.safetensors")):
        header_records = records_from_safetensors(Path(checkpoint_dir))
    if model is None:
        from kvadvise.estimate.meta import build_meta_model

        model = build_meta_model(config, model_dtype)
    # the built config has transformers' class defaults filled in (gemma-3's sparse text_config)
    filled = model.config.to_dict() if hasattr(getattr(model, "config", None), "to_dict") else dict(config)
    model_layers = _model_layer_count(model, filled)
    if num_layers is None:
        num_layers = _layer_count(config) if model_is_shard else model_layers
    widths = _widths(filled)
    model_records = records_from_model(model)
    model_plan = ShardPlan() if model_is_shard else plan
    hf_buffer_bytes = sum(_numel(r.shape) * r.element_bytes for r in model_records
                          if r.kind == "hf_buffer" and _in_plan(r.name, model_plan, model_layers))
    if header_records is not None and (scheme is None or scheme.method != "mxfp4"):
        parameter_bytes, scale_bytes = _count_headers(header_records, plan, num_layers, widths, dtype_bytes,
                                                      scheme)
        source = "safetensors headers"
        if tp > 1:
            notes.append("per-rank shares read from tensor names by vLLM's parallel-layer rules")
    else:
        if header_records is not None:
            notes.append("mxfp4 checkpoint: counted from the config with vLLM's MoE padding, not from headers")
        parameter_bytes, scale_bytes = _count_model(model_records, model_plan, model_layers, widths, dtype_bytes,
                                                    scheme, mxfp4_backend)
        source = "meta-device build"
    text = text_config_of(filled)
    if header_records is not None and source == "safetensors headers":
        vocab = _vocab_tensors(header_records, plan, num_layers, None)
    elif model_is_shard:
        whole_vocab = int(text_config_of(config).get("vocab_size") or 0) or None
        vocab = _vocab_tensors(model_records, model_plan, model_layers, whole_vocab, shard_tp=tp)
    else:
        vocab = _vocab_tensors(model_records, model_plan, model_layers, None)
    holds_layers = num_layers == 0 or any(plan.holds_layer(i) for i in range(num_layers))
    buffers = vllm_weight_buffers(text, dtype_bytes=dtype_bytes, tensor_parallel_size=tp,
                                  holds_layers=holds_layers, vocab_tensors=vocab)
    notes.extend(buffers.notes)
    extra = dict(buffers.detail())
    extra.update(_quantized_extra(filled, model_records, model_plan, model_layers, widths, dtype_bytes, scheme))
    if not model_is_shard and _ties_across_stages(filled, plan):
        embedding = next((r for r in model_records if _is_vocab(r.name) and "lm_head" not in r.name), None)
        if embedding is not None:
            rows = _split(embedding.shape[0], tp)
            extra["lm_head copy of tied embedding on the last stage"] = rows * embedding.shape[1] * dtype_bytes
    return WeightsEstimate(
        parameter_bytes=parameter_bytes, hf_buffer_bytes=hf_buffer_bytes,
        vllm_extra_bytes=sum(extra.values()), source=source,
        quantization=scheme.method if scheme else None, quantization_scale_bytes=scale_bytes,
        vllm_extra_detail=extra, notes=tuple(notes), vllm_buffers=buffers)


def _ties_across_stages(config: Mapping[str, Any], plan: ShardPlan) -> bool:
    text = text_config_of(config)
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    return tied and plan.last_stage and not plan.first_stage


def _record_bytes_at_dtype(record: TensorRecord, shape: Sequence[int], dtype_bytes: int) -> int:
    """A floating tensor is held in the model dtype (vLLM casts) but for vLLM's float32 ones; others keep
    their stored width."""
    if record.is_float and record.name.rsplit(".", 1)[-1] in VLLM_FLOAT32_LEAVES:
        return _numel(shape) * 4
    element = dtype_bytes if record.is_float else record.element_bytes
    return _numel(shape) * element


def _count_model(records: Iterable[TensorRecord], plan: ShardPlan, num_layers: int, widths: _Widths,
                 dtype_bytes: int, scheme: Optional[QuantScheme], mxfp4_backend: str) -> tuple[int, int]:
    total = 0
    scales = 0
    tp = plan.tensor_parallel_size
    for record in records:
        if record.kind == "hf_buffer" or not _in_plan(record.name, plan, num_layers):
            continue
        shape, rule = shard_shape(record, tp, widths)
        module = record.name.rsplit(".", 1)[0] if not record.is_expert else record.name
        vocab = rule == "vocab" or _is_vocab(record.name)
        plain = _record_bytes_at_dtype(record, shape, dtype_bytes)
        if scheme is not None and record.is_linear_weight and not vocab \
                and quantizes_linear(module, scheme, is_expert=record.is_expert):
            quantized = _quantized_bytes(record, shape, scheme, widths, dtype_bytes, mxfp4_backend)
            weight_only = _quantized_bytes(record, shape, scheme, widths, dtype_bytes, mxfp4_backend,
                                           weight_only=True)
            total += quantized
            scales += quantized - weight_only
            continue
        if scheme is not None and scheme.method == "mxfp4" and record.name.endswith(("gate_up_proj_bias",
                                                                                     "down_proj_bias")):
            total += _mxfp4_bias_bytes(record, shape, widths, mxfp4_backend)
            continue
        total += plain
    return total, scales


def _expert_dims(record: TensorRecord, shape: Sequence[int], widths: _Widths) -> tuple[int, int, int]:
    """(experts, out, in) of a fused experts tensor, whichever way the HF class lays it out."""
    experts, first, second = shape
    leaf = record.name.rsplit(".", 1)[-1]
    if leaf.startswith("gate_up"):
        # in = hidden_size; out = 2 x intermediate
        if second == widths.hidden_size and first != widths.hidden_size:
            return experts, first, second
        return experts, second, first
    # down: out = hidden_size, in = intermediate
    if first == widths.hidden_size:
        return experts, first, second
    return experts, second, first


def _quantized_bytes(record: TensorRecord, shape: Sequence[int], scheme: QuantScheme, widths: _Widths,
                     dtype_bytes: int, mxfp4_backend: str, weight_only: bool = False) -> int:
    if record.is_expert:
        experts, out_features, in_features = _expert_dims(record, shape, widths)
    else:
        experts, (out_features, in_features) = 1, shape
    if scheme.method == "mxfp4":
        leaf = record.name.rsplit(".", 1)[-1]
        intermediate = out_features // 2 if leaf.startswith("gate_up") else in_features
        hidden, intermediate = mxfp4_padded_sizes(widths.hidden_size, intermediate, mxfp4_backend)
        if leaf.startswith("gate_up"):
            out_features, in_features = 2 * intermediate, hidden
        else:
            out_features, in_features = hidden, intermediate
        numel = out_features * in_features
        # mirrors vLLM (main, 2025-11) quantization/mxfp4.py create_weights: uint8 weight [.., in/2], uint8 scale [.., in/32]
        return experts * (numel // 2 + (0 if weight_only else numel // 32))
    if weight_only:
        numel = out_features * in_features
        return experts * (numel * scheme.bits // 8)
    return experts * linear_bytes(scheme, out_features, in_features, dtype_bytes)


def _mxfp4_bias_bytes(record: TensorRecord, shape: Sequence[int], widths: _Widths, backend: str) -> int:
    experts, width = shape
    if record.name.endswith("gate_up_proj_bias"):
        _, intermediate = mxfp4_padded_sizes(widths.hidden_size, width // 2, backend)
        return experts * 2 * intermediate * 2  # bf16 [E, 2 x padded intermediate]
    hidden, _ = mxfp4_padded_sizes(widths.hidden_size, 1, backend)
    return experts * hidden * 2


_SCALE_LEAVES = ("weight_scale_inv", "weight_scale", "input_scale", "scales", "qzeros", "g_idx",
                 "weight_zero_point", "weight_shape", "absmax", "quant_map", "SCB")


def _count_headers(records: Iterable[TensorRecord], plan: ShardPlan, num_layers: int, widths: _Widths,
                   dtype_bytes: int, scheme: Optional[QuantScheme]) -> tuple[int, int]:
    total = 0
    scales = 0
    for record in records:
        if record.name.endswith("rotary_emb.inv_freq"):
            continue  # old checkpoints saved it; vLLM skips it (llama.py load_weights)
        if not _in_plan(record.name, plan, num_layers):
            continue
        shape, _ = shard_shape(record, plan.tensor_parallel_size, widths)
        leaf = record.name.rsplit(".", 1)[-1]
        is_scale = leaf in _SCALE_LEAVES or "scale" in leaf or leaf.endswith("_zeros")
        if scheme is not None and is_scale:
            size = _numel(shape) * record.element_bytes  # vLLM keeps scales in their stored dtype
            scales += size
        else:
            size = _record_bytes_at_dtype(record, shape, dtype_bytes)
        total += size
    return total, scales


def _vocab_tensors(records: Iterable[TensorRecord], plan: ShardPlan, num_layers: int, whole_vocab: Optional[int],
                   shard_tp: int = 1) -> list[VocabTensor]:
    """The embedding / lm_head tensors of this rank as the records hold them (kvadvise.plan.vllm_buffers pads them).

    whole_vocab None: the records are whole-model tensors (headers, a whole build), split over the plan's
    ranks as parameter_bytes counts them. Else they already are one rank's (the profile's shard build: at
    TP > 1 its vocabulary is vLLM's padded share), and whole_vocab is the model's vocabulary.
    """
    tp = plan.tensor_parallel_size
    out = []
    for record in records:
        if record.kind != "parameter" or len(record.shape) != 2 or not _is_vocab(record.name) \
                or not _in_plan(record.name, plan, num_layers):
            continue
        rows, width = record.shape
        if whole_vocab is None:
            out.append(VocabTensor(vocab_size=rows, rows_held=_split(rows, tp), width=width))
        else:
            out.append(VocabTensor(vocab_size=whole_vocab if shard_tp > 1 and whole_vocab else rows, rows_held=rows,
                                   width=width))
    return out


def _quantized_extra(config: Mapping[str, Any], records: Sequence[TensorRecord], plan: ShardPlan, num_layers: int,
                     widths: _Widths, dtype_bytes: int, scheme: Optional[QuantScheme]) -> dict[str, int]:
    """What vLLM adds to a quantized layout only (the rotary and vocabulary buffers are vllm_buffers')."""
    extra: dict[str, int] = {}
    tp = plan.tensor_parallel_size
    text = text_config_of(config)
    if text.get("kv_lora_rank") and scheme is not None and scheme.method != "mxfp4":
        # mirrors vLLM 0.11 attention/backends/mla/common.py process_weights_after_loading: a quantized
        # kv_b_proj is dequantized once into W_UK_T / W_UV (model dtype), kept beside the quantized weight
        dequantized = 0
        for record in records:
            if record.name.endswith("kv_b_proj.weight") and _in_plan(record.name, plan, num_layers):
                module = record.name.rsplit(".", 1)[0]
                if quantizes_linear(module, scheme, is_expert=False):
                    shape, _ = shard_shape(record, tp, widths)
                    dequantized += _numel(shape) * dtype_bytes
        if dequantized:
            extra["MLA W_UK/W_UV dequantized from kv_b_proj"] = dequantized
    return extra
