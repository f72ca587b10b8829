"""The output contract shared by every command: the JSON envelope, atomic writes, units for people.

Knows how to turn results into text; never measures or computes a budget.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from kvadvise import __version__

SCHEMA_VERSION = 1
GIB = 1 << 30


def make_document(command: str, inputs: dict[str, Any], results: dict[str, Any],
                  warnings: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The envelope every `--json` document has: schema_version, kvadvise_version, command, inputs, warnings."""
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kvadvise_version": __version__,
        "command": command,
        "inputs": inputs,
    }
    document.update(results)
    document["warnings"] = list(warnings)
    return document


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_json_atomic(path: str | os.PathLike[str], document: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, then rename, so a reader never sees half a report."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(dumps(document))
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp makes the file 0600; give the report the mode a plain open() would (or the replaced file's)
        os.chmod(temp_name, _report_mode(target))
        os.replace(temp_name, target)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise


def _report_mode(target: Path) -> int:
    """The replaced file's permission bits, else 0666 less the umask, as open(target, "w") would create it."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def gib(num_bytes: int | None, digits: int = 2) -> str:
    """Bytes as GiB for people, the way vLLM prints them (`round(b / 2**30, 2)`)."""
    if num_bytes is None:
        return "—"
    return f"{num_bytes / GIB:.{digits}f} GiB"


def bytes_text(num_bytes: int | None) -> str:
    """An exact byte count with thousands separators."""
    if num_bytes is None:
        return "—"
    return f"{num_bytes:,}"


def tokens_text(tokens: int | None) -> str:
    return "—" if tokens is None else f"{tokens:,}"


def concurrency_text(concurrency: float | None) -> str:
    return "—" if concurrency is None else f"{concurrency:.2f}x"
