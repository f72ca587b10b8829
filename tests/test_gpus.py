"""The GPU catalog: loose names, exact bytes that print back as the cited logs, close-name errors."""

from __future__ import annotations

import pytest

from kvadvise.errors import InputError
from kvadvise.gpus import CATALOG, GIB, MIB, lookup_gpu, match_device_name


@pytest.mark.parametrize("name, key", [
    ("h100", "H100-80GB-SXM"),
    ("H100-80GB", "H100-80GB-SXM"),
    ("NVIDIA H100 80GB HBM3", "H100-80GB-SXM"),
    ("h100 pcie", "H100-80GB-PCIe"),
    ("rtx4090", "RTX-4090"),
    ("RTX 4090", "RTX-4090"),
    ("NVIDIA GeForce RTX 4090", "RTX-4090"),
    ("a100-80gb", "A100-80GB"),
    ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
    ("NVIDIA A100 80GB PCIe", "A100-80GB-PCIe"),
    ("A100_40GB", "A100-40GB"),
    ("a10", "A10"),
    ("A10G", "A10G"),
    ("l4", "L4"),
    ("L40S", "L40S"),
    ("h200", "H200"),
    ("b200", "B200"),
    ("rtx 3090", "RTX-3090"),
    ("RTX5090", "RTX-5090"),
    ("rtx5070ti", "RTX-5070-Ti"),          # issue 5's own example: --gpu rtx5070ti,rtx5090
    ("RTX 5070 Ti", "RTX-5070-Ti"),
    ("rtx pro 6000", "RTX-PRO-6000"),
    ("MI300X", "MI300X"),
    ("AMD Instinct MI300X", "MI300X"),
])
def test_loose_names(name, key):
    assert lookup_gpu(name).key == key


def test_every_card_the_issue_lists_is_in_the_catalog():
    wanted = {"A10", "A10G", "L4", "L40S", "A100-40GB", "A100-80GB", "H100-80GB-PCIe", "H100-80GB-SXM", "H200",
              "B200", "RTX-3090", "RTX-4090", "RTX-5090", "RTX-PRO-6000", "MI300X"}
    assert wanted <= {spec.key for spec in CATALOG}


@pytest.mark.parametrize("name, logged_gib", [
    # vLLM's "total_gpu_memory (X GiB)" for the card, from shared/vllm-cases (case01, case12, case04, case08)
    ("A100-SXM4-80GB", 79.15), ("RTX 3090", 23.58),
    # an A100 80GB PCIe: torch printed 85093777408 bytes; a vLLM log on an unnamed 80 GB card shows 79.25 (case02)
    ("A100 80GB PCIe", 79.25),
])
def test_totals_print_as_vllm_logged_them(name, logged_gib):
    total = lookup_gpu(name).total_bytes
    # vLLM prints round(bytes / 2**30, 2): the stored bytes must fall in the log's rounding interval
    assert (logged_gib - 0.005) * GIB <= total < (logged_gib + 0.005) * GIB


def test_rtx_5070_ti_total():
    # nvidia-smi 16303 MiB less the 1 MiB NVML-to-CUDA gap of the RTX 4090: 16302 MiB = 15.92 GiB
    assert lookup_gpu("rtx5070ti").total_bytes == 16302 * MIB
    assert lookup_gpu("rtx5070ti").family == "blackwell"


def test_two_sources_keep_the_smaller_total():
    # H100 SXM: vLLM logged 79.22 GiB on one machine, torch printed 81089MB on another; H200: 139.81 GiB vs
    # 143156MB. A card assumed smaller can only make "fit" smaller: the catalog keeps the smaller figure.
    assert lookup_gpu("H100-80G").total_bytes == 81089 * MIB < (79.22 - 0.005) * GIB
    assert lookup_gpu("H200").total_bytes == 143156 * MIB < (139.81 - 0.005) * GIB


def test_log_figures_take_the_low_end_of_their_rounding():
    # 79.15 GiB printed covers [79.145, 79.155) GiB: the smallest whole MiB in it is ceil(79.145 * 1024) = 81045
    assert lookup_gpu("A100-SXM4-80GB").total_bytes == 81045 * MIB
    assert round((81045 - 1) / 1024, 2) == 79.14


def test_torch_printed_totals_are_whole_mib():
    # torch prints total_memory // 2**20 as "NNNNNMB": those entries must be exactly that many MiB
    assert lookup_gpu("L40S").total_bytes == 45589 * MIB
    assert lookup_gpu("A10G").total_bytes == 22587 * MIB
    assert lookup_gpu("B200").total_bytes == 182631 * MIB
    assert lookup_gpu("MI300X").total_bytes == 196592 * MIB
    assert lookup_gpu("A100-40GB").total_bytes == 40536 * MIB
    assert lookup_gpu("A100-80GB-PCIe").total_bytes == 85093777408


def test_catalog_is_well_formed():
    for spec in CATALOG:
        # the smallest card is a 16 GB one (RTX 5070 Ti, 15.92 GiB as CUDA reports it)
        assert isinstance(spec.total_bytes, int) and spec.total_bytes > 15 * GIB
        assert spec.source and spec.family in {"ampere", "ada", "hopper", "blackwell", "cdna3"}
        assert lookup_gpu(spec.key) is spec
        assert lookup_gpu(spec.device_name) is spec


def test_a100_name_hint_for_vllm_defaults():
    # vLLM keeps a100 cards on the small default batch even at 80 GB
    assert lookup_gpu("a100-80gb").vllm_name_is_a100
    assert lookup_gpu("a100 80gb pcie").vllm_name_is_a100
    assert not lookup_gpu("h100").vllm_name_is_a100


def test_unknown_name_lists_close_names():
    with pytest.raises(InputError) as raised:
        lookup_gpu("rtx 4080")
    assert raised.value.exit_code == 2
    assert "RTX-4090" in raised.value.message
    with pytest.raises(InputError) as raised:
        lookup_gpu("h10")
    assert "H100-80GB-SXM" in raised.value.message


def test_match_device_name():
    assert match_device_name("NVIDIA H200").key == "H200"
    assert match_device_name("Tesla V100-SXM2-16GB") is None
