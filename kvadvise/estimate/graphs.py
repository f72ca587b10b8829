"""CUDA-graph and non-torch memory without a GPU: a traced decode step, and documented defaults.

CUDA graphs (method): vLLM captures the decode step for every capture size, largest first, into ONE
shared memory pool, so the pool is about the peak of the largest step; we trace that step (the runner's
prepare_decode_capture, the same decoder on `largest` sequences of one token) with the LiveBytesTracker,
under FakeTensorMode (`estimate`) or on the host's real model (`profile --device cpu`: the same function). Each captured graph also keeps memory of its own outside what torch's tensors show
(graph exec objects, per-graph workspaces): GRAPH_BYTES_PER_SIZE per capture size, a rough figure from
a public vLLM V1 log (see its comment). Both are estimates and are marked so.

Non-torch memory (CUDA context growth after vLLM's start-up snapshot, cuBLAS/cuDNN workspaces, NCCL /
custom all-reduce buffers with TP > 1): a default by GPU family from public vLLM logs ("non_torch_memory
takes X GiB", ../shared/vllm-cases/cases.json), overridable with --non-torch-memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

GIB = 1 << 30
MIB = 1 << 20


def _gib(hundredths: int) -> int:
    """A 2-decimal GiB figure from a log, as bytes (int(x / 100 * 2**30))."""
    return hundredths * GIB // 100


# Non-torch memory at TP 1 by family, from vLLM logs' "non_torch_memory takes X GiB" (cases.json ids):
NON_TORCH_TP1_BYTES = {
    "ampere": _gib(9),      # case01: A100-SXM4-80GB, vLLM 0.8.2, 0.09 GiB
    "ada": _gib(8),         # case05: compute capability 8.9, 47.5 GiB card, vLLM 0.10.0, 0.08 GiB
    "hopper": _gib(16),     # case12: H100-80G, vLLM main 2025-01, 0.16 GiB
    "blackwell": _gib(16),  # ASSUMED as hopper (no public log found)
    "cdna3": _gib(16),      # ASSUMED as hopper (no public log found)
}
DEFAULT_NON_TORCH_TP1_BYTES = _gib(16)   # unknown card (--gpu-memory): the largest of the above
# Added with TP > 1 (NCCL and custom all-reduce buffers):
#   datacenter cards: case04 H200 TP 2 logs 1.38 GiB, minus hopper's 0.16 at TP 1 = 1.22 GiB;
#   consumer cards:   case20 2x RTX 4090 TP 2 logs 0.25 GiB, minus ada's 0.08 = 0.17 GiB.
NON_TORCH_TP_EXTRA_DATACENTER_BYTES = _gib(138) - _gib(16)
NON_TORCH_TP_EXTRA_CONSUMER_BYTES = _gib(25) - _gib(8)
CONSUMER_KEYS = ("RTX-3090", "RTX-4090", "RTX-5070-Ti", "RTX-5090", "RTX-PRO-6000", "A10", "A10G", "L4")

# Per captured size, beyond the shared pool. A public vLLM V1 log of an 8B dense model ("Model loading took
# 14.99 GiB"; "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 51/51", "(decode, FULL): 35/35",
# "Graph capturing finished in 5 secs, took 0.55 GiB"; find_string id 62837958212) minus the pool we trace
# for Llama-3.1-8B at 512 sequences (0.06 GiB) leaves 0.49 GiB over 51 sizes: 9.9 MiB a size, rounded up.
# Other public V1 logs: 0.55-0.63 GiB for dense 0.6B-8B models at the default sizes; 0.09-3.5 GiB overall.
GRAPH_BYTES_PER_SIZE = 10 * MIB


@dataclass(frozen=True)
class NonTorchDefault:
    bytes: int
    source: str


def default_non_torch(family: Optional[str], catalog_key: Optional[str], tensor_parallel_size: int) -> NonTorchDefault:
    """The documented non-torch default for a card family and TP size."""
    base = NON_TORCH_TP1_BYTES.get(family or "", DEFAULT_NON_TORCH_TP1_BYTES)
    source = f"default for {family or 'an unknown card'} (public vLLM logs)"
    if tensor_parallel_size > 1:
        consumer = catalog_key in CONSUMER_KEYS
        extra = NON_TORCH_TP_EXTRA_CONSUMER_BYTES if consumer else NON_TORCH_TP_EXTRA_DATACENTER_BYTES
        base += extra
        source += f" + TP collective buffers ({'consumer' if consumer else 'datacenter'} cards)"
    return NonTorchDefault(base, source)


@dataclass(frozen=True)
class GraphEstimate:
    cuda_graph_bytes: int
    pool_bytes: int
    per_size_bytes: int
    num_sizes: int
    largest_size: int


def trace_decode_pool(model: Any, spec: Any, largest: int, *, shape: Any, fake_mode: Any = None) -> int:
    """Peak live bytes of one decode step of `largest` sequences (the shared pool), static inputs excluded.

    fake_mode None: the model's tensors are real host tensors (the CPU profile); the step really runs.
    """
    import contextlib

    from kvadvise.profile.build import model_tensors
    from kvadvise.profile.runner import prepare_decode_capture
    from kvadvise.profile.tracker import LiveBytesTracker

    tracker = LiveBytesTracker()
    with fake_mode if fake_mode is not None else contextlib.nullcontext():
        tracker.adopt(model_tensors(model))
        capture = prepare_decode_capture(model, spec, [largest], device="cpu", shape=shape)
        with tracker:
            before = tracker.reset_peak()
            output = capture.make_step(largest)()
            peak = tracker.peak_bytes
            del output
    return peak - before


def estimate_graphs(model: Any, spec: Any, sizes: Sequence[int], *, shape: Any,
                    fake_mode: Any = None) -> GraphEstimate:
    """The shared pool (the largest decode step, traced) + GRAPH_BYTES_PER_SIZE per capture size."""
    largest = max(sizes)
    pool = trace_decode_pool(model, spec, largest, shape=shape, fake_mode=fake_mode)
    per_size = GRAPH_BYTES_PER_SIZE * len(sizes)
    return GraphEstimate(pool + per_size, pool, GRAPH_BYTES_PER_SIZE, len(sizes), largest)


GRAPH_ESTIMATE_WARNING = ("CUDA-graph memory is estimated (decode-step pool + 10 MiB per capture size, from a "
                          "public vLLM log); measured captures vary by up to 3x with the vLLM version and backend: "
                          "`kvadvise profile` on the card measures it")


def graph_detail(graphs: GraphEstimate) -> dict:
    """The JSON description of a graph estimate (estimate's `estimate.cuda_graphs`, profile's phase detail)."""
    return {"method": "decode-step pool at the largest capture size + a per-size figure",
            "pool_bytes": graphs.pool_bytes, "bytes_per_size": graphs.per_size_bytes,
            "num_sizes": graphs.num_sizes, "largest_size": graphs.largest_size}
