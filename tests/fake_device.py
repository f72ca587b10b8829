"""A fake CUDA device that behaves like torch's caching allocator, for testing the CUDA path without a GPU.

Model of the allocator (torch/csrc/c10/cuda/CUDACachingAllocator.cpp, simplified):
- a block is rounded up to 512 bytes; `memory_allocated` is the sum of live blocks;
- blocks live in segments reserved from the driver; a new segment is the request rounded up to 2 MiB
  (requests of 1 MiB or less get a 2 MiB small-pool segment), so `memory_reserved` moves in 2 MiB steps;
- freeing a block keeps its segment reserved (cached) until `empty_cache()` returns empty segments;
- when the driver has no room for a new segment, the allocator frees cached segments and retries, then
  raises out of memory;
- the peak counter is `allocated_bytes.all.peak`; `reset_peak_memory_stats()` sets it to the current
  allocated bytes;
- graph capture allocates from a private pool shared by every graph of one `capture_graphs` call; what a
  graph's captured blocks hold stays reserved while the graph lives.
The driver's view: free = total - context - other processes - non-torch (cuBLAS workspaces, NCCL, ...)
- reserved. Every public call is appended to `calls`, so tests can check what was measured in which order.
`ScriptedWorkload` is the model side for it: it allocates exactly what a test says, phase by phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
SEGMENT_BYTES = 2 * MIB
SMALL_REQUEST_BYTES = 1 * MIB


class FakeOutOfMemory(RuntimeError):
    """What torch.cuda.OutOfMemoryError would be."""


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass
class _Segment:
    size: int
    used: int = 0
    pool: str = "default"


@dataclass
class Block:
    """A live allocation (the fake's tensor)."""

    size: int
    segment: _Segment
    tag: str = ""
    freed: bool = False


@dataclass
class FakeCapturedGraphs:
    graphs: list[Any] = field(default_factory=list)
    keep_alive: list[Any] = field(default_factory=list)
    owner: Optional["FakeCudaDevice"] = None

    @property
    def count(self) -> int:
        return len(self.graphs)

    def release(self) -> None:
        if self.owner is not None:
            self.owner._release_graph_pool()
        self.graphs.clear()
        self.keep_alive.clear()


class FakeCudaDevice:
    kind = "cuda"
    supports_cuda_graphs = True
    measures_driver_memory = True

    def __init__(self, total_bytes: int = 80 * GIB, *, context_bytes: int = 500 * MIB,
                 cublas_workspace_bytes: int = 0, other_processes_bytes: int = 0, index: int = 0,
                 device_name: str = "Fake H100 80GB HBM3") -> None:
        self.total_bytes = total_bytes
        self.context_bytes = context_bytes
        self.cublas_workspace_bytes = cublas_workspace_bytes
        self.other_processes_bytes = other_processes_bytes
        self.index = index
        self.torch_device = f"cuda:{index}"
        self.device_name = device_name
        self.initialised = False
        self.non_torch_bytes = 0         # driver-side allocations outside the caching allocator
        self.segments: list[_Segment] = []
        self.allocated = 0
        self.peak = 0
        self.calls: list[str] = []
        self._capture_pool: Optional[str] = None
        self._graph_pools = 0
        self.fail_on_tag: Optional[str] = None  # raise out of memory when a block with this tag is requested

    # ---- the driver's view ----
    @property
    def reserved(self) -> int:
        return sum(segment.size for segment in self.segments)

    @property
    def free(self) -> int:
        context = self.context_bytes if self.initialised else 0
        return self.total_bytes - context - self.other_processes_bytes - self.non_torch_bytes - self.reserved

    # ---- the Device interface ----
    def name(self) -> str:
        return self.device_name

    def init(self) -> None:
        self.calls.append("init")
        if not self.initialised:
            self.initialised = True

    def mem_get_info(self) -> tuple[int, int]:
        self.calls.append("mem_get_info")
        return self.free, self.total_bytes

    def memory_allocated(self) -> int:
        self.calls.append("memory_allocated")
        return self.allocated

    def memory_reserved(self) -> int:
        self.calls.append("memory_reserved")
        return self.reserved

    def max_memory_allocated(self) -> int:
        self.calls.append("max_memory_allocated")
        return self.peak

    def reset_peak_memory_stats(self) -> None:
        self.calls.append("reset_peak_memory_stats")
        self.peak = self.allocated

    def synchronize(self) -> None:
        self.calls.append("synchronize")

    def empty_cache(self) -> None:
        self.calls.append("empty_cache")
        self._drop_empty_segments()

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, FakeOutOfMemory)

    def capture_graphs(self, make_step: Callable[[int], Callable[[], Any]], sizes: Sequence[int]) -> FakeCapturedGraphs:
        self.calls.append("capture_graphs:" + ",".join(str(s) for s in sorted(set(sizes), reverse=True)))
        self._graph_pools += 1
        pool = f"graph{self._graph_pools}"
        captured = FakeCapturedGraphs(owner=self)
        for size in sorted(set(sizes), reverse=True):
            step = make_step(size)
            warm = step()                 # warm-up, outside the pool; its output is dropped
            if isinstance(warm, Block):
                self.release(warm)
            self._capture_pool = pool
            try:
                output = step()           # captured: allocations go to the shared graph pool
            finally:
                self._capture_pool = None
            captured.graphs.append(size)
            captured.keep_alive.append(output)
        self._current_graph_pool = pool
        return captured

    # ---- what workloads (scripted in tests) do ----
    def allocate(self, size: int, tag: str = "") -> Block:
        """Allocate a block as a tensor of `size` bytes would; may raise FakeOutOfMemory."""
        if self.fail_on_tag is not None and tag == self.fail_on_tag:
            raise FakeOutOfMemory(f"CUDA out of memory. Tried to allocate {size} bytes ({tag})")
        block_size = round_up(max(size, 1), 512)
        pool = self._capture_pool or "default"
        segment = next((s for s in self.segments if s.pool == pool and s.size - s.used >= block_size), None)
        if segment is None:
            segment_size = SEGMENT_BYTES if block_size <= SMALL_REQUEST_BYTES else round_up(block_size, SEGMENT_BYTES)
            if segment_size > self.free:
                self._drop_empty_segments()      # the allocator frees cached blocks and retries
            if segment_size > self.free:
                raise FakeOutOfMemory(f"CUDA out of memory. Tried to allocate {segment_size} bytes ({tag})")
            segment = _Segment(segment_size, pool=pool)
            self.segments.append(segment)
        segment.used += block_size
        self.allocated += block_size
        self.peak = max(self.peak, self.allocated)
        return Block(block_size, segment, tag)

    def release(self, block: Block) -> None:
        """Free a block; its segment stays reserved until empty_cache()."""
        if block.freed:
            return
        block.freed = True
        block.segment.used -= block.size
        self.allocated -= block.size

    def matmul(self) -> None:
        """A matmul: the first one allocates torch's cuBLAS workspace through the caching allocator (kept)."""
        if self.cublas_workspace_bytes and getattr(self, "_cublas_workspace", None) is None:
            self._cublas_workspace = self.allocate(self.cublas_workspace_bytes, "cublas workspace")

    def release_workspaces(self) -> None:
        self.calls.append("release_workspaces")
        workspace = getattr(self, "_cublas_workspace", None)
        if workspace is not None:
            self.release(workspace)
            self._cublas_workspace = None

    def driver_allocate(self, size: int) -> None:
        """Memory taken outside the caching allocator (NCCL buffers, cuBLAS workspaces, kernels' modules)."""
        self.non_torch_bytes += size

    def _drop_empty_segments(self) -> None:
        live_graph_pool = getattr(self, "_current_graph_pool", None)
        self.segments = [s for s in self.segments if s.used > 0 or s.pool == live_graph_pool]

    def _release_graph_pool(self) -> None:
        pool = getattr(self, "_current_graph_pool", None)
        self._current_graph_pool = None
        # blocks still held by graph outputs are freed with the graphs
        for segment in self.segments:
            if segment.pool == pool:
                self.allocated -= segment.used
                segment.used = 0
        self._drop_empty_segments()


class ScriptedWorkload:
    """Allocates on the fake exactly what a test says, phase by phase, and logs what it was asked."""

    def __init__(self, fake: FakeCudaDevice, *, weights=(GIB, 100 * MIB, 1000), run=(("a", 200 * MIB),
                 ("b", 300 * MIB), ("-a",), ("c", 150 * MIB), ("-b",), ("-c",)), run_driver_bytes=64 * MIB,
                 static_bytes=40 * MIB, step_intermediate=3 * MIB, step_output=1 * MIB, graph_fails=False,
                 eager_peak=None, capture_only=False) -> None:
        self.fake = fake
        self.weights, self.run, self.run_driver_bytes = weights, run, run_driver_bytes
        self.static_bytes, self.step_intermediate, self.step_output = static_bytes, step_intermediate, step_output
        self.graph_fails, self.eager_peak = graph_fails, eager_peak
        self.capture_only = capture_only   # the eager warm-up allocates nothing (all its memory is cached)
        self.held: list = []
        self.log: list[str] = []

    def load(self):
        self.fake.calls.append("workload.load")
        self.held += [self.fake.allocate(size, "weights") for size in self.weights]
        return None

    def prepare_dummy_run(self, num_tokens, num_seqs):
        self.fake.calls.append("workload.prepare_dummy_run")
        self.held.append(self.fake.allocate(num_tokens * 12, "inputs"))   # int32 ids + int64 positions

    def dummy_run(self, num_tokens, num_seqs):
        self.fake.calls.append(f"workload.dummy_run:{num_tokens}:{num_seqs}")
        self.fake.matmul()
        live = {}
        for step in self.run:
            if step[0].startswith("-"):
                self.fake.release(live.pop(step[0][1:]))
            else:
                live[step[0]] = self.fake.allocate(step[1], "activation")
        self.fake.driver_allocate(self.run_driver_bytes)   # e.g. a cuBLAS workspace for a new shape

    def prepare_graph_capture(self, sizes):
        self.fake.calls.append("workload.prepare_graph_capture")
        if self.graph_fails:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.held.append(self.fake.allocate(self.static_bytes, "static"))

        def make_step(size):
            def step():
                if self.capture_only and self.fake._capture_pool is None:
                    return None
                intermediate = self.fake.allocate(size * self.step_intermediate, "graph")
                output = self.fake.allocate(size * self.step_output, "graph") if self.step_output else None
                self.fake.release(intermediate)
                return output
            return step
        return make_step, self.static_bytes

    def eager_decode_peak(self, device, size):
        self.fake.calls.append(f"workload.eager_decode_peak:{size}")
        return self.eager_peak

    def release(self):
        self.fake.calls.append("workload.release")
        for block in self.held:
            self.fake.release(block)
        self.held.clear()
