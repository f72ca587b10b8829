"""The one small interface the profiler measures through, over torch's documented `torch.cuda` API.

Knows: how to initialise a device, read its memory counters (the caching allocator's allocated, reserved
and peak bytes; the driver's free and total bytes), reset the peak, synchronise, release cached blocks,
and capture CUDA graphs into one shared pool. Does not know: what a model is, what a phase is, or any
formatting (that is session.py and report/).

Three implementations: `CudaDevice` (the real one: thin, torch imported inside), `CpuDevice` (the host:
peaks from the runner's live-storage tracker, total/free from the target card the user names) and, in
tests, `tests/fake_device.FakeCudaDevice` (a scripted caching allocator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence, runtime_checkable

# A step factory for graph capture: given a batch size, allocate that size's static inputs and return
# the callable to capture (one decode step). Called largest size first.
StepFactory = Callable[[int], Callable[[], Any]]


@runtime_checkable
class Device(Protocol):
    """What the profile session needs from a device; every size is an int of bytes."""

    kind: str                   # "cuda" or "cpu"
    index: Optional[int]        # CUDA ordinal; None on CPU
    torch_device: str           # what torch calls it: "cuda:0", "cpu"
    supports_cuda_graphs: bool
    measures_driver_memory: bool  # mem_get_info reflects real allocations (non-torch memory is measurable)

    def name(self) -> Optional[str]: ...
    def init(self) -> None: ...
    def mem_get_info(self) -> tuple[int, int]: ...          # (free, total), as cudaMemGetInfo
    def memory_allocated(self) -> int: ...
    def memory_reserved(self) -> int: ...
    def max_memory_allocated(self) -> int: ...
    def reset_peak_memory_stats(self) -> None: ...
    def synchronize(self) -> None: ...
    def empty_cache(self) -> None: ...
    def capture_graphs(self, make_step: StepFactory, sizes: Sequence[int]) -> "CapturedGraphs": ...
    def is_out_of_memory(self, error: BaseException) -> bool: ...


class CapturedGraphs:
    """Holds captured graphs (and what they reference) alive until measured; `release()` drops them."""

    def __init__(self, graphs: list[Any], keep_alive: list[Any], pool: Any = None) -> None:
        self.graphs = graphs
        self.keep_alive = keep_alive
        self.pool = pool

    @property
    def count(self) -> int:
        return len(self.graphs)

    def release(self) -> None:
        for graph in self.graphs:
            reset = getattr(graph, "reset", None)
            if reset is not None:
                reset()
        self.graphs.clear()
        self.keep_alive.clear()
        self.pool = None


@dataclass(frozen=True)
class MemorySnapshot:
    """One reading of a device's memory counters (vLLM's MemorySnapshot, without measuring in __init__)."""

    free_bytes: int
    total_bytes: int
    reserved_bytes: int
    allocated_bytes: int
    peak_allocated_bytes: int

    @property
    def used_bytes(self) -> int:
        """Everything in use on the card, by anyone: total - free."""
        return self.total_bytes - self.free_bytes

    @property
    def non_torch_bytes(self) -> int:
        # mirrors vLLM 0.10.2 utils/__init__.py MemorySnapshot.measure: non_torch = (total - free) - reserved
        return self.used_bytes - self.reserved_bytes


def take_snapshot(device: Device) -> MemorySnapshot:
    """Measure: synchronise, then read free/total, reserved, allocated and peak allocated bytes."""
    device.synchronize()
    free, total = device.mem_get_info()
    return MemorySnapshot(free_bytes=int(free), total_bytes=int(total),
                          reserved_bytes=int(device.memory_reserved()),
                          allocated_bytes=int(device.memory_allocated()),
                          peak_allocated_bytes=int(device.max_memory_allocated()))


# ------------------------------------------------------------------ CUDA (real) -----------------------

class CudaDevice:
    """A CUDA device through torch.cuda. Thin on purpose: every call is one documented torch function.

    `torch_module` stands in for `torch` in tests (tests/fake_device.FakeTorch: the same names, over a
    scripted caching allocator); by default torch itself, imported on first use.
    """

    kind = "cuda"
    supports_cuda_graphs = True
    measures_driver_memory = True

    def __init__(self, index: int = 0, *, torch_module: Any = None) -> None:
        self.index = index
        self.torch_device = f"cuda:{index}"
        self._torch_module = torch_module

    def _torch(self) -> Any:
        if self._torch_module is None:
            import torch

            self._torch_module = torch
        return self._torch_module

    def name(self) -> Optional[str]:
        return self._torch().cuda.get_device_name(self.index)

    def uuid(self) -> Optional[str]:
        """The device UUID without NVML's "GPU-"/"MIG-" prefix (torch's `_CUuuid` prints the bare 8-4-4-4-12
        form, torch >= 2.4); kvadvise/profile/nvml.py adds the prefix. None when torch does not say."""
        uuid = getattr(self._torch().cuda.get_device_properties(self.index), "uuid", None)
        if uuid is None:
            return None
        text = str(uuid)
        for prefix in ("GPU-", "MIG-"):
            if text.startswith(prefix):
                return text[len(prefix):]
        return text

    def init(self) -> None:
        """Select the device and create its context, as vLLM's worker has before its start-up snapshot.

        No matmul: vLLM 0.10.2-0.11 gpu_worker.py init_device takes its snapshot after set_device, the dtype
        check, gc.collect() and empty_cache() (NCCL is initialised after it in 0.11, before it later); its
        first matmul is in the profile run, so torch's cuBLAS workspace (allocated through the caching
        allocator at the first matmul) is in vLLM's activation peak and the handle's own driver memory in
        its non-torch growth. Creating a cuBLAS handle here would move both into the baseline. The public logs
        agree (tests/data/activation_cases.json): Qwen3-Next TP 2 logs 5.58 GiB and Llama-3-8B 1.26 GiB of
        activation, which our dummy run reproduces within the logs' rounding only with the 32 MiB workspace
        counted inside the peak (5.5765 and 1.2597 GiB; without it 5.5453 and 1.2284).
        """
        cuda = self._torch().cuda
        cuda.set_device(self.index)
        cuda.init()
        cuda.mem_get_info(self.index)      # the runtime creates the primary context on this call
        cuda.synchronize(self.index)

    def release_workspaces(self) -> None:
        """Return torch's cuBLAS workspaces to the allocator (they outlive every tensor otherwise), so that a
        second profile in the same process starts as the first did: its first matmul allocates them again."""
        clear = getattr(self._torch()._C, "_cuda_clearCublasWorkspaces", None)   # torch >= 2.0, undocumented
        if clear is not None:
            clear()

    def mem_get_info(self) -> tuple[int, int]:
        free, total = self._torch().cuda.mem_get_info(self.index)
        return int(free), int(total)

    def memory_allocated(self) -> int:
        # memory_stats()["allocated_bytes.all.current"]
        return int(self._torch().cuda.memory_allocated(self.index))

    def memory_reserved(self) -> int:
        # memory_stats()["reserved_bytes.all.current"], what vLLM's MemorySnapshot reads
        return int(self._torch().cuda.memory_reserved(self.index))

    def max_memory_allocated(self) -> int:
        # vLLM reads memory_stats()["allocated_bytes.all.peak"]; max_memory_allocated returns the same counter
        return int(self._torch().cuda.max_memory_allocated(self.index))

    def reset_peak_memory_stats(self) -> None:
        self._torch().cuda.reset_peak_memory_stats(self.index)

    def synchronize(self) -> None:
        self._torch().cuda.synchronize(self.index)

    def empty_cache(self) -> None:
        import gc

        gc.collect()
        self._torch().cuda.empty_cache()

    def capture_graphs(self, make_step: StepFactory, sizes: Sequence[int], *,
                       keep_outputs: bool = False) -> CapturedGraphs:
        """Capture one graph per size, largest first, all into one shared memory pool (as vLLM does).

        Warm-up and capture run on ONE side stream, as vLLM's capture_model does (vllm/distributed/
        parallel_state.py graph_capture: one stream for the warm-ups and for torch.cuda.graph(stream=...)):
        torch keeps a cuBLAS workspace per (handle, stream) for as long as the process lives, so a new warm-up
        stream per size would add one workspace (32 MiB on Hopper) per stream to the measured graph memory,
        and torch.cuda.graph's documentation asks a capture that shares a pool to use the stream the earlier
        captures used. A graph's output is not kept (vLLM 0.10-0.11 compilation/cuda_graph.py keeps only
        weak_ref_tensors of it): its blocks go back to the shared pool for the next, smaller capture, so the
        pool holds about the largest step, not the sum of every size's output; `keep_outputs` keeps them (to
        replay and read them, in tests). On failure the graphs captured so far are reset before the error
        propagates (the caller falls back to an estimate and must find their pool returned).
        """
        torch = self._torch()
        cuda = torch.cuda
        pool = cuda.graph_pool_handle()
        graphs: list[Any] = []
        keep_alive: list[Any] = []
        stream = cuda.Stream(self.index)
        # warm-up on a side stream, as torch.cuda.graph's documentation asks before capture
        stream.wait_stream(cuda.current_stream(self.index))
        graph: Any = None
        step: Any = None
        output: Any = None
        try:
            for size in sorted(set(sizes), reverse=True):
                step = make_step(size)
                with cuda.stream(stream):
                    step()
                graph = cuda.CUDAGraph()
                with cuda.graph(graph, pool=pool, stream=stream):
                    output = step()
                graphs.append(graph)
                keep_alive.append((step, output) if keep_outputs else (step,))
                output = None
            cuda.current_stream(self.index).wait_stream(stream)
            cuda.synchronize(self.index)
        except BaseException:
            # the traceback keeps this frame: drop its references into the pool, and the failed graph's hold on it
            step = output = None
            if graph is not None and not any(graph is captured for captured in graphs):
                try:
                    graph.reset()
                except Exception:
                    pass
            graph = None
            CapturedGraphs(graphs, keep_alive, pool).release()
            raise
        return CapturedGraphs(graphs, keep_alive, pool)

    def is_out_of_memory(self, error: BaseException) -> bool:
        """torch's OutOfMemoryError or a CUDA / cuBLAS allocation failure, also when another error raised while
        unwinding (e.g. capture_end after a failed capture) hides it in __context__."""
        torch = self._torch()
        out_of_memory = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
        seen: set[int] = set()
        current: Optional[BaseException] = error
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            if isinstance(current, out_of_memory):
                return True
            text = str(current)
            if isinstance(current, RuntimeError) and ("out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text):
                return True
            current = current.__cause__ or current.__context__
        return False


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def cuda_device_count() -> int:
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


# ------------------------------------------------------------------ CPU (host) ------------------------

class CpuDevice:
    """The host, standing in for a target card: real tensors, peaks from a live-storage tracker.

    allocated / peak come from `tracker` (kvadvise/profile/tracker.py LiveBytesTracker: live bytes of tensor
    storages created while it is active, rounded as the CUDA caching allocator rounds blocks; active from
    init() to close()). total / free are the target card's (from --gpu / --gpu-memory, or host
    memory): nothing is reserved or cached on the host, so reserved == allocated and non-torch memory is
    not measurable (`measures_driver_memory = False`); CUDA graphs do not apply.
    """

    kind = "cpu"
    index = None
    torch_device = "cpu"
    supports_cuda_graphs = False
    measures_driver_memory = False

    def __init__(self, total_bytes: int, free_bytes: Optional[int] = None, *, tracker: Any = None,
                 target_name: Optional[str] = None) -> None:
        self.total_bytes = int(total_bytes)
        self.free_bytes = int(total_bytes if free_bytes is None else free_bytes)
        self.tracker = tracker
        self.target_name = target_name
        self._tracking = False

    def name(self) -> Optional[str]:
        return self.target_name

    def init(self) -> None:
        """Start tracking: every tensor storage created from now on is booked (the tracker is a dispatch mode)."""
        if self.tracker is not None and not self._tracking:
            self.tracker.__enter__()
            self._tracking = True

    def close(self) -> None:
        if self.tracker is not None and self._tracking:
            self._tracking = False
            self.tracker.__exit__(None, None, None)

    def mem_get_info(self) -> tuple[int, int]:
        return self.free_bytes, self.total_bytes

    def memory_allocated(self) -> int:
        return 0 if self.tracker is None else int(self.tracker.current_bytes)

    def memory_reserved(self) -> int:
        return self.memory_allocated()

    def max_memory_allocated(self) -> int:
        return 0 if self.tracker is None else int(self.tracker.peak_bytes)

    def reset_peak_memory_stats(self) -> None:
        if self.tracker is not None:
            self.tracker.reset_peak()

    def synchronize(self) -> None:
        return None

    def empty_cache(self) -> None:
        """Nothing is cached on the host; collect young reference cycles so their storages are booked free
        (a full collection costs ~0.5 s with torch and transformers loaded, and finds nothing more here)."""
        import gc

        gc.collect(1)

    def capture_graphs(self, make_step: StepFactory, sizes: Sequence[int]) -> CapturedGraphs:
        raise NotImplementedError("CUDA graphs do not apply on the host")

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, MemoryError) or (
            isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def host_memory_bytes() -> tuple[int, int]:
    """(available, total) bytes of host memory, from /proc/meminfo (or sysconf where that is missing)."""
    import os

    try:
        fields: dict[str, int] = {}
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    fields[key] = int(parts[0]) * 1024
        return fields.get("MemAvailable", fields["MemFree"]), fields["MemTotal"]
    except (OSError, KeyError):
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
