"""vLLM's profile-run shape, as plain arithmetic: the default batch limits, the dummy request split, and
the CUDA-graph capture sizes.

Knows: which `max_num_batched_tokens` / `max_num_seqs` vLLM picks by itself for a device (by total memory
and name), how `_dummy_run` splits the tokens into requests, how many rows the dummy sampler sees, which
batch sizes get a CUDA graph, and torch's cuBLAS workspace on a card (part of vLLM's activation peak).
vLLM's weight-time buffers (rotary caches, vocabulary padding) are in plan/vllm_buffers.py. Does not know: anything measured (that is profile/), nor how the tensors
are built (profile/runner.py runs the plan). Pure: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

GIB = 1 << 30

USAGE_API_SERVER = "api_server"  # `vllm serve` (UsageContext.OPENAI_API_SERVER)
USAGE_LLM = "llm"                # offline `LLM(...)` (UsageContext.LLM_CLASS)


def _version_key(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def vllm_default_batch(total_bytes: int, device_name: Optional[str], vllm_version: str,
                       usage: str = USAGE_API_SERVER) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) that vLLM chooses when the user sets neither.

    mirrors vLLM 0.11 engine/arg_utils.py EngineArgs._set_default_args (get_batch_defaults in later
    releases): `device_memory >= 70 * GiB_bytes and "a100" not in device_name` -> 8192 tokens for the API
    server, 16384 for the offline LLM class, 1024 seqs; otherwise 2048 / 8192 tokens and 256 seqs.
    vLLM 0.28 added a tier above it ("for GPUs like B200/B300 with >= 160GB memory, use the largest
    defaults"): 16384 tokens for the API server. The offline-LLM token count of that tier was not read;
    we keep the 70 GiB tier's 16384 for it: unverified, and if vLLM uses more, our dummy batch is smaller
    than vLLM's (the side that over-states "fit"). Pass the value explicitly when it matters.
    """
    if usage not in (USAGE_API_SERVER, USAGE_LLM):
        raise ValueError(f"usage must be {USAGE_API_SERVER!r} or {USAGE_LLM!r}, not {usage!r}")
    name = (device_name or "").lower()
    version = _version_key(vllm_version)
    # mirrors vLLM 0.28+ engine/arg_utils.py get_batch_defaults: the >= 160 GiB tier comes first
    # (API server 16384 tokens; the offline-LLM value of this tier is not verified, 16384 kept)
    if version >= (0, 28) and total_bytes >= 160 * GIB:
        return 16384, 1024
    # mirrors vLLM 0.11 engine/arg_utils.py: `device_memory >= 70 * GiB_bytes and "a100" not in device_name`
    if total_bytes >= 70 * GIB and "a100" not in name:
        return (8192 if usage == USAGE_API_SERVER else 16384), 1024
    return (2048 if usage == USAGE_API_SERVER else 8192), 256


@dataclass(frozen=True)
class DummyRunPlan:
    """The batch of vLLM's profile run: one forward pass of num_tokens tokens in num_reqs requests."""

    num_tokens: int
    num_reqs: int
    tokens_per_request: tuple[int, ...]   # len == num_reqs, sum == num_tokens
    sampler_rows: int                     # rows the dummy sampler runs on (one per request)

    @property
    def last_token_indices(self) -> tuple[int, ...]:
        """Flat index of each request's last token (vLLM: np.cumsum(num_scheduled_tokens) - 1)."""
        indices = []
        position = -1
        for count in self.tokens_per_request:
            position += count
            indices.append(position)
        return tuple(indices)

    @property
    def positions(self) -> tuple[int, ...]:
        """The position of every token inside its own request (0 .. n-1 per request, concatenated)."""
        out: list[int] = []
        for count in self.tokens_per_request:
            out.extend(range(count))
        return tuple(out)


def check_scheduler_limits(max_num_batched_tokens: int, max_num_seqs: int) -> None:
    """Refuse what vLLM's scheduler refuses: fewer batched tokens than sequences (every sequence needs one).

    mirrors vLLM 0.11 config/scheduler.py SchedulerConfig._verify_args (unconditional: chunked prefill only
    relaxes the max_model_len check, not this one).
    """
    from kvadvise.errors import InputError

    if max_num_batched_tokens < max_num_seqs:
        raise InputError(f"--max-num-batched-tokens {max_num_batched_tokens} is below --max-num-seqs "
                         f"{max_num_seqs}: vLLM refuses max_num_batched_tokens < max_num_seqs",
                         hint=f"lower --max-num-seqs to at most {max_num_batched_tokens} or raise "
                              "--max-num-batched-tokens")


def plan_dummy_run(max_num_batched_tokens: int, max_num_seqs: int) -> DummyRunPlan:
    """Split the profile batch the way vLLM does.

    mirrors vLLM 0.11 v1/worker/gpu_model_runner.py _dummy_run (called from profile_run with
    num_tokens = max_num_tokens): num_reqs = min(num_tokens, max_num_reqs); every request gets
    num_tokens // num_reqs tokens and the last one also num_tokens % num_reqs. _dummy_sampler_run then
    sees one row per request (hidden_states[logit_indices]).
    """
    if max_num_batched_tokens <= 0:
        raise ValueError(f"max_num_batched_tokens must be positive, not {max_num_batched_tokens}")
    if max_num_seqs <= 0:
        raise ValueError(f"max_num_seqs must be positive, not {max_num_seqs}")
    num_tokens = max_num_batched_tokens
    num_reqs = min(num_tokens, max_num_seqs)
    per_request = [num_tokens // num_reqs] * num_reqs
    per_request[-1] += num_tokens % num_reqs
    return DummyRunPlan(num_tokens=num_tokens, num_reqs=num_reqs,
                        tokens_per_request=tuple(per_request), sampler_rows=num_reqs)


def cuda_graph_capture_sizes(max_num_seqs: int, max_num_batched_tokens: int, vllm_version: str,
                             max_capture_size: Optional[int] = None) -> tuple[int, ...]:
    """Batch sizes vLLM captures a CUDA graph for, largest first (the capture order).

    0.11: mirrors vLLM 0.11 config/__init__.py VllmConfig._set_cudagraph_sizes with the scheduler's
    default cuda_graph_sizes = [min(max_num_seqs * 2, 512)]: [1, 2, 4] + range(8, max + 1, 8), only
    sizes <= max_num_batched_tokens, sorted descending by CompilationConfig.init_with_cudagraph_sizes.
    Newer rule (read in vLLM 0.33 config/vllm.py; we apply it from 0.12 on): [1, 2, 4] + range(8, 256, 8)
    + range(256, max + 1, 16). max_capture_size overrides the default max (`--cuda-graph-sizes N`).
    """
    largest = max_capture_size if max_capture_size is not None else min(max_num_seqs * 2, 512)
    if _version_key(vllm_version) >= (0, 12):
        # mirrors vLLM 0.33 config/vllm.py _set_cudagraph_sizes
        sizes = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, largest + 1, 16))
        sizes = [s for s in sizes if s <= largest]
    else:
        # mirrors vLLM 0.11 config/__init__.py _set_cudagraph_sizes
        # (no cut at `largest` here: 0.11 keeps 1, 2, 4 even when max_num_seqs is 1)
        sizes = [1, 2, 4] + list(range(8, largest + 1, 8))
    sizes = [s for s in sizes if s <= max_num_batched_tokens]
    return tuple(sorted(set(sizes), reverse=True))


# mirrors PyTorch 2.8 aten/src/ATen/cuda/CublasHandlePool.cpp parseChosenWorkspaceSize: the default
# cuBLAS workspace (":4096:2:16:8") is 4096 KiB * 2 + 16 KiB * 8, and 4096 KiB * 8 = 32 MiB on Hopper and
# Blackwell (compute capability 9.x, 10.x, 12.x). It comes from the caching allocator at the first matmul,
# which in vLLM is inside the profile run, so vLLM's activation peak includes it.
CUBLAS_WORKSPACE_BYTES_DEFAULT = 4096 * 1024 * 2 + 16 * 1024 * 8
CUBLAS_WORKSPACE_BYTES_HOPPER_BLACKWELL = 4096 * 8 * 1024


def cublas_workspace_bytes(compute_capability_major: Optional[int]) -> Optional[int]:
    """torch's default cuBLAS workspace on a card of that compute capability; None when unknown."""
    if compute_capability_major is None:
        return None
    if compute_capability_major in (9, 10, 12):
        return CUBLAS_WORKSPACE_BYTES_HOPPER_BLACKWELL
    return CUBLAS_WORKSPACE_BYTES_DEFAULT


# compute capability major of each catalog family (kvadvise/gpus.py): Ampere 8.0/8.6, Ada 8.9, Hopper 9.0;
# Blackwell is 10.x (B200) or 12.x (RTX 5090, RTX PRO 6000): the same workspace either way
FAMILY_COMPUTE_CAPABILITY_MAJOR = {"ampere": 8, "ada": 8, "hopper": 9, "blackwell": 10}


def cublas_workspace_bytes_for_family(family: Optional[str]) -> tuple[int, bool]:
    """(workspace bytes, known) for a target card family, for runs that have no CUDA device (CPU, fake).

    A family we have no rule for (an AMD card, whose hipBLAS(Lt) workspace we have not read, or a card
    given only by --gpu-memory) gets the largest figure, 32 MiB: counting more activation can only lower
    "fit", the safe side.
    """
    major = FAMILY_COMPUTE_CAPABILITY_MAJOR.get(family or "")
    if major is None:
        return CUBLAS_WORKSPACE_BYTES_HOPPER_BLACKWELL, False
    return cublas_workspace_bytes(major), True


def mamba2_groups_per_rank(n_groups: int, tensor_parallel_size: int) -> int:
    """B/C groups one TP rank holds in a Mamba2 mixer: n_groups / T, or 1 replicated group when T does not
    divide n_groups (vLLM allows that only for n_groups == 1).

    mirrors vLLM 0.11 model_executor/layers/mamba/mamba_utils.py extra_groups_for_head_shards (and the
    assert in mamba_mixer2.py MambaMixer2.__init__): groups are padded by T - n_groups, then split by T.
    """
    from kvadvise.errors import InputError

    if n_groups < 1 or tensor_parallel_size < 1:
        raise ValueError(f"n_groups ({n_groups}) and the TP size ({tensor_parallel_size}) must be positive")
    if n_groups % tensor_parallel_size == 0:
        return n_groups // tensor_parallel_size
    if n_groups != 1:
        raise InputError(f"--tensor-parallel-size {tensor_parallel_size} does not divide the {n_groups} Mamba2 "
                         "groups", hint="vLLM requires n_groups % tensor_parallel_size == 0 or n_groups == 1")
    # n_groups + extra_groups_for_head_shards = T groups, T / T = 1 per rank
    return 1
