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
    """What NVML says about one device."""

    name: Optional[str]
    driver_version: Optional[str]
    mig_mode: Optional[bool]
    total_bytes: Optional[int]
    free_bytes: Optional[int]
    other_processes: tuple[OtherProcess, ...]

    @property
    def other_processes_bytes(self) -> Optional[int]:
        """Bytes held by other processes; None when NVML could not say for some of them."""
        if any(process.used_bytes is None for process in self.other_processes):
            return None
        return sum(process.used_bytes or 0 for process in self.other_processes)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
        try:
            if uuid is not None:
                handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
            elif index is not None:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            else:
                return None
        except Exception:
            return None
        name = _optional(lambda: _text(nvml.nvmlDeviceGetName(handle)))
        driver = _optional(lambda: _text(nvml.nvmlSystemGetDriverVersion()))
        mig = _optional(lambda: bool(nvml.nvmlDeviceGetMigMode(handle)[0]))
        memory = _optional(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        total = int(memory.total) if memory is not None else None
        free = int(memory.free) if memory is not None else None
        own = os.getpid() if own_pid is None else own_pid
        processes: list[OtherProcess] = []
        seen: set[int] = set()
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            listed = _optional(lambda: getattr(nvml, getter)(handle)) or []
            for process in listed:
                pid = int(process.pid)
                if pid == own or pid in seen:
                    continue
                seen.add(pid)
                used = getattr(process, "usedGpuMemory", None)
                # NVML reports "not available" (e.g. inside containers) as None or a huge sentinel
                processes.append(OtherProcess(pid, int(used) if used is not None and used < (1 << 60) else None))
        return NvmlInfo(name=name, driver_version=driver, mig_mode=mig, total_bytes=total, free_bytes=free,
                        other_processes=tuple(processes))
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def read_nvml_for(device: Any) -> Optional[Any]:
    """NVML's view of a CUDA device (by UUID; by index only when CUDA_VISIBLE_DEVICES does not renumber)."""
    try:
        uuid = device.uuid()
    except Exception:
        uuid = None
    if uuid:
        return read_nvml(uuid=uuid)
    # NVML numbers devices physically; CUDA_VISIBLE_DEVICES renumbers them: match by index only without it
    return None if os.environ.get("CUDA_VISIBLE_DEVICES") else read_nvml(index=device.index)


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
