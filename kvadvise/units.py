"""Byte sizes from text, as vLLM parses them and as people write them. Rendering lives in report/."""

from __future__ import annotations

import re

from kvadvise.errors import InputError

# vLLM 0.10.2 config/__init__.py (human_readable_int): k/m/g/t decimal, K/M/G/T binary, integers only.
_VLLM_SUFFIX = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
                "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# Unit words people write; case-insensitive; "B" optional.
_WORD_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

_PATTERN = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>[A-Za-z]*)\s*$")


def parse_bytes(text: str | int, *, what: str = "size") -> int:
    """Parse `16g` (10**9), `16G` (2**30), `80GiB`, `80GB`, `0.5TiB`, `1234` into a positive int of bytes."""
    if isinstance(text, int):
        value = text
    else:
        match = _PATTERN.match(str(text))
        if not match:
            raise InputError(f"{what}: cannot read {text!r} as a byte size",
                             hint="write an integer of bytes or a size such as 16G, 80GiB, 80GB")
        number, unit = match.group("number"), match.group("unit")
        if unit == "":
            factor = 1
        elif unit in _VLLM_SUFFIX:
            factor = _VLLM_SUFFIX[unit]
        elif unit.lower() in _WORD_UNITS:
            factor = _WORD_UNITS[unit.lower()]
        else:
            raise InputError(f"{what}: unknown unit {unit!r} in {text!r}",
                             hint="units: k m g t (decimal), K M G T (binary), KB MB GB TB, KiB MiB GiB TiB")
        if "." in number:
            if factor == 1:
                raise InputError(f"{what}: {text!r} is not a whole number of bytes")
            # Integer arithmetic, rounded down to a whole byte: 0.5TiB is exactly 2**39, and a figure
            # copied from a vLLM log (44.59GiB) is the largest byte count not above it.
            whole, _, fraction = number.partition(".")
            value = int(whole or "0") * factor + int(fraction) * factor // 10 ** len(fraction)
        else:
            value = int(number) * factor
    if value <= 0:
        raise InputError(f"{what}: must be a positive number of bytes, got {text!r}")
    return value


def parse_bytes_list(text: str, *, what: str = "size") -> list[int]:
    """A comma-separated list of sizes: `16GiB,32GiB`."""
    parts = [p for p in str(text).split(",")]
    if not parts or any(not p.strip() for p in parts):
        raise InputError(f"{what}: cannot read {text!r} as a comma-separated list of sizes")
    return [parse_bytes(p, what=what) for p in parts]
