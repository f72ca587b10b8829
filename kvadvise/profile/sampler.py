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
"""

from __future__ import annotations

from typing import Any, Callable

MIRRORED_VERSIONS = ("0.10.2", "0.11", "0.12")

# mirrors vLLM 0.11 v1/sample/sampler.py _SAMPLING_EPS
_SAMPLING_EPS = 1e-5
# bytes per row and vocabulary entry at this sampler's traced peak, beyond the logits in the model dtype
# (which _dummy_sampler_run keeps referenced): the float32 copy, the top-k/top-p sort's values (float32)
# and indices (int64), the CUDA sort's workspace (8 + 4 + 8): 4 + 4 + 8 + 20 = 36 (the docstring's 38 - 2)
SAMPLER_BYTES_PER_ENTRY = 36


def sampler_rule(vllm_version: str) -> tuple[str, bool]:
    """(the sampler rule applied, whether it is the version's own). Unknown versions get 0.11's."""
    key = tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in vllm_version.split(".")[:2])
    if key in ((0, 10), (0, 11), (0, 12)):
        return "0.11", True
    return "0.11", False


def sampler_warning(vllm_version: str, rows: int, vocab_size: int) -> str | None:
    """The warning for a vLLM version whose own sampler we do not mirror (None when we do), with the size
    of what is at stake: the mirrored sampler's share of the peak (bf16 logits + SAMPLER_BYTES_PER_ENTRY)."""
    rule, own = sampler_rule(vllm_version)
    if own:
        return None
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

