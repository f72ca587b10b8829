"""Every NVML (pynvml from nvidia-ml-py) call kvadvise makes, and every NVML quirk, in one place.

Knows: the GPU's name, driver version, MIG mode, the memory other processes hold on it, and NVML's view
of free memory. Optional: when pynvml or the driver's library is missing, or the device cannot be matched,
`read_nvml` returns None and the profile goes on without it. Does not know: torch, or how to word a
report (session.py turns these figures into warnings).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class OtherProcess:
    """Another process holding memory on the card (its bytes None when NVML does not say)."""

    pid: int
    used_bytes: Optional[int]


@dataclass(frozen=True)
class NvmlInfo:
    """What NVML says about one device.

    other_processes excludes this process when NVML lists it under our PID. Inside a container NVML lists
    host PIDs (the driver ignores PID namespaces), so this process may be among them under another PID:
    `own_process_listed` False then (None when the list itself could not be read).
    """

    name: Optional[str]
    driver_version: Optional[str]
    mig_mode: Optional[bool]
    total_bytes: Optional[int]
    free_bytes: Optional[int]
    other_processes: tuple[OtherProcess, ...]
    own_process_listed: Optional[bool] = None

    @property
    def other_processes_bytes(self) -> Optional[int]:
        """Bytes held by other processes; None when NVML could not list them, could not say for some of them,
        or did not list this process under its PID (in a container one of those listed is this process)."""
        # this process holds a context on the device when it asks: not seeing it means NVML's PIDs are not ours
        if self.own_process_listed is not True:
            return None
        if any(process.used_bytes is None for process in self.other_processes):
            return None
        return sum(process.used_bytes or 0 for process in self.other_processes)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# NVML's sentinel for "not available" in usedGpuMemory is unsigned long long -1: nvidia-ml-py >= 11.510 turns it
# into None, older bindings pass it through; no card holds 2**63 bytes, so anything that large is the sentinel
_NOT_AVAILABLE_FROM = 1 << 63


def _running_processes(nvml: Any, handle: Any, kind: str) -> Optional[list]:
    """nvmlDevice<kind>RunningProcesses, falling back to its _v2 when the unversioned name (bound to _v3 in
    nvidia-ml-py >= 11.510) is missing from an older driver. None when NVML cannot list them."""
    for name in (f"nvmlDeviceGet{kind}RunningProcesses", f"nvmlDeviceGet{kind}RunningProcesses_v2"):
        function = getattr(nvml, name, None)
        if function is None:
            continue
        try:
            return list(function(handle))
        except Exception:   # NVMLError_FunctionNotFound / NVMLLibraryMismatchError / NotSupported
            continue
    return None


def _handle_by_uuid(nvml: Any, uuid: str) -> tuple[Any, bool]:
    """NVML's handle for a CUDA device UUID (bare, as torch prints it, or already prefixed), and whether it is a
    MIG instance.

    nvmlDeviceGetHandleByUUID takes the ASCII UUID as bytes: nvidia-ml-py >= 11.515 encodes a str itself, older
    bindings hand a str to ctypes.c_char_p and fail, so bytes are passed. A whole GPU is "GPU-<uuid>", a MIG
    instance "MIG-<uuid>" (drivers >= R470); CUDA's UUID does not say which, so both are tried.
    """
    candidates = [uuid] if uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{uuid}", f"MIG-{uuid}"]
    last: Optional[BaseException] = None
    for candidate in candidates:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(candidate.encode("ascii")), candidate.startswith("MIG-")
        except Exception as error:   # NVMLError_NotFound for the wrong prefix
            last = error
    assert last is not None
    raise last


def read_nvml(*, uuid: Optional[str] = None, index: Optional[int] = None, nvml: Any = None,
              own_pid: Optional[int] = None) -> Optional[NvmlInfo]:
    """Read one device by UUID (preferred: NVML indices ignore CUDA_VISIBLE_DEVICES) or index.

    `nvml` is the pynvml module (tests pass a stand-in). None when NVML is unavailable.
    """
    if nvml is None:
        try:
            import pynvml as nvml  # type: ignore[no-redef]
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError: no driver library, no permission
        return None
    try:
        mig_instance = False
        try:
            if uuid is not None:
                handle, mig_instance = _handle_by_uuid(nvml, uuid)
            elif index is not None:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            else:
                return None
        except Exception:
            return None
        name = _optional(lambda: _text(nvml.nvmlDeviceGetName(handle)))
        driver = _optional(lambda: _text(nvml.nvmlSystemGetDriverVersion()))
        # [current, pending]; NVMLError_NotSupported on cards without MIG (consumer cards): unknown
        mig = _optional(lambda: bool(nvml.nvmlDeviceGetMigMode(handle)[0]))
        if mig_instance:
            mig = True              # a MIG instance's own handle does not answer nvmlDeviceGetMigMode
        memory = _optional(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        total = int(memory.total) if memory is not None else None
        free = int(memory.free) if memory is not None else None
        own = os.getpid() if own_pid is None else own_pid
        processes: list[OtherProcess] = []
        seen: set[int] = set()
        own_listed: Optional[bool] = False
        compute = _running_processes(nvml, handle, "Compute")
        graphics = _running_processes(nvml, handle, "Graphics")
        if compute is None:
            own_listed = None       # a CUDA process is a compute process: without that list, nothing is known
        for process in (compute or []) + (graphics or []):
            pid = int(process.pid)
            if pid == own:
                own_listed = True if own_listed is not None else None
                continue
            if pid in seen:
                continue
            seen.add(pid)
            used = getattr(process, "usedGpuMemory", None)
            # NVML reports "not available" (e.g. inside containers, WDDM) as None or its sentinel
            processes.append(OtherProcess(pid, int(used) if used is not None and used < _NOT_AVAILABLE_FROM else None))
        return NvmlInfo(name=name, driver_version=driver, mig_mode=mig, total_bytes=total, free_bytes=free,
                        other_processes=tuple(processes) if compute is not None else (),
                        own_process_listed=own_listed)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def read_nvml_for(device: Any, *, nvml: Any = None, own_pid: Optional[int] = None) -> Optional[Any]:
    """NVML's view of a CUDA device (by UUID; by index only when CUDA_VISIBLE_DEVICES does not renumber)."""
    try:
        uuid = device.uuid()
    except Exception:
        uuid = None
    if uuid:
        return read_nvml(uuid=uuid, nvml=nvml, own_pid=own_pid)
    # NVML numbers devices physically; CUDA_VISIBLE_DEVICES renumbers them: match by index only without it
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return None
    return read_nvml(index=device.index, nvml=nvml, own_pid=own_pid)


def _optional(read: Any) -> Any:
    try:
        return read()
    except Exception:  # NVMLError_NotSupported and friends: unknown, not a failure
        return None


def free_memory_disagrees(nvml_free_bytes: Optional[int], cuda_free_bytes: int, *,
                          tolerance: float = 0.01) -> bool:
    """True when NVML's and CUDA's free memory differ by more than `tolerance` of CUDA's figure."""
    if nvml_free_bytes is None or cuda_free_bytes <= 0:
        return False
    return abs(nvml_free_bytes - cuda_free_bytes) > tolerance * cuda_free_bytes
