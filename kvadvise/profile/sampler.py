"""vLLM's dummy sampler run, tensor for tensor: the same tensors, dtypes and order, so the peak lands
where vLLM's does.

Mirrors vLLM 0.11:
- v1/worker/gpu_model_runner.py `_dummy_sampler_run`: hidden states replaced by `torch.rand_like`,
  `compute_logits`, SamplingMetadata with temperature 0.5, top_p 0.9, top_k = vocab - 1 (all
  `torch.full((num_reqs,), v)`: float32, float32, int64), penalty tensors 0.1 (three float32 rows,
  unused: no_penalties=True), all_greedy = all_random = False, no logprobs, no logits processors.
- v1/sample/sampler.py `Sampler.forward`: `logits.to(torch.float32)` (a copy; the model-dtype logits
  stay alive in the caller), `apply_logits_processors` (nothing to do), `sample`: greedy argmax first
  (all_random is False), in-place temperature division (`torch.where(temp < eps, 1.0, temp)` makes a
  new row), `TopKTopPSampler`, `torch.where(..., out=greedy_sampled)`, `.long()`, `.to(torch.int32)`.
- v1/sample/ops/topk_topp_sampler.py `forward_native` / `apply_top_k_top_p`: sort of the whole
  vocabulary (float32 values + int64 indices), top-k threshold gather and bool mask, masked_fill_,
  softmax, cumsum with out= into the softmax buffer, top-p bool mask, masked_fill_, scatter into a new
  tensor; softmax to float32 probs; `random_sample`: `empty_like(probs).exponential_()`,
  `probs.div_(q).argmax()`.
Two candidate peaks, per row per vocabulary entry: at the scatter, model-dtype logits, float32 logits,
sorted values, int64 indices, top-k mask, softmax/cumsum buffer, top-p mask and the scattered output:
(2 or 4) + 4 + 4 + 8 + 1 + 4 + 1 + 4 bytes; at the sort, the logits, the sort's outputs and the CUDA sort
kernel's own workspace (`cuda_sort_workspace_bytes`: with >= 128 rows, int64 reverse indices and cub's
alternate key/value buffers, 8 + 4 + 8 bytes): (2 or 4) + 4 + 4 + 8 + 20 = 38 bytes, the larger one.
That workspace is allocated inside the kernel, invisible to a tensor tracker: on CPU and under fake
tensors it is emulated with placeholder allocations; on a real CUDA device the kernel makes it.

Where vLLM differs from this: with FlashInfer sampling enabled (VLLM_USE_FLASHINFER_SAMPLER), the CUDA
path calls `flashinfer.sampling.top_k_top_p_sampling_from_logits` and skips the sort and masks, so
vLLM's sampler peak is smaller than this one (our figure is then an upper bound, the safe side for
"fit"). The CPU / TPU / ROCm-aiter paths differ too. V0 engines profiled another sampler (with
penalties and prompt-token tensors); not mirrored.

vLLM 0.33 (rule "0.33") profiles with Model Runner V2, the default runner since 0.25 for dense models and
for every architecture on CUDA in the newest releases (vllm/config/vllm.py use_v2_model_runner; the V1
runner only with VLLM_USE_V2_MODEL_RUNNER=0 or a feature V2 lacks). Mirrors vllm/v1/worker/gpu/
model_runner.py `profile_run` / `_dummy_sampler_run` and gpu/sample/sampler.py, gumbel.py:
- `sample_hidden_states = hidden_states[logits_indices]` (a copy; both stay alive), `compute_logits` on it
  directly (no rand_like);
- the dummy InputBatch's request slots hold the default sampling state (temperature 0, top-k = vocabulary,
  top-p 1, no logprobs, no penalties), so `apply_sampling_params` returns the logits unchanged (no float32
  copy), top-k/top-p are None (no FlashInfer, no sort) and `gumbel_sample` takes a plain argmax;
- tensors made: positions and input ids at the logits indices (int64, int32 rows), `gumbel_sample`'s
  local_argmax (int64) and local_max (float32), one value per row and 1024-entry vocabulary block, the
  block argmax (int64 rows) and the gathered sample (int64 rows), and `seq_lens.new_ones` (int32 rows).
  The Triton kernel itself allocates nothing; here the block buffers are zero-filled instead of computed.
vLLM notes that this profile "may skip top_k, top_p, and logprobs, using less GPU memory than what is
possible during actual execution": `runtime_sampler_excess_bytes` is what real sampling parameters add.
"""

from __future__ import annotations

from typing import Any, Callable

# mirrors vLLM 0.11 v1/sample/sampler.py _SAMPLING_EPS
_SAMPLING_EPS = 1e-5
# bytes per row and vocabulary entry at this sampler's traced peak, beyond the logits in the model dtype
# (which _dummy_sampler_run keeps referenced): the float32 copy, the top-k/top-p sort's values (float32)
# and indices (int64), the CUDA sort's workspace (8 + 4 + 8): 4 + 4 + 8 + 20 = 36 (the docstring's 38 - 2)
SAMPLER_BYTES_PER_ENTRY = 36


# mirrors vLLM 0.33 v1/worker/gpu/sample/gumbel.py gumbel_sample: BLOCK_SIZE = 1024
GUMBEL_BLOCK = 1024


MODEL_RUNNERS = ("auto", "v1", "v2")
# the V1 runner's dummy sampler in 0.21+ (read in vLLM 0.28's v1/worker/gpu_model_runner.py _dummy_sampler_run,
# v1/sample/sampler.py and ops/topk_topp_sampler.py: a FlashInfer call, then forward_native with the Triton
# top-k/top-p kernel): the tensors it makes are a float32 copy, a softmax and the exponential noise (or
# FlashInfer's masked logits and softmax), 12 bytes an entry beyond the logits; FlashInfer's own workspace
# and the Triton kernel's cached buffer (at most 2 rows' worth a row) are not counted in this figure
_NEWER_V1_SAMPLER_MIN_BYTES_PER_ENTRY = 12


def check_model_runner(model_runner: str, vllm_version: str) -> None:
    """InputError for a runner we do not know, or Model Runner V2 on a release whose V2 we do not mirror."""
    from kvadvise.errors import InputError

    if model_runner not in MODEL_RUNNERS:
        raise InputError(f"--model-runner: {model_runner!r} is not one of {', '.join(MODEL_RUNNERS)}")
    if model_runner == "v2" and _version_key(vllm_version) != (0, 33):
        raise InputError(f"--model-runner v2 with --vllm-version {vllm_version}: Model Runner V2 is mirrored for "
                         "0.33 (before 0.25 it was opt-in and experimental)",
                         hint="--model-runner v1, or --vllm-version 0.33")


def default_model_runner(vllm_version: str) -> str:
    """The runner a vLLM release profiles with by default: Model Runner V2 from 0.25 (dense models; every
    architecture on CUDA in the newest releases: vllm/config/vllm.py use_v2_model_runner), V1 before."""
    return "v2" if _version_key(vllm_version) == (0, 33) else "v1"


def _version_key(vllm_version: str) -> tuple[int, ...]:
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in vllm_version.split(".")[:2])


def sampler_rule(vllm_version: str, model_runner: str = "auto") -> tuple[str, bool]:
    """(the sampler rule applied, whether it is the version's own). "0.11": the V1 runner's sampler as
    0.10.2-0.12 have it; "0.33": Model Runner V2's profile sampler. Where we do not mirror the version's own
    (0.33 with the V1 runner, unknown versions) 0.11's is used: the larger, the safe side for "fit"."""
    runner = default_model_runner(vllm_version) if model_runner == "auto" else model_runner
    key = _version_key(vllm_version)
    if key in ((0, 10), (0, 11), (0, 12)) and runner == "v1":
        return "0.11", True
    if key == (0, 33) and runner == "v2":
        return "0.33", True
    return "0.11", False


def v1_sampler_bytes(rows: int, vocab_size: int, hidden_size: int, dtype_bytes: int) -> int:
    """The V1 (0.11) dummy sampler's share of the peak: the logits in the model dtype, the rand_like rows and
    SAMPLER_BYTES_PER_ENTRY (tests/test_estimate_activation.py checks it against the traced sampler)."""
    return rows * vocab_size * (dtype_bytes + SAMPLER_BYTES_PER_ENTRY) + rows * hidden_size * dtype_bytes


def v2_sampler_bytes(rows: int, vocab_size: int, dtype_bytes: int) -> int:
    """Model Runner V2's (0.33) dummy sampler's share: the logits in the model dtype, gumbel_sample's two
    block buffers (int64 + float32 per 1024-entry block) and its row-sized tensors (int64 positions, int32
    ids, int64 block argmax and sample, int32 ones), before the allocator's rounding."""
    blocks = -(-vocab_size // GUMBEL_BLOCK)
    return rows * vocab_size * dtype_bytes + rows * blocks * (8 + 4) + rows * (8 + 4 + 8 + 8 + 4)


def sampler_bytes(vllm_version: str, rows: int, vocab_size: int, hidden_size: int, dtype_bytes: int,
                  model_runner: str = "auto") -> int:
    """The dummy sampler's share of the activation peak under the rule `vllm_version` gets (sampler_rule)."""
    rule, _ = sampler_rule(vllm_version, model_runner)
    if rule == "0.33":
        return v2_sampler_bytes(rows, vocab_size, dtype_bytes)
    return v1_sampler_bytes(rows, vocab_size, hidden_size, dtype_bytes)


def runtime_sampler_excess_bytes(rows: int, vocab_size: int) -> int:
    """What requests with temperature / top-k / top-p add to Model Runner V2's sampler beyond its profile run:
    at least `apply_sampling_params`' float32 copy of the logits (4 bytes an entry; Model Runner V2's
    v1/worker/gpu/sample/sampler.py), more with FlashInfer's masked logits and softmax. vLLM does not count it, nor do we."""
    return rows * vocab_size * 4


def sampler_warning(vllm_version: str, rows: int, vocab_size: int, model_runner: str = "auto") -> str | None:
    """A warning on the sampler's share of the peak (None when there is nothing to say): for a sampler we do
    not mirror, the bound it gives; for 0.33's Model Runner V2, what the V1 runner and real sampling add."""
    rule, own = sampler_rule(vllm_version, model_runner)
    if rule == "0.33":
        v1_more = rows * vocab_size * SAMPLER_BYTES_PER_ENTRY
        return (f"vLLM {vllm_version}'s profile run is mirrored as Model Runner V2's (its default runner): a greedy "
                f"argmax over the {rows} x {vocab_size} logits, no float32 copy, no top-k/top-p; if vLLM runs the V1 "
                f"runner (VLLM_USE_V2_MODEL_RUNNER=0, or a feature V2 lacks) its peak is about {v1_more} bytes "
                "higher (36 bytes a row and entry): pass --model-runner v1. As vLLM notes, real top-k/top-p "
                f"requests make the sampler allocate at least {runtime_sampler_excess_bytes(rows, vocab_size)} bytes "
                "more than profiled (a float32 copy of the logits): inside --util's headroom for 'fit', not for 'full'")
    if own:
        return None
    if _version_key(vllm_version) == (0, 33):
        slack = rows * vocab_size * (SAMPLER_BYTES_PER_ENTRY - _NEWER_V1_SAMPLER_MIN_BYTES_PER_ENTRY)
        return (f"vLLM {vllm_version}'s V1 runner samples its dummy batch with FlashInfer, then with the Triton "
                f"top-k/top-p kernel: not mirrored; the 0.11 sampler counted instead (sort and masks, "
                f"{SAMPLER_BYTES_PER_ENTRY} bytes an entry beyond the logits) exceeds the tensors that path makes (12 "
                f"bytes an entry, plus the Triton kernel's buffer of at most 8 more), so 'fit' is up to {slack} "
                f"bytes below what vLLM could hold ({rows} x {vocab_size} x "
                f"{SAMPLER_BYTES_PER_ENTRY - _NEWER_V1_SAMPLER_MIN_BYTES_PER_ENTRY}): an upper bound, on the "
                "safe side (FlashInfer's own workspace aside)")
    share = rows * vocab_size * (2 + SAMPLER_BYTES_PER_ENTRY)
    return (f"the dummy sampler follows vLLM {rule}'s (v1 PyTorch top-k/top-p path); vLLM {vllm_version}'s own "
            f"sampler is not mirrored: the sampler's share of the activation peak ({rows} rows x {vocab_size} "
            f"vocabulary entries, about {share} bytes) may differ with it")


def cuda_sort_workspace_bytes(rows: int, length: int, element_bytes: int) -> list[int]:
    """Device allocations torch's CUDA sort makes for itself while sorting (rows, length) on the last dim.

    mirrors PyTorch 2.x aten/src/ATen/native/cuda/Sort.cpp (length <= 4096: in-place small sort, none)
    and SortStable.cu launch_stable_sort_kernel: one segment or length >= 1e6 -> int64 iota of `length`
    plus cub radix_sort_pairs' temp storage; < 128 segments -> segmented_sort_pairs_by_full_sort: two int2
    buffers, a keys_out buffer and the radix sort's temp storage; else segmented_sort_pairs: int64 reverse
    indices plus cub DeviceSegmentedRadixSort temp storage. cub's temp storage holds the alternate key and
    value buffers (ATen/cuda/cub.cuh, not the DoubleBuffer API), each aligned to 256 bytes, + 255.
    Returns the sizes of the allocations live together at the sort's peak.
    """
    def cub_temp(items: int, key_bytes: int, value_bytes: int) -> int:
        align = lambda n: -(-n // 256) * 256  # noqa: E731
        return align(items * key_bytes) + align(items * value_bytes) + 255

    if length <= 4096:
        return []
    numel = rows * length
    if rows == 1 or length >= 1_000_000:
        return [length * 8, cub_temp(length, element_bytes, 8)]
    if rows < 128:
        return [numel * 8, numel * 8, numel * element_bytes, cub_temp(numel, element_bytes, 8)]
    return [numel * 8, cub_temp(numel, element_bytes, 8)]


def _sort(logits, emulate_kernel_workspaces: bool):
    """logits.sort(dim=-1); with the CUDA kernel's own allocations made visible when emulating them."""
    import torch

    if not emulate_kernel_workspaces:
        return logits.sort(dim=-1, descending=False)
    rows, length = logits.shape
    workspace = [torch.empty(n, dtype=torch.uint8, device=logits.device)
                 for n in cuda_sort_workspace_bytes(rows, length, logits.element_size())]
    # the outputs are allocated before the kernel takes its workspace; both are live at the peak
    result = logits.sort(dim=-1, descending=False)
    del workspace
    return result


def apply_top_k_top_p(logits, k, p, emulate_kernel_workspaces: bool = False):
    """mirrors vLLM 0.11 v1/sample/ops/topk_topp_sampler.py apply_top_k_top_p (k and p both given)."""
    import torch

    logits_sort, logits_idx = _sort(logits, emulate_kernel_workspaces)
    # Apply top-k.
    top_k_mask = logits_sort.size(1) - k.to(torch.long)
    top_k_mask = logits_sort.gather(1, top_k_mask.unsqueeze(dim=1))
    top_k_mask = logits_sort < top_k_mask
    logits_sort.masked_fill_(top_k_mask, -float("inf"))
    # Apply top-p.
    probs_sort = logits_sort.softmax(dim=-1)
    probs_sum = torch.cumsum(probs_sort, dim=-1, out=probs_sort)
    top_p_mask = probs_sum <= 1 - p.unsqueeze(dim=1)
    top_p_mask[:, -1] = False
    logits_sort.masked_fill_(top_p_mask, -float("inf"))
    # Re-sort the probabilities.
    logits = logits_sort.scatter(dim=-1, index=logits_idx, src=logits_sort)
    return logits


def random_sample(probs):
    """mirrors vLLM 0.11 v1/sample/ops/topk_topp_sampler.py random_sample (no per-request generators)."""
    import torch

    q = torch.empty_like(probs)
    q.exponential_()
    return probs.div_(q).argmax(dim=-1).view(-1)


def sampler_forward(logits, temperature, top_k, top_p, emulate_kernel_workspaces: bool = False):
    """mirrors vLLM 0.11 v1/sample/sampler.py Sampler.forward for the dummy metadata; returns int32 ids."""
    import torch

    # Use float32 for the logits.
    logits = logits.to(torch.float32)
    # Sampler.sample: all_random is False -> greedy first
    greedy_sampled = logits.argmax(dim=-1).view(-1)
    # apply_temperature (all_random False): avoid division by zero, in-place division
    temp = torch.where(temperature < _SAMPLING_EPS, 1.0, temperature)
    logits = logits.div_(temp.unsqueeze(dim=1))
    del temp
    # TopKTopPSampler.forward_native
    filtered = apply_top_k_top_p(logits, top_k, top_p, emulate_kernel_workspaces)
    probs = filtered.softmax(dim=-1, dtype=torch.float32)
    random_sampled = random_sample(probs)
    del probs, filtered
    sampled = torch.where(temperature < _SAMPLING_EPS, greedy_sampled, random_sampled, out=greedy_sampled)
    sampled = sampled.long()
    return sampled.to(torch.int32).unsqueeze(-1)


def emulates_kernel_workspaces(tensor) -> bool:
    """Kernel workspaces are emulated unless the tensors are real CUDA tensors (whose kernels make them)."""
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor) or tensor.device.type != "cuda"


def v2_dummy_sampler_run(sample_hidden_states, compute_logits: Callable[[Any], Any], positions, input_ids,
                         logits_indices) -> None:
    """mirrors vLLM 0.33 v1/worker/gpu/model_runner.py _dummy_sampler_run and gpu/sample/sampler.py Sampler
    on the dummy InputBatch (every slot greedy, no top-k/top-p, no logprobs): see the module docstring."""
    import torch

    logits = compute_logits(sample_hidden_states)
    num_reqs, vocab = logits.size(0), logits.size(1)
    # Sampler.__call__: pos = positions[logits_indices]; input_ids = input_ids[logits_indices]
    pos = positions[logits_indices]
    ids = input_ids[logits_indices]
    # apply_sampling_params: nothing needs logits processing -> the logits as they are
    # get_top_k_top_p -> (None, None): no FlashInfer, apply_top_k_top_p returns its input; gumbel_sample:
    blocks = -(-vocab // GUMBEL_BLOCK)
    local_argmax = logits.new_empty(num_reqs, blocks, dtype=torch.int64)
    local_max = logits.new_empty(num_reqs, blocks, dtype=torch.float32)
    local_argmax.zero_()   # what the Triton kernel writes (a block's argmax and max); not computed here
    local_max.zero_()
    max_block_idx = local_max.argmax(dim=-1, keepdim=True)
    sampled = local_argmax.gather(dim=-1, index=max_block_idx).view(-1)
    # get_num_sampled_and_rejected(input_batch.seq_lens.new_ones(num_reqs), ...)
    ones = torch.ones(num_reqs, dtype=torch.int32, device=logits.device)
    del logits, pos, ids, local_argmax, local_max, max_block_idx, sampled, ones


def dummy_sampler_run(last_hidden_states, compute_logits: Callable[[Any], Any], *,
                      vllm_version: str = "0.11", kernel_workspaces: Any = None) -> None:
    """mirrors vLLM 0.11 gpu_model_runner._dummy_sampler_run: rand hidden -> logits -> sampler; frees all.

    kernel_workspaces: emulate the CUDA sort's own allocations (see cuda_sort_workspace_bytes); None =
    automatic (on CPU and fake tensors, where the run stands for a CUDA one; not on a real CUDA device).
    """
    import torch

    if kernel_workspaces is None:
        kernel_workspaces = emulates_kernel_workspaces(last_hidden_states)

    hidden_states = torch.rand_like(last_hidden_states)
    logits = compute_logits(hidden_states)  # (hidden_states stays referenced until the end, as in vLLM)
    num_reqs, vocab = logits.size(0), logits.size(1)
    device = logits.device
    # dummy_tensors = lambda v: torch.full((num_reqs,), v, device=self.device)
    temperature = torch.full((num_reqs,), 0.5, device=device)
    top_p = torch.full((num_reqs,), 0.9, device=device)
    top_k = torch.full((num_reqs,), vocab - 1, device=device)
    frequency_penalties = torch.full((num_reqs,), 0.1, device=device)
    presence_penalties = torch.full((num_reqs,), 0.1, device=device)
    repetition_penalties = torch.full((num_reqs,), 0.1, device=device)
    output = sampler_forward(logits, temperature, top_k, top_p, kernel_workspaces)
    del output, logits, temperature, top_p, top_k, hidden_states
    del frequency_penalties, presence_penalties, repetition_penalties

