"""Bytes of one linear layer's weight as vLLM holds it under a checkpoint's quantization_config.

Pure arithmetic over shapes (no torch). Knows: fp8 (block-wise with float32 `weight_scale_inv`, or
per-tensor), GPTQ and AWQ int4/int8 (packed int32 qweight, fp16/bf16 scales, packed zeros, GPTQ g_idx),
compressed-tensors pack-quantized W4A16/W8A16 (int32 weight_packed, group scales), mxfp4 MoE experts (uint8
blocks + uint8 e8m0 scales per 32, bf16 biases, padded as vLLM's MoE backends pad), bitsandbytes 4-bit
(packed uint8 + absmax per 64, optionally double-quantized) and 8-bit, ModelOpt FP8 (hf_quant_config.json).
Does not know: kernels' transient repacking buffers (freed before vLLM's weight measurement ends), and
methods not listed (their layers are counted at the model dtype, with a warning).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional


def cdiv(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def round_up(value: int, multiple: int) -> int:
    return cdiv(value, multiple) * multiple


@dataclass(frozen=True)
class QuantScheme:
    """How a checkpoint's linear layers are stored, read from quantization_config (or hf_quant_config.json)."""

    method: str                      # fp8_block, fp8_tensor, gptq, awq, ct_int (compressed-tensors), mxfp4, bnb4, bnb8
    bits: int
    group_size: Optional[int] = None  # None: one group over the whole input dim
    block: Optional[tuple[int, int]] = None
    desc_act: bool = False
    symmetric: bool = True
    double_quant: bool = False
    static_activation_scale: bool = False
    excluded: tuple[str, ...] = ()
    experts_only: bool = False       # mxfp4: only the MoE experts are quantized
    raw_method: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


def parse_quantization(config: Mapping[str, Any],
                       extra_files: Optional[Mapping[str, Mapping[str, Any]]] = None
                       ) -> tuple[Optional[QuantScheme], list[str]]:
    """The scheme of a config (top level or text_config), or None for an unquantized model; plus warnings."""
    quant = config.get("quantization_config")
    if quant is None and isinstance(config.get("text_config"), Mapping):
        quant = config["text_config"].get("quantization_config")
    if quant is None and extra_files and "hf_quant_config.json" in extra_files:
        modelopt = extra_files["hf_quant_config.json"].get("quantization", {})
        quant = {"quant_method": "modelopt", "quant_algo": modelopt.get("quant_algo"),
                 "exclude_modules": modelopt.get("exclude_modules", [])}
    if not quant:
        return None, []
    method = str(quant.get("quant_method", "")).lower()
    excluded = tuple(quant.get("modules_to_not_convert") or quant.get("ignored_layers")
                     or quant.get("ignore") or quant.get("exclude_modules") or ())
    if method == "fp8":
        block = quant.get("weight_block_size")
        static = quant.get("activation_scheme", "dynamic") == "static"
        if block:
            return QuantScheme("fp8_block", 8, block=(int(block[0]), int(block[1])), excluded=excluded,
                               static_activation_scale=static, raw_method=method), []
        return QuantScheme("fp8_tensor", 8, excluded=excluded, static_activation_scale=static,
                           raw_method=method), []
    if method == "modelopt":
        algo = str(quant.get("quant_algo") or quant.get("quantization", {}).get("quant_algo") or "").upper()
        if algo == "FP8":
            return QuantScheme("fp8_tensor", 8, excluded=excluded, static_activation_scale=True,
                               raw_method=method), []
        return None, [f"ModelOpt quant_algo {algo or '?'} is not modelled: its layers are counted at the model dtype"]
    if method in ("gptq", "awq"):
        bits = int(quant.get("bits", quant.get("w_bit", 4)))
        group = int(quant.get("group_size", quant.get("q_group_size", 128)))
        return QuantScheme(method, bits, group_size=None if group <= 0 else group,
                           desc_act=bool(quant.get("desc_act", False)), symmetric=bool(quant.get("sym", True)),
                           excluded=excluded, raw_method=method), []
    if method == "compressed-tensors":
        groups = quant.get("config_groups") or {}
        for group in groups.values():
            weights = group.get("weights") or {}
            if weights.get("type", "int") == "int" and weights.get("num_bits") in (4, 8) \
                    and not group.get("input_activations"):
                size = weights.get("group_size")
                return QuantScheme("ct_int", int(weights["num_bits"]),
                                   group_size=int(size) if size else None,
                                   symmetric=bool(weights.get("symmetric", True)), excluded=excluded,
                                   raw_method=method), []
            if weights.get("type") == "float" and weights.get("num_bits") == 8:
                return QuantScheme("fp8_tensor", 8, excluded=excluded, raw_method=method), []
        return None, ["compressed-tensors scheme not modelled: its layers are counted at the model dtype"]
    if method == "mxfp4":
        return QuantScheme("mxfp4", 4, group_size=32, excluded=excluded, experts_only=True, raw_method=method), []
    if method == "bitsandbytes":
        if quant.get("load_in_8bit"):
            return QuantScheme("bnb8", 8, excluded=tuple(quant.get("llm_int8_skip_modules") or ()),
                               raw_method=method), []
        return QuantScheme("bnb4", 4, group_size=int(quant.get("bnb_4bit_blocksize", 64) or 64),
                           double_quant=bool(quant.get("bnb_4bit_use_double_quant", False)),
                           excluded=tuple(quant.get("llm_int8_skip_modules") or ()), raw_method=method), []
    return None, [f"quantization method {method!r} is not modelled: its layers are counted at the model dtype"]


def is_excluded(module_name: str, scheme: QuantScheme) -> bool:
    """vLLM's is_layer_skipped / HF's modules_to_not_convert: exact, dotted prefix or suffix, glob, `re:`."""
    dotted = f".{module_name}."
    for pattern in scheme.excluded:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], module_name):
                return True
            continue
        if "*" in pattern or "?" in pattern:
            if fnmatch.fnmatch(module_name, pattern) or fnmatch.fnmatch(module_name, pattern + ".*"):
                return True
            continue
        if module_name == pattern or f".{pattern}." in dotted:
            return True
    return False


# Routers stay unquantized in vLLM (ReplicatedLinear(..., quant_config=None) in deepseek_v2.py, qwen3_moe.py,
# mixtral.py, gpt_oss.py): mirrors vLLM 0.11 model_executor/models/*.py gate construction.
_ROUTER_NAMES = ("gate", "router", "shared_expert_gate")


def quantizes_linear(module_name: str, scheme: Optional[QuantScheme], *, is_expert: bool) -> bool:
    """Whether vLLM holds this linear layer quantized under `scheme`."""
    if scheme is None:
        return False
    last = module_name.rsplit(".", 1)[-1]
    if not is_expert and last in _ROUTER_NAMES:
        return False
    if scheme.experts_only and not is_expert:
        return False
    return not is_excluded(module_name, scheme)


def linear_bytes(scheme: QuantScheme, out_features: int, in_features: int, model_dtype_bytes: int) -> int:
    """Bytes of one quantized linear weight [out, in] (one expert, one TP shard), scales included."""
    numel = out_features * in_features
    if scheme.method == "fp8_block":
        block_out, block_in = scheme.block or (128, 128)
        # mirrors vLLM 0.11 quantization/fp8.py create_weights: fp8 weight + float32 weight_scale_inv blocks
        return numel + cdiv(out_features, block_out) * cdiv(in_features, block_in) * 4
    if scheme.method == "fp8_tensor":
        # mirrors vLLM 0.11 fp8.py: float32 weight_scale per tensor (+ input_scale when static)
        return numel + 4 + (4 if scheme.static_activation_scale else 0)
    groups = cdiv(in_features, scheme.group_size) if scheme.group_size else 1
    packed = numel * scheme.bits // 8
    if scheme.method == "gptq":
        # mirrors vLLM 0.11 quantization/gptq.py create_weights: qweight int32 [in/pack, out],
        # scales [groups, out] in the model dtype, qzeros int32 [groups, out/pack], g_idx int32 [in]
        return packed + groups * out_features * model_dtype_bytes + groups * out_features * scheme.bits // 8 \
            + in_features * 4
    if scheme.method == "awq":
        # mirrors vLLM 0.11 quantization/awq.py: qweight, qzeros int32 packed, scales [groups, out]
        return packed + groups * out_features * scheme.bits // 8 + groups * out_features * model_dtype_bytes
    if scheme.method == "ct_int":
        # mirrors vLLM 0.11 compressed_tensors_wNa16.py: weight_packed int32 [out, in/pack],
        # weight_scale [out, groups] (model dtype), weight_shape int64 [2], zero points when asymmetric
        zeros = 0 if scheme.symmetric else groups * out_features * scheme.bits // 8
        return packed + out_features * groups * model_dtype_bytes + 16 + zeros
    if scheme.method == "bnb4":
        blocks = cdiv(numel, scheme.group_size or 64)
        # packed nf4/fp4 uint8 + absmax per block: float32, or uint8 + one float32 per 256 blocks (double quant)
        absmax = blocks + cdiv(blocks, 256) * 4 if scheme.double_quant else blocks * 4
        return cdiv(numel, 2) + absmax
    if scheme.method == "bnb8":
        return numel + out_features * 4
    if scheme.method == "mxfp4":
        return cdiv(numel, 2) + cdiv(numel, 32)
    raise ValueError(f"unknown scheme {scheme.method}")


def mxfp4_padded_sizes(hidden_size: int, intermediate_per_rank: int, backend: str) -> tuple[int, int]:
    """(hidden, intermediate) after vLLM's mxfp4 MoE padding for a backend.

    mirrors vLLM (main, 2025-11) quantization/mxfp4.py Mxfp4MoEMethod.create_weights: marlin pads the
    intermediate size to 128 and hidden to 256; flashinfer sm100 both to 256; flashinfer sm90/cutlass both
    to 128; triton (the others) the intermediate size to 64.
    """
    if backend == "marlin":
        return round_up(hidden_size, 256), round_up(intermediate_per_rank, 128)
    if backend == "flashinfer_sm100":
        return round_up(hidden_size, 256), round_up(intermediate_per_rank, 256)
    if backend in ("flashinfer_sm90", "flashinfer_cutlass"):
        return round_up(hidden_size, 128), round_up(intermediate_per_rank, 128)
    if backend == "triton":
        return hidden_size, round_up(intermediate_per_rank, 64)
    raise ValueError(f"unknown mxfp4 backend {backend!r}")
