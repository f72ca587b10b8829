"""A catalog of common GPUs with the total memory CUDA reports on them, and a loose name lookup.

Knows: for each card, the `total` of `torch.cuda.mem_get_info()` (= cudaMemGetInfo = vLLM's
"total_gpu_memory" in its start-up log), as exact bytes, and where that figure comes from; the name the
driver reports (vLLM reads it for its default batch sizes: "a100" in the name keeps a >= 70 GiB card on
the small defaults); the family (which picks the default non-torch memory in kvadvise/estimate/).
Does not know: what is free on a real card (profile/ measures that), nor anything about a model.

How the figures were chosen (pure data; no device access here):
- A vLLM start-up log naming the card gives "total_gpu_memory (X GiB)", rounded to 2 decimals; we store
  `round(X * 1024)` MiB, which prints back as X.
- Else `torch.cuda.get_device_properties(...)` printed by someone on that card: torch prints
  `total_memory // 2**20` as "NNNNNMB", so the bytes are NNNNN MiB (exact to the MiB; the sub-MiB rest is
  unknown, we under-state it, the safe side). CUDA's device total equals mem_get_info's total.
- Else an NVML / nvidia-smi "memory.total" figure with the gap to CUDA's total stated as an assumption.
Totals vary by a few MiB to ~0.1 GiB across drivers and ECC settings: pass `--gpu-memory` for your card.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from kvadvise.errors import InputError

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class GpuSpec:
    """One catalog card: its CUDA-visible total memory in bytes and where the figure comes from."""

    key: str                      # canonical catalog name, e.g. "H100-80GB-SXM"
    device_name: str              # what torch.cuda.get_device_name() / NVML report on it
    total_bytes: int              # torch.cuda.mem_get_info()[1] on the card
    family: str                   # "ampere", "ada", "hopper", "blackwell", "cdna3"
    vendor: str                   # "nvidia" or "amd"
    source: str                   # where total_bytes comes from
    aliases: tuple[str, ...] = ()

    @property
    def vllm_name_is_a100(self) -> bool:
        """vLLM 0.11 arg_utils: `"a100" not in device_name.lower()` gates the 8192-token defaults."""
        return "a100" in self.device_name.lower()


def _mib(mebibytes: int) -> int:
    return mebibytes * MIB


def _from_vllm_log_gib(gib_two_decimals: str) -> int:
    """Bytes for a "total_gpu_memory (X GiB)" log figure: the smallest whole MiB that prints back as X.

    The low end of the log's rounding interval: a card assumed smaller than it is can only make "fit"
    smaller, never larger than what vLLM can hold.
    """
    hundredths = round(float(gib_two_decimals) * 100)
    # X GiB printed with 2 decimals covers [X - 0.005, X + 0.005) GiB; in MiB: [(100X - 0.5) * 1024 / 100, ...)
    low_mib = -(-((2 * hundredths - 1) * 1024) // 200)  # ceil((hundredths - 0.5) * 1024 / 100)
    return low_mib * MIB


CATALOG: tuple[GpuSpec, ...] = (
    GpuSpec("A10", "NVIDIA A10", _from_vllm_log_gib("22.07"), "ampere", "nvidia",
            "vLLM 0.6 log 'total_gpu_memory (22.07GiB)' on an OCI A10 shape (oracle-samples "
            "ai-quick-actions troubleshooting guide)"),
    GpuSpec("A10G", "NVIDIA A10G", _mib(22587), "ampere", "nvidia",
            "torch get_device_properties: name='NVIDIA A10G', total_memory=22587MB (public repo log)"),
    GpuSpec("L4", "NVIDIA L4", _mib(23034 - 441), "ada", "nvidia",
            "nvidia-smi 23034MiB (vllm-project/vllm#4959) minus 441 MiB, ASSUMED equal to the A10G's "
            "nvidia-smi-to-CUDA gap (23028 MiB vs 22587 MiB), both 24 GB GDDR6 cards with ECC"),
    GpuSpec("L40S", "NVIDIA L40S", _mib(45589), "ada", "nvidia",
            "torch get_device_properties: name='NVIDIA L40S', total_memory=45589MB (public repo notes)"),
    GpuSpec("A100-40GB", "NVIDIA A100-SXM4-40GB", _mib(40536), "ampere", "nvidia",
            "get_device_properties total_memory=40536MB for A100-SXM4-40GB (Paddle docs example, same "
            "cudaDeviceProp.totalGlobalMem); also a fake-nvidia-smi fixture with 40536 MiB",
            aliases=("A100-SXM4-40GB", "A100-PCIE-40GB", "A100-40G")),
    GpuSpec("A100-80GB", "NVIDIA A100-SXM4-80GB", _from_vllm_log_gib("79.15"), "ampere", "nvidia",
            "vLLM 0.8.2 log 'total_gpu_memory (79.15GiB)' on an NVIDIA A100-SXM4-80GB "
            "(shared/vllm-cases case01)",
            aliases=("A100-SXM4-80GB", "A100-SXM-80GB", "A100-80G", "A100")),
    GpuSpec("A100-80GB-PCIe", "NVIDIA A100 80GB PCIe", 85093777408, "ampere", "nvidia",
            "torch: 'cuda:0: name=NVIDIA A100 80GB PCIe total_memory=85093777408' (public env dump); "
            "= 79.25 GiB, as a vLLM log shows (shared/vllm-cases case02)",
            aliases=("A100-PCIe-80GB", "A100-80GB-PCIE")),
    GpuSpec("H100-80GB-SXM", "NVIDIA H100 80GB HBM3", _mib(81089), "hopper", "nvidia",
            "torch total_memory 81089-81090MB (79.19 GiB) on some drivers; vLLM logged 'total_gpu_memory "
            "(79.22GiB)' on an H100-80G (vllm-project/vllm#12126, shared/vllm-cases case12): we keep the smaller",
            aliases=("H100", "H100-SXM", "H100-80GB", "H100-80G", "H100-SXM5-80GB", "H100-HBM3")),
    GpuSpec("H100-80GB-PCIe", "NVIDIA H100 PCIe", _mib(81008), "hopper", "nvidia",
            "torch get_device_properties: name='NVIDIA H100 PCIe', total_memory=81008MB (public repo)",
            aliases=("H100-PCIe",)),
    GpuSpec("H200", "NVIDIA H200", _mib(143156), "hopper", "nvidia",
            "torch total_memory=143156MB (139.80 GiB); vLLM 0.10.2 logged 'Free memory on device "
            "(139.21/139.81 GiB)' on an H200 (shared/vllm-cases case04): we keep the smaller",
            aliases=("H200-141GB", "H200-SXM")),
    GpuSpec("B200", "NVIDIA B200", _mib(182631), "blackwell", "nvidia",
            "torch get_device_properties: name='NVIDIA B200', total_memory=182631MB (public benchmark "
            "log; another printed 182642MB: we keep the smaller)",
            aliases=("B200-180GB",)),
    GpuSpec("RTX-3090", "NVIDIA GeForce RTX 3090", _from_vllm_log_gib("23.58"), "ampere", "nvidia",
            "vLLM log 'total_gpu_memory=23.58GiB' on an RTX 3090 (vllm-project/vllm#10517, "
            "shared/vllm-cases case08); also 23.58GiB in vllm-project/vllm#14447",
            aliases=("3090", "GeForce-RTX-3090")),
    GpuSpec("RTX-4090", "NVIDIA GeForce RTX 4090", _mib(24563), "ada", "nvidia",
            "torch get_device_properties: name='NVIDIA GeForce RTX 4090', total_memory=24563MB (public "
            "repo); nvidia-smi shows 24564MiB (vllm-project/vllm#7553)",
            aliases=("4090", "GeForce-RTX-4090")),
    GpuSpec("RTX-5070-Ti", "NVIDIA GeForce RTX 5070 Ti", _mib(16303 - 1), "blackwell", "nvidia",
            "nvidia-smi '13603MiB / 16303MiB' on an RTX 5070 Ti (public repo notes, find_string id 34106374267) "
            "minus 1 MiB, ASSUMED equal to the RTX 4090's NVML-to-CUDA gap (24564 vs 24563 MiB)",
            aliases=("5070Ti", "GeForce-RTX-5070-Ti")),
    GpuSpec("RTX-5090", "NVIDIA GeForce RTX 5090", _mib(32607 - 1), "blackwell", "nvidia",
            "NVML memory total 32607 MiB on an RTX 5090 (public repo log) minus 1 MiB, ASSUMED equal to "
            "the RTX 4090's NVML-to-CUDA gap (24564 vs 24563 MiB)",
            aliases=("5090", "GeForce-RTX-5090")),
    GpuSpec("RTX-PRO-6000", "NVIDIA RTX PRO 6000 Blackwell Workstation Edition", _mib(97887 - 1), "blackwell",
            "nvidia",
            "NVML memory_total_mib=97887 for 'NVIDIA RTX PRO 6000 Blackwell Workstation Edition' (public "
            "repo fixture) minus 1 MiB, ASSUMED equal to the RTX 4090's NVML-to-CUDA gap",
            aliases=("RTX-PRO-6000-Blackwell", "PRO-6000", "RTX6000-PRO")),
    GpuSpec("MI300X", "AMD Instinct MI300X", _mib(196592), "cdna3", "amd",
            "torch (ROCm) get_device_properties: name='AMD Instinct MI300X', total_memory=196592MB "
            "(ROCm/ROCm#4203 and a public cluster log)",
            aliases=("Instinct-MI300X",)),
)


def _normalize(name: str) -> str:
    """Case, spaces, dashes, underscores and a leading vendor word do not matter: `H100-80GB` == `h100 80gb`."""
    text = re.sub(r"[\s\-_./]+", "", name.lower())
    for prefix in ("nvidia", "geforce", "amd", "instinct"):
        if text.startswith(prefix) and len(text) > len(prefix):
            text = text[len(prefix):]
    return text


def _index() -> dict[str, GpuSpec]:
    index: dict[str, GpuSpec] = {}
    for spec in CATALOG:
        for name in (spec.key, spec.device_name, *spec.aliases):
            index.setdefault(_normalize(name), spec)
    return index


_INDEX = _index()


def catalog_names() -> list[str]:
    return [spec.key for spec in CATALOG]


def lookup_gpu(name: str) -> GpuSpec:
    """Find a card by a loose name (`h100`, `H100-80GB`, `rtx4090`, `NVIDIA A100-SXM4-80GB`).

    Unknown names raise InputError listing the closest catalog names (exit 2).
    """
    key = _normalize(name)
    if key in _INDEX:
        return _INDEX[key]
    if key.startswith("rtx") and key[3:] in _INDEX:  # "rtx4090" -> "4090"
        return _INDEX[key[3:]]
    close = difflib.get_close_matches(key, list(_INDEX), n=8, cutoff=0.5)
    suggestions: list[str] = []
    for candidate in close:
        spec_key = _INDEX[candidate].key
        if spec_key not in suggestions:
            suggestions.append(spec_key)
    if not suggestions:
        suggestions = [spec.key for spec in CATALOG if spec.key.lower()[:2] == key[:2]]
    shown = ", ".join(suggestions[:5]) if suggestions else ", ".join(catalog_names())
    raise InputError(f"unknown GPU {name!r}; close names: {shown}",
                     hint="`kvadvise gpus` lists the catalog; or give the memory with --gpu-memory 80GiB")


def match_device_name(device_name: str) -> GpuSpec | None:
    """The catalog entry for a name a driver reports (NVML / torch), or None when it is not in the catalog."""
    try:
        return lookup_gpu(device_name)
    except InputError:
        return None
