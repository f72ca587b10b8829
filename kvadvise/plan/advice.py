"""The budget advice: vLLM's own suggestion-line arithmetic, and the report shape profile/estimate share.

Mirrors vLLM 0.10.2 v1/worker/gpu_worker.py (compile_or_warm_up_model, the "Replace
gpu_memory_utilization config with `--kv-cache-memory=...`" line): the two values are
  fit  = int(total * util) - non_kv - 150 MiB
  full = free_at_start     - non_kv - 150 MiB
with non_kv = weights + peak activation + non-torch + CUDA graphs. Pure: plain Python, no torch.
What it does not know: how the terms were obtained (profile/ measures, estimate/ estimates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

# mirrors vLLM 0.10.2 v1/worker/gpu_worker.py: redundancy_buffer_memory = 150 * (1 << 20)
REDUNDANCY_BUFFER_BYTES = 150 * (1 << 20)

METHODS = ("measured", "estimated", "given", "not_applicable")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def requested_memory_bytes(total_bytes: int, gpu_memory_utilization: float, vllm_version: str) -> int:
    """vLLM's requested memory: total x utilization; int() in 0.10.2-0.12, math.ceil from the newer rules."""
    product = total_bytes * gpu_memory_utilization
    # mirrors vLLM 0.33 v1/worker/utils.py request_memory: math.ceil(total * util); 0.10.2-0.12 gpu_worker.py: float, int() where used
    if _version_key(vllm_version) >= (0, 13):
        return math.ceil(product)
    return int(product)


@dataclass(frozen=True)
class NonKvMemory:
    """The four non-KV terms of vLLM's accounting, each in bytes, with how each was obtained."""

    weights_bytes: int
    activation_peak_bytes: int
    non_torch_bytes: int
    cuda_graph_bytes: int
    weights_method: str = "measured"
    activation_peak_method: str = "measured"
    non_torch_method: str = "measured"
    cuda_graph_method: str = "measured"
    # the part of non_torch_bytes that is vLLM's own runner state, computed (Model Runner V2: vLLM counts it in
    # "consumed memory (weights + non-torch)"), by reason; None when there is none
    non_torch_vllm_buffers: Optional[Mapping[str, int]] = None

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_peak_bytes + self.non_torch_bytes + self.cuda_graph_bytes


@dataclass(frozen=True)
class DeviceBudget:
    """The card as vLLM's start-up snapshot sees it, and the utilization the user asks for."""

    total_bytes: int
    free_bytes_at_start: int
    gpu_memory_utilization: float


@dataclass(frozen=True)
class Advice:
    """vLLM's two suggested `--kv-cache-memory-bytes` values (may be <= 0: nothing left for the KV cache)."""

    requested_bytes: int
    non_kv_bytes: int
    redundancy_buffer_bytes: int
    fit_kv_cache_memory_bytes: int     # vLLM's "fit" value, never above "full" (see capped_by_free_memory)
    full_kv_cache_memory_bytes: int
    gate_gpu_memory_utilization: Optional[float]  # largest 2-decimal utilization passing the free-memory gate
    vllm_version: str
    vllm_fit_kv_cache_memory_bytes: Optional[int] = None  # the formula's value as vLLM would print it

    @property
    def fits(self) -> bool:
        return self.fit_kv_cache_memory_bytes > 0

    @property
    def capped_by_free_memory(self) -> bool:
        """True when less memory is free than the utilization requests: "fit" is then "full"."""
        return (self.vllm_fit_kv_cache_memory_bytes is not None
                and self.vllm_fit_kv_cache_memory_bytes > self.fit_kv_cache_memory_bytes)


def gate_utilization(total_bytes: int, free_bytes_at_start: int, vllm_version: str) -> Optional[float]:
    """The largest utilization in steps of 0.01 that passes vLLM's start-up gate `free >= requested`.

    The gate still runs when --kv-cache-memory-bytes is given (vLLM 0.10.2 gpu_worker.py init_device:
    raises when init_snapshot.free_memory < requested_memory). None when even 0.01 fails.
    """
    # vLLM fails when free < total * util (a float in 0.10.2-0.12, its ceil later); for an integer `free`
    # both tests pass exactly when total * util <= free, checked here in integers: total * h <= free * 100.
    for hundredths in range(100, 0, -1):
        if total_bytes * hundredths <= free_bytes_at_start * 100:
            return hundredths / 100
    return None


def advise(memory: NonKvMemory, device: DeviceBudget, vllm_version: str) -> Advice:
    """vLLM's suggestion line, to the byte.

    When less memory is free at start than the utilization requests, vLLM would refuse to start at that
    utilization, and its "fit" value would not fit in what is free: "fit" is then capped at "full" (the
    formula's own value stays in `vllm_fit_kv_cache_memory_bytes`).
    """
    requested = requested_memory_bytes(device.total_bytes, device.gpu_memory_utilization, vllm_version)
    non_kv = memory.total_bytes
    # mirrors vLLM 0.10.2 v1/worker/gpu_worker.py: kv_cache_memory_bytes_to_requested_limit / _to_gpu_limit
    fit = requested - non_kv - REDUNDANCY_BUFFER_BYTES
    full = device.free_bytes_at_start - non_kv - REDUNDANCY_BUFFER_BYTES
    return Advice(
        requested_bytes=requested,
        non_kv_bytes=non_kv,
        redundancy_buffer_bytes=REDUNDANCY_BUFFER_BYTES,
        fit_kv_cache_memory_bytes=min(fit, full),
        vllm_fit_kv_cache_memory_bytes=fit,
        full_kv_cache_memory_bytes=full,
        gate_gpu_memory_utilization=gate_utilization(device.total_bytes, device.free_bytes_at_start, vllm_version),
        vllm_version=vllm_version,
    )


def vllm_serve_command(model_id: str, kv_cache_memory_bytes: int, *,
                       gpu_memory_utilization: Optional[float] = None,
                       tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1,
                       max_model_len: Optional[int] = None, kv_cache_dtype: str = "auto",
                       block_size: Optional[int] = None, max_num_batched_tokens: Optional[int] = None,
                       max_num_seqs: Optional[int] = None, enforce_eager: bool = False,
                       env: Optional[dict[str, str]] = None) -> str:
    """A ready-to-paste `vllm serve` line carrying the byte budget and the settings it was computed for."""
    parts: list[str] = [f"{key}={value}" for key, value in (env or {}).items()]
    parts += ["vllm", "serve", _shell_quote(model_id)]
    if tensor_parallel_size != 1:
        parts += ["--tensor-parallel-size", str(tensor_parallel_size)]
    if pipeline_parallel_size != 1:
        parts += ["--pipeline-parallel-size", str(pipeline_parallel_size)]
    if max_model_len is not None:
        parts += ["--max-model-len", str(max_model_len)]
    if kv_cache_dtype != "auto":
        parts += ["--kv-cache-dtype", kv_cache_dtype]
    if block_size is not None:
        parts += ["--block-size", str(block_size)]
    if max_num_batched_tokens is not None:
        parts += ["--max-num-batched-tokens", str(max_num_batched_tokens)]
    if max_num_seqs is not None:
        parts += ["--max-num-seqs", str(max_num_seqs)]
    if enforce_eager:
        parts += ["--enforce-eager"]
    if gpu_memory_utilization is not None:
        parts += ["--gpu-memory-utilization", f"{gpu_memory_utilization:.2f}"]
    parts += ["--kv-cache-memory-bytes", str(kv_cache_memory_bytes)]
    return " ".join(parts)


def served_model_name(model_id: str, raw_config: Optional[dict] = None) -> tuple[str, Optional[str]]:
    """What to put after `vllm serve`, and a warning when it is not what the user named.

    A hub id or a checkpoint directory stays as given. A config FILE is not something vLLM can serve, and
    its `_name_or_path` is no safe stand-in (a quantized upload names its full-precision source; a
    fine-tune names its base), so the line says MODEL and the warning says what to put there.
    """
    if not model_id.lower().endswith(".json"):
        return model_id, None
    name = str((raw_config or {}).get("_name_or_path") or "")
    named = f" (the config's _name_or_path says {name}: use it only if it is this very checkpoint)" if name else ""
    return "MODEL", (f"{model_id} is a config file, which vLLM cannot serve: replace MODEL in the vllm serve "
                     f"line with the model's hub id or checkpoint directory{named}")


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


# ---- the report shape that `profile` and `estimate` share (rendered by report/budget.py) ----

@dataclass(frozen=True)
class DeviceInfo:
    """The card the budget is for: measured (profile) or from the catalog / --gpu-memory (estimate)."""

    name: Optional[str]
    total_bytes: int
    free_bytes_at_start: int
    source: str                       # "cuda", "catalog", "gpu-memory option", "host memory"
    driver_version: Optional[str] = None
    mig_mode: Optional[bool] = None
    other_processes_bytes: Optional[int] = None


@dataclass(frozen=True)
class BudgetOption:
    """One suggested budget ("fit" or "full") and what it buys."""

    kv_cache_memory_bytes: int
    tokens: Optional[int]             # None when the budget is <= 0
    max_concurrency: Optional[float]
    num_blocks: Optional[int]
    command: Optional[str]            # None when nothing fits


@dataclass(frozen=True)
class BudgetReport:
    """Everything `profile` and `estimate` print: device, settings, the four terms, the two values."""

    command: str                      # "profile" or "estimate"
    model_id: str
    device: DeviceInfo
    memory: NonKvMemory
    advice: Advice
    fit: BudgetOption
    full: BudgetOption
    max_num_batched_tokens: int
    max_num_seqs: int
    settings: dict = field(default_factory=dict)   # tp, stage, dtype, kv settings as resolved
    warnings: tuple[str, ...] = ()
