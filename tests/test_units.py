"""Byte sizes as vLLM parses them (k/m/g decimal, K/M/G binary) and as people write them."""

import pytest

from kvadvise.errors import InputError
from kvadvise.units import parse_bytes, parse_bytes_list


@pytest.mark.parametrize("text, expected", [
    ("1234", 1234),
    ("16g", 16 * 10**9),          # vLLM human_readable_int: lowercase is decimal
    ("16G", 16 * 2**30),          # uppercase is binary
    ("512M", 512 * 2**20),
    ("512m", 512 * 10**6),
    ("2k", 2000),
    ("2K", 2048),
    ("80GiB", 80 * 2**30),
    ("80gib", 80 * 2**30),
    ("80GB", 80 * 10**9),
    ("0.5TiB", 2**39),
    ("1.5GiB", 3 * 2**29),
    ("44.59GiB", 47878147932),    # 44.59 * 2**30 = 47878147932.16, rounded down to whole bytes
    ("1.5k", 1500),
    (" 24 GiB ", 24 * 2**30),
    ("100B", 100),
    (7, 7),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-5", "abc", "12XB", "1.5", "0.3B", "GiB", "1e9", "0GiB"])
def test_parse_bytes_rejects(text):
    with pytest.raises(InputError):
        parse_bytes(text)


def test_parse_bytes_list():
    assert parse_bytes_list("16GiB,32GiB") == [16 * 2**30, 32 * 2**30]
    with pytest.raises(InputError):
        parse_bytes_list("16GiB,,32GiB")
