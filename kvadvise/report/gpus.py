"""The `gpus` report: the catalog as a table and as JSON; local cards when NVML answers.

Knows how to show the catalog; the figures themselves live in kvadvise/gpus.py. NVML is asked only
through kvadvise/profile/nvml.py (the one place that touches pynvml); when that module or the driver is
missing, the local section is null and nothing is printed about it but one line.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from kvadvise.report.common import bytes_text, gib, make_document


def local_devices(nvml_module: Any = None) -> tuple[Optional[list[dict[str, Any]]], list[str]]:
    """The local cards as NVML reports them, or None when NVML does not answer (no driver, no module).

    NVML is read only through kvadvise/profile/nvml.py `read_nvml(index=i)`, for i = 0, 1, ... until it
    answers None. `nvml_module` is a pynvml stand-in for tests.
    """
    try:
        from kvadvise.profile.nvml import read_nvml  # owned by the profile helper
    except Exception:
        return None, []
    from kvadvise.gpus import match_device_name

    devices: list[dict[str, Any]] = []
    for index in range(64):
        try:
            info = read_nvml(index=index, nvml=nvml_module)
        except Exception:
            info = None
        if info is None:
            break
        spec = match_device_name(info.name) if info.name else None
        devices.append({"index": index, "name": info.name, "total_bytes": info.total_bytes,
                        "free_bytes": info.free_bytes, "catalog_key": spec.key if spec else None})
    if not devices:
        return None, []
    return devices, []


def gpus_document(catalog: Iterable[Any], local: Optional[list[dict[str, Any]]],
                  warnings: list[str]) -> dict[str, Any]:
    entries = [{
        "key": spec.key,
        "device_name": spec.device_name,
        "total_bytes": spec.total_bytes,
        "family": spec.family,
        "vendor": spec.vendor,
        "aliases": list(spec.aliases),
        "source": spec.source,
    } for spec in catalog]
    return make_document("gpus", {}, {"catalog": entries, "local": local}, warnings)


def render(document: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title="GPU catalog (total memory as CUDA reports it; --gpu NAME)", show_lines=False)
    table.add_column("name", no_wrap=True)
    table.add_column("total", justify="right", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("family", no_wrap=True)
    table.add_column("device name")
    for entry in document["catalog"]:
        table.add_row(entry["key"], gib(entry["total_bytes"]), bytes_text(entry["total_bytes"]),
                      entry["family"], entry["device_name"])
    console.print(table)
    console.print("Names match loosely (case, spaces and dashes ignored). Sources: `kvadvise gpus --json`. "
                  "Totals vary slightly by driver: pass --gpu-memory for your exact card.")
    local = document.get("local")
    if local is None:
        console.print("Local cards: NVML not available.")
        return
    if not local:
        console.print("Local cards: none found by NVML.")
        return
    mine = Table(title="Local cards (NVML)")
    for column in ("index", "name", "total", "free", "catalog"):
        mine.add_column(column)
    for device in local:
        mine.add_row(str(device["index"]), str(device["name"]), gib(device["total_bytes"]),
                     gib(device["free_bytes"]), device["catalog_key"] or "—")
    console.print(mine)
