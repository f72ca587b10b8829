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
    """A CUDA device through torch.cuda. Thin on purpose: every call is one documented torch function."""

    kind = "cuda"
    supports_cuda_graphs = True
    measures_driver_memory = True

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self.torch_device = f"cuda:{index}"

    def name(self) -> Optional[str]:
        import torch

        return torch.cuda.get_device_name(self.index)

    def uuid(self) -> Optional[str]:
        """The device UUID as NVML spells it ("GPU-..."), to match NVML's handle under CUDA_VISIBLE_DEVICES."""
        import torch

        uuid = getattr(torch.cuda.get_device_properties(self.index), "uuid", None)
        if uuid is None:
            return None
        text = str(uuid)
        return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"

    def init(self) -> None:
        """Select the device and create its context, as vLLM's worker has before its start-up snapshot.

        No matmul: vLLM 0.10.2-0.11 gpu_worker.py init_device takes its snapshot after set_device, the dtype
        check, gc.collect() and empty_cache() (NCCL is initialised after it in 0.11, before it later); its
        first matmul is in the profile run, so torch's cuBLAS workspace (allocated through the caching
        allocator at the first matmul) is in vLLM's activation peak and the handle's own driver memory in
        its non-torch growth. Creating a cuBLAS handle here would move both into the baseline.
        """
        import torch

        torch.cuda.set_device(self.index)
        torch.cuda.init()
        torch.cuda.mem_get_info(self.index)      # the runtime creates the primary context on this call
        torch.cuda.synchronize(self.index)

    def release_workspaces(self) -> None:
        """Return torch's cuBLAS workspaces to the allocator (they outlive every tensor otherwise), so that a
        second profile in the same process starts as the first did: its first matmul allocates them again."""
        import torch

        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)   # what torch.cuda.graphs calls
        if clear is not None:
            clear()

    def mem_get_info(self) -> tuple[int, int]:
        import torch

        free, total = torch.cuda.mem_get_info(self.index)
        return int(free), int(total)

    def memory_allocated(self) -> int:
        import torch

        return int(torch.cuda.memory_allocated(self.index))

    def memory_reserved(self) -> int:
        import torch

        return int(torch.cuda.memory_reserved(self.index))

    def max_memory_allocated(self) -> int:
        import torch

        # vLLM reads memory_stats()["allocated_bytes.all.peak"]; max_memory_allocated returns the same counter
        return int(torch.cuda.max_memory_allocated(self.index))

    def reset_peak_memory_stats(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats(self.index)

    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize(self.index)

    def empty_cache(self) -> None:
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()

    def capture_graphs(self, make_step: StepFactory, sizes: Sequence[int]) -> CapturedGraphs:
        """Capture one graph per size, largest first, all into one shared memory pool (as vLLM does)."""
        import torch

        pool = torch.cuda.graph_pool_handle()
        graphs: list[Any] = []
        keep_alive: list[Any] = []
        for size in sorted(set(sizes), reverse=True):
            step = make_step(size)
            # warm-up on a side stream, as torch.cuda.graph's documentation asks before capture
            stream = torch.cuda.Stream(self.index)
            stream.wait_stream(torch.cuda.current_stream(self.index))
            with torch.cuda.stream(stream):
                step()
            torch.cuda.current_stream(self.index).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                output = step()
            graphs.append(graph)
            keep_alive.append((step, output))
        torch.cuda.synchronize(self.index)
        return CapturedGraphs(graphs, keep_alive, pool)

    def is_out_of_memory(self, error: BaseException) -> bool:
        import torch

        out_of_memory = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
        if isinstance(error, out_of_memory):
            return True
        text = str(error)
        return isinstance(error, RuntimeError) and ("out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text)


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
