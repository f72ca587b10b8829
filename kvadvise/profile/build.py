"""Build the model a vLLM rank would hold, with Hugging Face modules, on a device (real, meta or fake).

Knows: how to turn a ModelSpec into a transformers config for one tensor-parallel rank or one pipeline
stage (heads, kv heads by vLLM's replication rule, intermediate sizes and vocabulary divided by T; a
stage's own layers, the embedding on the first stage only, final norm and lm_head on the last only);
how to load a local checkpoint (`load_format="auto"`) or to build from the config with uninitialised
weights straight on the device (`"dummy"`, no host copy), also on "meta" or under FakeTensorMode.

Does not know: vLLM's own module layout. The weights are the Hugging Face model's parameters and
buffers; vLLM differs by (a) transformers' own small rotary inv_freq buffers (kept: < 1 KiB), (b) what
vLLM holds at load time and transformers does not: its rotary cos/sin caches and the vocabulary padding
to a multiple of 64 (the padding is built in here only for T > 1, so that dummy and checkpoint loads agree
at T = 1); `vllm_weight_buffers_of` computes both for a built model from the one source
kvadvise/plan/vllm_buffers.py, and the profile adds them to what it measures, (c) multimodal encoders, which are built whole on every rank and stage here (their TP split is not
expressible in a transformers config; vLLM's placement varies by model; keeping them errs on the side of
a smaller KV budget), (d) quantization: a dummy build ignores `quantization_config` and holds the
weights in the model dtype (an fp8 / int4 / mxfp4 checkpoint's weights are over-counted: load it with
"auto", or take weights from the safetensors headers). A sharded build is shape-equivalent to a
rank of a parallel deployment; it has no collective buffers (NCCL, custom all-reduce).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

from kvadvise.errors import InputError
from kvadvise.model.spec import ModelSpec

LOAD_FORMATS = ("auto", "dummy")

# vLLM's dummy loader fills weights uniformly in [-1e-3, 1e-3]
# (mirrors vLLM 0.11 model_executor/model_loader/weight_utils.py initialize_dummy_weights)
DUMMY_WEIGHT_LOW, DUMMY_WEIGHT_HIGH = -1e-3, 1e-3


@dataclass(frozen=True)
class ShardShape:
    """Which part of a parallel deployment one device holds: a TP rank, optionally of one PP stage."""

    tensor_parallel_size: int = 1
    partition: Optional[tuple[int, ...]] = None   # layers per pipeline stage (VLLM_PP_LAYER_PARTITION)
    stage: Optional[int] = None                   # 0-based pipeline stage; needs partition

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise InputError(f"tensor parallel size must be at least 1, not {self.tensor_parallel_size}")
        if self.stage is not None and self.partition is None:
            raise InputError("a pipeline stage needs a partition", hint="pass --partition, e.g. 48,16")
        if self.partition is not None:
            if any(count < 1 for count in self.partition):
                raise InputError(f"every pipeline stage needs at least one layer: {list(self.partition)}")
            if self.stage is None:
                raise InputError("a partition needs the stage to measure", hint="pass --stage 0 .. "
                                 f"{len(self.partition) - 1}")
            if not 0 <= self.stage < len(self.partition):
                raise InputError(f"stage {self.stage} is outside the partition {list(self.partition)}",
                                 hint=f"stages are numbered 0 .. {len(self.partition) - 1}")

    @property
    def pipeline_parallel_size(self) -> int:
        return 1 if self.partition is None else len(self.partition)

    @property
    def is_first_stage(self) -> bool:
        return self.stage in (None, 0)

    @property
    def is_last_stage(self) -> bool:
        return self.partition is None or self.stage == len(self.partition) - 1

    @property
    def is_full_model(self) -> bool:
        return self.tensor_parallel_size == 1 and self.partition is None

    def layer_range(self, num_layers: int) -> tuple[int, int]:
        """[start, stop) of this stage's layers in the whole model."""
        if self.partition is None:
            return 0, num_layers
        if sum(self.partition) != num_layers:
            raise InputError(f"the partition {list(self.partition)} sums to {sum(self.partition)} layers, "
                             f"the model has {num_layers}")
        start = sum(self.partition[: self.stage])
        return start, start + self.partition[self.stage]


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' logging (kernel-fallback "install causal_conv1d" hints, irrelevant to a memory figure)
    and Python warnings off inside the block; both restored after."""
    import warnings

    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers_logging.set_verbosity(previous)


# ------------------------------------------------------------------ configs --------------------------------

def _torch_dtype(name: str):
    import torch

    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
             "half": torch.float16, "fp16": torch.float16, "float32": torch.float32,
             "float": torch.float32, "fp32": torch.float32}
    try:
        return table[name.lower()]
    except KeyError:
        raise InputError(f"unsupported dtype {name!r}", hint="use auto, bfloat16, float16 or float32") from None


def resolve_dtype(spec: ModelSpec, dtype: str) -> str:
    """The dtype name the model is built in: the spec's (vLLM's auto rule) for "auto"."""
    if dtype in (None, "", "auto"):
        return spec.dtype or "bfloat16"
    _torch_dtype(dtype)
    return dtype


def _config_object(spec: ModelSpec, *, model_path: Optional[str] = None, trust_remote_code: bool = False,
                   revision: Optional[str] = None):
    """The whole model's transformers config (text defaults filled by transformers)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw = dict(spec.raw_config) if spec.raw_config else {}
    if not raw and spec.text_config:
        raw = dict(spec.text_config)
        raw.setdefault("model_type", spec.model_type)
    model_type = raw.get("model_type")
    if model_type in CONFIG_MAPPING:
        config = CONFIG_MAPPING[model_type].from_dict(copy.deepcopy(raw))
    elif model_path is not None:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code, revision=revision)
    else:
        raise InputError(f"transformers does not know the model type {model_type!r}",
                         hint="pass a local checkpoint directory (with --trust-remote-code if it ships code)")
    if not getattr(config, "architectures", None) and spec.architectures:
        config.architectures = list(spec.architectures)
    return config


def _text_config(config):
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return text if text is not None else config


def _divide(total: int, parts: int, what: str) -> int:
    if total % parts:
        raise InputError(f"{what} ({total}) is not divisible by the tensor parallel size {parts}",
                         hint="vLLM refuses this tensor parallel size for this model")
    return total // parts


def _shard_text(text, tp: int) -> None:
    """Divide one text config's per-rank sizes by the TP size, in place."""
    heads = getattr(text, "num_attention_heads", None)
    if heads:
        head_dim = getattr(text, "head_dim", None) or (text.hidden_size // heads)
        # keep head_dim explicit: transformers derives it from hidden_size / heads when absent
        if hasattr(text, "head_dim") or not getattr(text, "kv_lora_rank", None):
            text.head_dim = head_dim
        text.num_attention_heads = _divide(heads, tp, "the number of attention heads")
    kv_heads = getattr(text, "num_key_value_heads", None)
    if kv_heads:
        # mirrors vLLM 0.11 model_executor/layers/linear.py QKVParallelLinear: with tp >= kv heads each
        # rank keeps one replicated kv head; else kv_heads / tp (must divide)
        text.num_key_value_heads = 1 if tp >= kv_heads else _divide(kv_heads, tp, "the number of kv heads")
    for key in ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            setattr(text, key, _divide(value, tp, key.replace("_", " ")))
    vocab = getattr(text, "vocab_size", None)
    if vocab:
        from kvadvise.plan.vllm_buffers import padded_vocab_size

        # mirrors vLLM 0.11 VocabParallelEmbedding: num_embeddings_per_partition = padded vocab / tp
        text.vocab_size = _divide(padded_vocab_size(vocab), tp, "the padded vocabulary")
        # the pad token only names a row (no memory); nn.Embedding refuses an index outside the rank's
        # rows (gpt-oss: 199999 of 100544): vLLM's embedding has no padding_idx either
        pad = getattr(text, "pad_token_id", None)
        if isinstance(pad, int) and pad >= text.vocab_size:
            text.pad_token_id = None
    # linear-attention / mamba heads (Qwen3-Next, Nemotron-H) are split by TP too
    for key in ("linear_num_key_heads", "linear_num_value_heads", "mamba_num_heads"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            setattr(text, key, _divide(value, tp, key.replace("_", " ")))
    # Mamba2 B/C groups (in_proj rows and conv1d channels): split by T, or one replicated group per rank
    if isinstance(getattr(text, "mamba_num_heads", None), int):
        from kvadvise.plan.dummy import mamba2_groups_per_rank

        for key in ("n_groups", "mamba_n_groups"):
            value = getattr(text, key, None)
            if isinstance(value, int) and value > 0:
                setattr(text, key, mamba2_groups_per_rank(value, tp))


def _stage_text(text, start: int, stop: int) -> None:
    """Keep layers [start, stop) of one text config, with the per-layer attributes that follow the index."""
    text.num_hidden_layers = stop - start
    layer_types = getattr(text, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) >= stop:
        text.layer_types = list(layer_types[start:stop])
    for key in ("first_k_dense_replace", "max_window_layers"):
        value = getattr(text, key, None)
        if isinstance(value, int):
            setattr(text, key, max(0, value - start))
    pattern = getattr(text, "hybrid_override_pattern", None)   # Nemotron-H: one character per layer
    if isinstance(pattern, str) and len(pattern) >= stop:
        text.hybrid_override_pattern = pattern[start:stop]
    only = getattr(text, "mlp_only_layers", None)
    if isinstance(only, (list, tuple)):
        text.mlp_only_layers = [index - start for index in only if start <= index < stop]


def sharded_config_object(spec: ModelSpec, shape: ShardShape = ShardShape(), *,
                          model_path: Optional[str] = None, trust_remote_code: bool = False,
                          revision: Optional[str] = None):
    """The transformers config object for one rank (see `shard_config`)."""
    config = _config_object(spec, model_path=model_path, trust_remote_code=trust_remote_code, revision=revision)
    text = _text_config(config)
    if shape.tensor_parallel_size > 1:
        _shard_text(text, shape.tensor_parallel_size)
        pad = getattr(config, "pad_token_id", None)
        if config is not text and isinstance(pad, int) and pad >= text.vocab_size:
            config.pad_token_id = None
        # vision encoders stay whole: their TP split is not expressible in a transformers config
    if shape.partition is not None:
        start, stop = shape.layer_range(text.num_hidden_layers)
        _stage_text(text, start, stop)
    return config


def shard_config(spec: ModelSpec, shape: ShardShape = ShardShape(), *, model_path: Optional[str] = None,
                 trust_remote_code: bool = False) -> dict:
    """The HF config dict for ONE rank: per-rank heads / kv heads / intermediate / vocab; a stage's layers.

    The structure is the model's own (a multimodal config keeps its nested text_config). Which modules a
    stage keeps (embedding first, norm + lm_head last) is not expressible in a config: build_model does it.
    """
    return sharded_config_object(spec, shape, model_path=model_path,
                                 trust_remote_code=trust_remote_code).to_dict()


# ------------------------------------------------------------------ models ---------------------------------

def _model_class(config, spec: ModelSpec):
    import transformers

    for name in list(getattr(config, "architectures", None) or []) + list(spec.architectures or ()):
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM


def _is_fake_or_meta(tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor) or tensor.device.type == "meta"


# attribute names transformers' decoder stacks use for their layers and their token embedding
LAYER_LIST_NAMES = ("layers", "h", "blocks", "layer")
EMBEDDING_NAMES = ("embed_tokens", "wte", "embeddings", "embed_in", "word_embeddings")
FINAL_NORM_NAMES = ("norm", "norm_f", "ln_f", "final_layernorm", "final_layer_norm")


@dataclass
class ModelParts:
    """Where the pieces of a built model are: the text decoder, its embedding, norm, lm_head."""

    decoder: Any                       # the module with the layer list (LlamaModel, Gemma3TextModel, ...)
    lm_head: Any                       # None off the last stage
    embedding_name: Optional[str]      # attribute of `decoder` holding the token embedding
    norm_name: Optional[str]           # attribute of `decoder` holding the final norm

    @property
    def has_embedding(self) -> bool:
        return self.embedding_name is not None and getattr(self.decoder, self.embedding_name, None) is not None


def _decoder_names(module) -> Optional[tuple[str, Optional[str], Optional[str]]]:
    import torch.nn as nn

    layers = next((name for name in LAYER_LIST_NAMES
                   if isinstance(getattr(module, name, None), nn.ModuleList)), None)
    if layers is None:
        return None
    embedding = next((name for name in EMBEDDING_NAMES if name in module._modules), None)
    if embedding is None:
        return None
    norm = next((name for name in FINAL_NORM_NAMES if name in module._modules), None)
    return layers, embedding, norm


def locate_parts(model) -> ModelParts:
    """Find the text decoder stack and the lm_head of a (causal-LM or multimodal) transformers model."""
    candidates = []
    if hasattr(model, "get_decoder"):
        try:
            candidates.append(model.get_decoder())
        except Exception:  # some wrappers raise for exotic layouts
            pass
    candidates.extend(module for module in model.modules())
    for module in candidates:
        names = _decoder_names(module)
        if names is not None:
            _, embedding, norm = names
            lm_head = getattr(model, "lm_head", None)
            return ModelParts(decoder=module, lm_head=lm_head, embedding_name=embedding, norm_name=norm)
    raise InputError(f"cannot find the decoder layers of {type(model).__name__}",
                     hint="this architecture is not supported by the dummy run yet")


def _apply_stage(model, shape: ShardShape) -> None:
    """Drop what a pipeline stage does not hold: embedding off the first stage, norm + lm_head off the last."""
    import torch.nn as nn

    if shape.partition is None:
        return
    parts = locate_parts(model)
    if not shape.is_first_stage:
        # (learned position embeddings such as GPT-2's wpe stay: transformers' forward always calls them)
        setattr(parts.decoder, parts.embedding_name, None)
    if not shape.is_last_stage:
        if parts.norm_name is not None:
            setattr(parts.decoder, parts.norm_name, nn.Identity())
        if hasattr(model, "lm_head"):
            model.lm_head = None


def _fill_dummy(model) -> None:
    """Give real tensors vLLM's dummy values (uniform in [-1e-3, 1e-3]); nothing for meta / fake tensors."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            if _is_fake_or_meta(parameter):
                return
            if parameter.is_floating_point():
                parameter.uniform_(DUMMY_WEIGHT_LOW, DUMMY_WEIGHT_HIGH)


def _fp32_kept_patterns(model, torch_dtype) -> tuple[str, ...]:
    """The module names transformers keeps in float32 for this dtype (its `_get_dtype_plan` rule)."""
    import torch

    patterns: set[str] = set()
    if torch_dtype in (torch.float16, torch.bfloat16):
        patterns.update(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if torch_dtype == torch.float16:
        patterns.update(getattr(model, "_keep_in_fp32_modules", None) or ())
    return tuple(sorted(patterns))


def hold_in_model_dtype(model, torch_dtype) -> None:
    """Cast to the model dtype what transformers keeps in float32 (`_keep_in_fp32_modules_strict`, e.g. the
    DeepSeek / GLM MoE router `gate.weight` since transformers 5) and vLLM does not: vLLM builds those
    layers in the model dtype (mirrors vLLM 0.11 deepseek_v2.py: the gate is a ReplicatedLinear, later a
    GateLinear, with the default params_dtype). vLLM's own float32 tensors (VLLM_FLOAT32_LEAVES) stay."""
    import torch

    from kvadvise.plan.vllm_buffers import VLLM_FLOAT32_LEAVES

    patterns = _fp32_kept_patterns(model, torch_dtype)
    if not patterns:
        return
    named = list(model.named_parameters(remove_duplicate=True)) + list(model.named_buffers(remove_duplicate=True))
    with torch.no_grad():
        for name, tensor in named:
            if tensor.dtype != torch.float32 or name.rsplit(".", 1)[-1] in VLLM_FLOAT32_LEAVES:
                continue
            if any(pattern in name for pattern in patterns):
                tensor.data = tensor.data.to(torch_dtype)


def build_model(spec: ModelSpec, *, load_format: str = "dummy", model_path: Optional[str] = None,
                dtype: str = "auto", device: Any = "cpu", shape: ShardShape = ShardShape(),
                trust_remote_code: bool = False, revision: Optional[str] = None):
    """Build (dummy) or load (auto) the model one rank holds, in eval mode, directly on `device`.

    dummy: constructed from the (sharded) config under `torch.device(device)` with initialisation
    skipped, so every tensor is allocated once, on the device, uninitialised; real tensors then get
    vLLM's dummy values in place. Works with device "meta" and under FakeTensorMode.
    auto: `from_pretrained` of a local checkpoint (or the local HF cache) straight to the device; only
    for the whole model (a TP rank or PP stage is measured with dummy weights).
    vLLM's rotary caches and vocabulary padding are not allocated: `vllm_weight_buffers_of` computes them.
    """
    import torch

    if load_format not in LOAD_FORMATS:
        raise InputError(f"unknown load format {load_format!r}", hint="use auto or dummy")
    torch_dtype = _torch_dtype(resolve_dtype(spec, dtype))
    device = torch.device(device) if not isinstance(device, torch.device) else device

    if load_format == "auto":
        if not shape.is_full_model:
            raise InputError("a tensor-parallel rank or pipeline stage is measured with dummy weights",
                             hint="add --load-format dummy")
        config = _config_object(spec, model_path=model_path, trust_remote_code=trust_remote_code,
                                revision=revision)
        cls = _model_class(config, spec)
        source = model_path or spec.model_id
        try:
            model = cls.from_pretrained(source, dtype=torch_dtype, device_map={"": device},
                                        trust_remote_code=trust_remote_code, revision=revision)
        except OSError as error:
            raise InputError(f"cannot load the checkpoint {source!r}: {error}",
                             hint="give a local directory with safetensors, or use --load-format dummy") from None
        hold_in_model_dtype(model, torch_dtype)
        model.eval()
        return model

    from transformers.initialization import no_init_weights

    config = sharded_config_object(spec, shape, model_path=model_path, trust_remote_code=trust_remote_code,
                                   revision=revision)
    cls = _model_class(config, spec)
    try:
        with torch.device(device), no_init_weights():
            if hasattr(cls, "_from_config"):
                model = cls._from_config(config, dtype=torch_dtype)
            else:  # an Auto class picks the architecture from the config
                model = cls.from_config(config, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError) as error:
        raise InputError(f"transformers cannot build {spec.model_id!r} from its config: {error}",
                         hint="a model with its own code needs a local checkpoint and --trust-remote-code") from None
    # no_init_weights also skipped tying; tie as post_init would (tied embeddings are one tensor)
    model.tie_weights()
    _apply_stage(model, shape)
    hold_in_model_dtype(model, torch_dtype)
    _fill_dummy(model)
    model.eval()
    model.requires_grad_(False)
    return model


def vllm_weight_buffers_of(model, spec: ModelSpec, shape: ShardShape = ShardShape()):
    """vLLM's weight-time buffers that this built model (one rank) lacks: kvadvise.plan.vllm_buffers,
    from the model's own filled text config (transformers' defaults) and its embedding / lm_head rows."""
    from kvadvise.plan.vllm_buffers import VocabTensor, vllm_weight_buffers

    text = _text_config(model.config)
    text_dict = text.to_dict()
    text_dict.setdefault("model_type", getattr(text, "model_type", None) or spec.model_type)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    dtype_bytes = dtype.itemsize if dtype is not None else 2
    tp = shape.tensor_parallel_size
    parts = locate_parts(model)
    weights = []
    if parts.has_embedding:
        weights.append(getattr(getattr(parts.decoder, parts.embedding_name), "weight", None))
    if parts.lm_head is not None:
        weights.append(getattr(parts.lm_head, "weight", None))
    vocab, seen = [], set()
    whole_vocab = spec.vocab_size
    for weight in weights:
        if weight is None or weight.dim() != 2 or id(weight) in seen:
            continue                       # a tied lm_head is the embedding itself: padded once
        seen.add(id(weight))
        rows, width = weight.shape
        vocab.append(VocabTensor(vocab_size=whole_vocab if tp > 1 and whole_vocab else rows, rows_held=rows,
                                 width=width))
    return vllm_weight_buffers(text_dict, dtype_bytes=dtype_bytes, tensor_parallel_size=tp, vocab_tensors=vocab)


def tensor_bytes(model) -> int:
    """Bytes of the model's unique parameter and buffer storages (tied weights counted once)."""
    seen: dict[int, int] = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        storage = tensor.untyped_storage()
        seen[id(storage)] = storage.nbytes()
    return sum(seen.values())


def model_tensors(model) -> list:
    """The model's unique parameters and buffers (for a tracker's `adopt`)."""
    out, seen = [], set()
    for tensor in list(model.parameters()) + list(model.buffers()):
        key = id(tensor.untyped_storage())
        if key not in seen:
            seen.add(key)
            out.append(tensor)
    return out


def text_settings(config_or_model) -> Mapping[str, Any]:
    """A few text-config values the dummy run needs (vocab, softcap) from a model or config."""
    config = getattr(config_or_model, "config", config_or_model)
    text = _text_config(config)
    return {"vocab_size": getattr(text, "vocab_size", None),
            "final_logit_softcapping": getattr(text, "final_logit_softcapping", None)}
