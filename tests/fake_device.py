"""A fake CUDA device that behaves like torch's caching allocator, for testing the CUDA path without a GPU.

Model of the allocator (torch/csrc/c10/cuda/CUDACachingAllocator.cpp, simplified):
- a block is rounded up to 512 bytes; `memory_allocated` is the sum of live blocks;
- blocks live in segments reserved from the driver (get_allocation_size): a request of 1 MiB or less goes to
  the small pool, whose segments are 2 MiB; a larger one to the large pool, where a request under 10 MiB
  gets a 20 MiB segment and a larger one its size rounded up to 2 MiB; the two pools never share segments
  (a block fits a segment when the segment's free bytes suffice: fragmentation is not modelled);
- freeing a block keeps its segment reserved (cached) until `empty_cache()` returns empty segments;
- when the driver has no room for a new segment, the allocator frees cached segments and retries, then
  raises out of memory;
- the peak counter is `allocated_bytes.all.peak`; `reset_peak_memory_stats()` sets it to the current
  allocated bytes;
- graph capture allocates from a private pool shared by every graph of one `capture_graphs` call; what a
  graph's captured blocks hold stays reserved while the graph lives;
- a freed block is cached for the stream it was allocated on: only allocations on that stream reuse it;
- torch keeps one cuBLAS workspace per (handle, stream), allocated through the allocator at the first matmul
  on that stream and held until torch._C._cuda_clearCublasWorkspaces().
The driver's view: free = total - context - other processes - non-torch (cuBLAS workspaces, NCCL, ...)
- reserved. Every public call is appended to `calls`, so tests can check what was measured in which order.
`ScriptedWorkload` is the model side for it: it allocates exactly what a test says, phase by phase.

`FakeTorch(fake)` is a stand-in for the `torch` module over the same allocator, for running the REAL
kvadvise.profile.device.CudaDevice without a GPU: torch.cuda's documented names (mem_get_info, memory_stats,
Stream, stream, current_stream, CUDAGraph, graph, graph_pool_handle, ...) with torch's behaviour where it
matters for measuring: torch.cuda.graph synchronises and empties the cache on entry, captures on its own
side stream unless given one, refuses the default stream; blocks behave as tensors (freed when the last
reference goes). `FakeNvml` is a stand-in for the pynvml module (nvidia-ml-py), with its quirks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
SEGMENT_BYTES = 2 * MIB           # kSmallBuffer, and kRoundLarge for requests of 10 MiB or more
SMALL_REQUEST_BYTES = 1 * MIB     # kSmallSize
LARGE_BUFFER_BYTES = 20 * MIB     # kLargeBuffer, the segment of a request under kMinLargeAlloc
MIN_LARGE_ALLOC_BYTES = 10 * MIB  # kMinLargeAlloc


def segment_bytes(block_size: int) -> int:
    """The segment torch's caching allocator reserves for a block it cannot place (get_allocation_size)."""
    if block_size <= SMALL_REQUEST_BYTES:
        return SEGMENT_BYTES
    if block_size < MIN_LARGE_ALLOC_BYTES:
        return LARGE_BUFFER_BYTES
    return round_up(block_size, SEGMENT_BYTES)


class FakeOutOfMemory(RuntimeError):
    """What torch.cuda.OutOfMemoryError would be."""


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass
class _Segment:
    size: int
    used: int = 0
    pool: str = "default"
    stream: int = 0
    small: bool = False


@dataclass(eq=False)
class Block:
    """A live allocation (the fake's tensor). With `owner` set (FakeTorch), freed when the last reference goes."""

    size: int
    segment: _Segment
    tag: str = ""
    freed: bool = False
    owner: Any = None

    def __del__(self) -> None:
        if self.owner is not None and not self.freed:
            self.owner.release(self)


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
        self._capture_stream: Optional[int] = None
        self._graph_pools = 0
        self.fail_on_tag: Optional[str] = None  # raise out of memory when a block with this tag is requested
        self.current_stream = 0              # 0: the default stream
        self.pool_users: dict[str, int] = {}  # private pool -> graphs (or a capture) using it
        self.workspaces: dict[int, Block] = {}   # torch's cuBLAS workspace per stream
        self.cublas_handle = False           # created at the first matmul; creating it cannot be captured
        self.tensor_semantics = False        # FakeTorch: blocks are freed when unreferenced

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
        """What CudaDevice.capture_graphs does on torch: per size, largest first, a warm-up on one side stream,
        then torch.cuda.graph's entry (synchronize + empty_cache: the warm-up's cached blocks go back), then the
        capture on that stream into the one shared pool; the captured output is dropped (back to the pool)."""
        self.calls.append("capture_graphs:" + ",".join(str(s) for s in sorted(set(sizes), reverse=True)))
        self._graph_pools += 1
        pool = f"graph{self._graph_pools}"
        side_stream = 1000 + self._graph_pools
        self._current_graph_pool = pool             # the pool lives from its first capture to release()
        captured = FakeCapturedGraphs(owner=self)
        for size in sorted(set(sizes), reverse=True):
            step = make_step(size)
            self.current_stream = side_stream
            try:
                warm = step()             # warm-up, outside the pool; its output is dropped
            finally:
                self.current_stream = 0
            if isinstance(warm, Block):
                self.release(warm)
            self._drop_empty_segments()   # torch.cuda.graph.__enter__: synchronize(), empty_cache()
            self.current_stream, self._capture_pool, self._capture_stream = side_stream, pool, side_stream
            try:
                output = step()           # captured: allocations go to the shared graph pool
            finally:
                self.current_stream, self._capture_pool, self._capture_stream = 0, None, None
            captured.graphs.append(size)
            if isinstance(output, Block):   # not kept, as CudaDevice (vLLM keeps weak references only)
                self.release(output)
        return captured

    # ---- what workloads (scripted in tests) do ----
    def allocate(self, size: int, tag: str = "") -> Block:
        """Allocate a block as a tensor of `size` bytes would; may raise FakeOutOfMemory."""
        if self.fail_on_tag is not None and tag == self.fail_on_tag:
            raise FakeOutOfMemory(f"CUDA out of memory. Tried to allocate {size} bytes ({tag})")
        block_size = round_up(max(size, 1), 512)
        capturing = self._capture_pool is not None and self.current_stream == self._capture_stream
        pool = self._capture_pool if capturing else "default"
        stream = self.current_stream
        small = block_size <= SMALL_REQUEST_BYTES
        segment = next((s for s in self.segments if s.pool == pool and s.stream == stream and s.small == small
                        and s.size - s.used >= block_size), None)
        if segment is None:
            segment_size = segment_bytes(block_size)
            if segment_size > self.free:
                self._drop_empty_segments()      # the allocator frees cached blocks and retries
            if segment_size > self.free:
                raise FakeOutOfMemory(f"CUDA out of memory. Tried to allocate {segment_size} bytes ({tag})")
            segment = _Segment(segment_size, pool=pool, stream=stream, small=small)
            self.segments.append(segment)
        segment.used += block_size
        self.allocated += block_size
        self.peak = max(self.peak, self.allocated)
        return Block(block_size, segment, tag, owner=self if self.tensor_semantics else None)

    def release(self, block: Block) -> None:
        """Free a block; its segment stays reserved until empty_cache()."""
        if block.freed:
            return
        block.freed = True
        block.segment.used -= block.size
        self.allocated -= block.size

    def matmul(self) -> None:
        """A matmul: creates the cuBLAS handle once (cudaMalloc inside: not capturable, hence the warm-up before
        capture), and the first matmul on each stream allocates torch's cuBLAS workspace for that stream through
        the caching allocator (kept until release_workspaces)."""
        if not self.cublas_handle:
            if self._capture_pool is not None:
                raise RuntimeError("CUBLAS_STATUS_NOT_INITIALIZED: operation not permitted when stream is capturing")
            self.cublas_handle = True
        if self.cublas_workspace_bytes and self.current_stream not in self.workspaces:
            self.workspaces[self.current_stream] = self.allocate(self.cublas_workspace_bytes, "cublas workspace")

    def release_workspaces(self) -> None:
        self.calls.append("release_workspaces")
        for workspace in self.workspaces.values():
            self.release(workspace)
        self.workspaces.clear()

    def driver_allocate(self, size: int) -> None:
        """Memory taken outside the caching allocator (NCCL buffers, cuBLAS workspaces, kernels' modules)."""
        self.non_torch_bytes += size

    def _drop_empty_segments(self) -> None:
        live_pools = {getattr(self, "_current_graph_pool", None), self._capture_pool}
        live_pools |= {pool for pool, users in self.pool_users.items() if users > 0}
        self.segments = [s for s in self.segments if s.used > 0 or s.pool in live_pools]

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
                 eager_peak=None, capture_only=False, step_matmul=False) -> None:
        self.fake = fake
        self.weights, self.run, self.run_driver_bytes = weights, run, run_driver_bytes
        self.static_bytes, self.step_intermediate, self.step_output = static_bytes, step_intermediate, step_output
        self.graph_fails, self.eager_peak = graph_fails, eager_peak
        self.capture_only = capture_only   # the eager warm-up allocates nothing (all its memory is cached)
        self.step_matmul = step_matmul     # the decode step runs a matmul (cuBLAS workspace per stream)
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
                if self.step_matmul:
                    self.fake.matmul()
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


# ------------------------------------------------------------------ torch, faked -------------------------

class FakeStream:
    """torch.cuda.Stream: one of a fixed pool (torch hands out 32 streams per priority, round robin)."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id

    def wait_stream(self, other: "FakeStream") -> None:
        assert isinstance(other, FakeStream)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeStream) and other.stream_id == self.stream_id

    def __hash__(self) -> int:
        return hash(self.stream_id)


class FakeCUuuid:
    """torch's _CUuuid (torch >= 2.4): prints as the bare 8-4-4-4-12 hex form, no "GPU-" prefix."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


STREAMS_PER_POOL = 32


class FakeTorchCuda:
    """The torch.cuda names CudaDevice uses, over a FakeCudaDevice's allocator (one device)."""

    OutOfMemoryError = FakeOutOfMemory

    def __init__(self, fake: FakeCudaDevice, uuid: str = "ffc79498-8ff3-c2dc-3b0d-fafd804516ae",
                 compute_capability: tuple[int, int] = (9, 0)) -> None:
        self.fake = fake
        self.uuid = uuid
        self.compute_capability = compute_capability
        self._next_stream = 0
        self._pools = 0
        self.streams_made = 0
        fake.tensor_semantics = True
        torch_cuda = self

        class CUDAGraph:
            """torch.cuda.CUDAGraph: capture_begin / capture_end / replay / reset / pool."""

            def __init__(self) -> None:
                self._pool: Optional[str] = None
                self.captured = False

            def capture_begin(self, pool: Any = None, capture_error_mode: str = "global") -> None:
                if fake.current_stream == 0:
                    raise RuntimeError("CUDA graphs must be captured on a non-default stream. (However, after "
                                       "capture, it's ok to replay them on the default stream.)")
                if fake._capture_pool is not None:
                    raise RuntimeError("another capture is underway")
                self._pool = torch_cuda._pool_name(pool)
                fake.pool_users[self._pool] = fake.pool_users.get(self._pool, 0) + 1
                fake._capture_pool, fake._capture_stream = self._pool, fake.current_stream

            def capture_end(self) -> None:
                fake._capture_pool, fake._capture_stream = None, None
                self.captured = True

            def replay(self) -> None:
                assert self.captured

            def pool(self) -> Any:
                return ("pool", self._pool)

            def reset(self) -> None:
                if self._pool is not None:
                    fake.pool_users[self._pool] -= 1
                    self._pool = None
                self.captured = False

            def __del__(self) -> None:
                self.reset()

        class graph:
            """torch.cuda.graph: synchronize + empty_cache on entry, its own side stream unless given one."""

            default_capture_stream: Optional[FakeStream] = None

            def __init__(self, cuda_graph: Any, pool: Any = None, stream: Optional[FakeStream] = None,
                         capture_error_mode: str = "global") -> None:
                if stream is None and self.__class__.default_capture_stream is None:
                    self.__class__.default_capture_stream = torch_cuda.Stream()
                self.pool = () if pool is None else (pool,)
                self.capture_stream = stream if stream is not None else self.__class__.default_capture_stream
                self.stream_ctx = torch_cuda.stream(self.capture_stream)
                self.cuda_graph = cuda_graph
                self.capture_error_mode = capture_error_mode

            def __enter__(self) -> None:
                torch_cuda.synchronize()
                torch_cuda.empty_cache()
                self.stream_ctx.__enter__()
                self.cuda_graph.capture_begin(*self.pool, capture_error_mode=self.capture_error_mode)

            def __exit__(self, *args: object) -> None:
                self.cuda_graph.capture_end()
                self.stream_ctx.__exit__(*args)

        self.CUDAGraph = CUDAGraph
        self.graph = graph

    # ---- device and context ----
    def _check(self, device: Any) -> None:
        if device is not None and device != self.fake.index and device != f"cuda:{self.fake.index}":
            raise ValueError(f"unknown device {device!r}")

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def set_device(self, device: Any) -> None:
        self._check(device)

    def init(self) -> None:
        self.fake.init()

    def get_device_name(self, device: Any = None) -> str:
        self._check(device)
        return self.fake.device_name

    def get_device_properties(self, device: Any = None) -> Any:
        self._check(device)
        major, minor = self.compute_capability
        return SimpleNamespace(name=self.fake.device_name, total_memory=self.fake.total_bytes, major=major,
                               minor=minor, uuid=FakeCUuuid(self.uuid))

    # ---- memory ----
    def mem_get_info(self, device: Any = None) -> tuple[int, int]:
        self._check(device)
        return self.fake.mem_get_info()

    def memory_stats(self, device: Any = None) -> dict[str, int]:
        self._check(device)
        return {"allocated_bytes.all.current": self.fake.allocated, "allocated_bytes.all.peak": self.fake.peak,
                "reserved_bytes.all.current": self.fake.reserved}

    def memory_allocated(self, device: Any = None) -> int:
        self.fake.calls.append("memory_allocated")
        return self.memory_stats(device)["allocated_bytes.all.current"]

    def memory_reserved(self, device: Any = None) -> int:
        self.fake.calls.append("memory_reserved")
        return self.memory_stats(device)["reserved_bytes.all.current"]

    def max_memory_allocated(self, device: Any = None) -> int:
        self.fake.calls.append("max_memory_allocated")
        return self.memory_stats(device).get("allocated_bytes.all.peak", 0)

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self._check(device)
        self.fake.reset_peak_memory_stats()

    def synchronize(self, device: Any = None) -> None:
        self._check(device)
        self.fake.synchronize()

    def empty_cache(self) -> None:
        self.fake.empty_cache()

    # ---- streams and graphs ----
    def Stream(self, device: Any = None, priority: int = 0) -> FakeStream:
        self._check(device)
        self.streams_made += 1
        self._next_stream = self._next_stream % STREAMS_PER_POOL + 1
        return FakeStream(self._next_stream)

    def current_stream(self, device: Any = None) -> FakeStream:
        self._check(device)
        return FakeStream(self.fake.current_stream)

    @contextlib.contextmanager
    def stream(self, stream: Optional[FakeStream]):
        if stream is None:
            yield
            return
        saved = self.fake.current_stream
        self.fake.current_stream = stream.stream_id
        try:
            yield
        finally:
            self.fake.current_stream = saved

    def graph_pool_handle(self) -> Any:
        self._pools += 1
        return ("pool", f"private{self._pools}")

    def _pool_name(self, pool: Any) -> str:
        if pool is None:
            self._pools += 1
            return f"private{self._pools}"
        return pool[1]


class FakeTorch:
    """A stand-in for the `torch` module as CudaDevice uses it: .cuda, ._C, .OutOfMemoryError."""

    def __init__(self, fake: FakeCudaDevice, **cuda_options: Any) -> None:
        self.cuda = FakeTorchCuda(fake, **cuda_options)
        self._C = SimpleNamespace(_cuda_clearCublasWorkspaces=fake.release_workspaces)
        self.OutOfMemoryError = FakeOutOfMemory


# ------------------------------------------------------------------ pynvml, faked -------------------------

class NVMLError(Exception):
    """pynvml.NVMLError (its subclasses per code: NVMLError_NotSupported, NVMLError_NotFound, ...)."""


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_NotFound(NVMLError):
    pass


class NVMLError_FunctionNotFound(NVMLError):
    pass


class FakeNvml:
    """The pynvml module (nvidia-ml-py) for one device, with the quirks kvadvise must survive:
    - nvmlDeviceGetHandleByUUID takes the ASCII UUID as bytes ("GPU-..." or, on a MIG instance, "MIG-...");
      bindings before 11.515 pass a str to ctypes.c_char_p and raise TypeError, so this fake accepts bytes only;
    - strings come back as bytes from older bindings (str from newer ones);
    - nvmlDeviceGetMigMode raises NVMLError_NotSupported on cards without MIG (consumer cards);
    - usedGpuMemory is None when NVML cannot say (containers, WDDM); PIDs are host PIDs inside containers;
    - the unversioned nvmlDeviceGetComputeRunningProcesses (_v3 in nvidia-ml-py >= 11.510) is missing from
      drivers older than R510: NVMLError_FunctionNotFound, while _v2 works;
    - nvmlInit fails without the driver library; every nvmlInit must be matched by one nvmlShutdown.
    """

    def __init__(self, *, free: int = 70 * GIB, total: int = 80 * GIB, processes: Sequence[Any] = (),
                 uuid: str = "GPU-ffc79498-8ff3-c2dc-3b0d-fafd804516ae", mig: Optional[int] = None,
                 fail_init: bool = False, old_driver: bool = False, name: bytes = b"NVIDIA H100 80GB HBM3") -> None:
        self.free, self.total, self.processes = free, total, list(processes)
        self.uuid, self.mig, self.fail_init, self.old_driver, self.name = uuid, mig, fail_init, old_driver, name
        self.initialised = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise NVMLError("NVML Shared Library Not Found")
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        if self.initialised <= 0:
            raise NVMLError("Uninitialized")
        self.initialised -= 1

    def _require_init(self) -> None:
        if self.initialised <= 0:
            raise NVMLError("Uninitialized")

    def nvmlDeviceGetHandleByUUID(self, uuid: bytes) -> str:
        self._require_init()
        if not isinstance(uuid, bytes):
            raise TypeError("bytes or integer address expected instead of str instance")
        if uuid.decode() != self.uuid:
            raise NVMLError_NotFound("Not Found")
        return "handle"

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        self._require_init()
        if index != 0:
            raise NVMLError("Invalid Argument")
        return "handle"

    def nvmlDeviceGetName(self, handle: str) -> bytes:
        return self.name

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"470.82.01" if self.old_driver else b"550.54.15"

    def nvmlDeviceGetMigMode(self, handle: str) -> list[int]:
        if self.mig is None:
            raise NVMLError_NotSupported("Not Supported")
        return [self.mig, self.mig]

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        return SimpleNamespace(total=self.total, free=self.free, used=self.total - self.free)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list:
        if self.old_driver:
            raise NVMLError_FunctionNotFound("Function Not Found")
        return list(self.processes)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: str) -> list:
        return list(self.processes)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: str) -> list:
        if self.old_driver:
            raise NVMLError_FunctionNotFound("Function Not Found")
        return []

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, handle: str) -> list:
        return []
