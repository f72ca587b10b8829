"""vLLM's suggestion-line arithmetic, checked against the logs it must reproduce."""

import json
from pathlib import Path

import pytest

from kvadvise.plan.advice import (REDUNDANCY_BUFFER_BYTES, DeviceBudget, NonKvMemory, advise,
                                  gate_utilization, requested_memory_bytes, served_model_name,
                                  vllm_serve_command)

GIB = 1 << 30
HALF_CENT = GIB // 200  # vLLM prints GiB rounded to 2 decimals: each figure is known to +-0.005 GiB


def test_buffer_is_150_mib():
    assert REDUNDANCY_BUFFER_BYTES == 157286400


def test_exact_bytes_by_hand():
    memory = NonKvMemory(weights_bytes=10 * GIB, activation_peak_bytes=2 * GIB, non_torch_bytes=GIB // 2,
                         cuda_graph_bytes=GIB // 4)
    device = DeviceBudget(total_bytes=80 * GIB, free_bytes_at_start=79 * GIB, gpu_memory_utilization=0.9)
    advice = advise(memory, device, "0.11")
    # 80 GiB * 0.9 = 77309411328 exactly; non-KV = 12.75 GiB = 13690208256
    assert advice.requested_bytes == 77309411328
    assert advice.non_kv_bytes == 13690208256
    assert advice.fit_kv_cache_memory_bytes == 77309411328 - 13690208256 - 157286400
    assert advice.full_kv_cache_memory_bytes == 79 * GIB - 13690208256 - 157286400


def test_requested_memory_int_vs_ceil():
    total = 85899345921  # 80 GiB + 1 byte: total * 0.9 is not a whole number
    assert requested_memory_bytes(total, 0.9, "0.11") == int(total * 0.9)
    assert requested_memory_bytes(total, 0.9, "0.33") == int(total * 0.9) + 1


def _extremes(total, free, util, weights, activation, non_torch, graphs, version):
    """Advice at both ends of every logged figure's rounding interval."""
    results = []
    for direction in (-1, 1):
        # direction -1: the card at the bottom of its interval and every term at the top (the lowest advice)
        card = lambda g: int((g + direction * 0.005) * GIB)
        term = lambda g: int((g - direction * 0.005) * GIB)
        memory = NonKvMemory(term(weights), term(activation), term(non_torch), term(graphs))
        device = DeviceBudget(card(total), card(free), util)
        results.append(advise(memory, device, version))
    return results


def test_gemma3_4b_log_that_started_the_project():
    # reference section 2: gemma-3-4b-it on a 178.36 GiB device, free 177.66, util 0.9
    low, high = _extremes(178.36, 177.66, 0.9, 8.58, 9.96, 0.07, 0.65, "0.10.2")
    assert low.fit_kv_cache_memory_bytes <= 151519866880 <= high.fit_kv_cache_memory_bytes
    assert low.full_kv_cache_memory_bytes <= 169914314752 <= high.full_kv_cache_memory_bytes
    # and the interval is tight: 5 figures at +-0.005 GiB each, no looser
    assert high.fit_kv_cache_memory_bytes - low.fit_kv_cache_memory_bytes < 0.06 * GIB


def test_qwen3_next_h200_suggestion_line():
    cases = json.loads((Path(__file__).parent / "data" / "advice_cases.json").read_text())
    case = next(c for c in cases if c["id"] == "case04")
    util = case["gpu_memory_utilization"]
    low, high = _extremes(case["gpu_total_gib"], case["startup_free_gib"], util, case["suggestion_line_weights_gib"],
                          case["activation_peak_gib"], case["non_torch_gib"], case["cudagraph_gib"], "0.10.2")
    assert low.fit_kv_cache_memory_bytes <= case["suggest_kv_cache_memory_fit_bytes"] <= high.fit_kv_cache_memory_bytes
    assert low.full_kv_cache_memory_bytes <= case["suggest_kv_cache_memory_full_bytes"] <= high.full_kv_cache_memory_bytes


def test_gate_utilization_passes_vllm_gate():
    total, free = 80 * GIB, int(79.5 * GIB)
    utilization = gate_utilization(total, free, "0.33")
    assert utilization == 0.99
    assert requested_memory_bytes(total, utilization, "0.33") <= free
    assert requested_memory_bytes(total, utilization + 0.01, "0.33") > free
    assert gate_utilization(total, GIB // 1000, "0.33") is None


def test_serve_command():
    line = vllm_serve_command("meta-llama/Llama-3.1-8B", 123456, gpu_memory_utilization=0.9,
                              tensor_parallel_size=2, max_model_len=8192)
    assert line == ("vllm serve meta-llama/Llama-3.1-8B --tensor-parallel-size 2 --max-model-len 8192 "
                    "--gpu-memory-utilization 0.90 --kv-cache-memory-bytes 123456")


def test_fit_never_exceeds_what_is_free():
    # 60 GiB free on an 80 GiB card at util 0.9: vLLM's formula gives fit 72 GiB - non-KV, more than is free
    memory = NonKvMemory(weights_bytes=16 * GIB, activation_peak_bytes=GIB, non_torch_bytes=0, cuda_graph_bytes=0)
    device = DeviceBudget(total_bytes=80 * GIB, free_bytes_at_start=60 * GIB, gpu_memory_utilization=0.9)
    advice = advise(memory, device, "0.11")
    assert advice.vllm_fit_kv_cache_memory_bytes == int(80 * GIB * 0.9) - 17 * GIB - REDUNDANCY_BUFFER_BYTES
    assert advice.full_kv_cache_memory_bytes == 43 * GIB - REDUNDANCY_BUFFER_BYTES
    assert advice.fit_kv_cache_memory_bytes == advice.full_kv_cache_memory_bytes
    assert advice.capped_by_free_memory
    assert advice.gate_gpu_memory_utilization == 0.75   # 80 * 0.75 = 60: exactly what is free


def test_gate_compares_the_exact_product():
    # free is one byte short of total * 0.5: 0.5 fails, 0.49 passes, whatever the rounding rule
    total = 2 * 10**9 + 2
    free = total // 2 - 1
    for version in ("0.11", "0.33"):
        assert gate_utilization(total, free, version) == 0.49
    assert gate_utilization(total, total // 2, "0.11") == 0.5


@pytest.mark.parametrize("model_id, raw, expected", [
    ("meta-llama/Llama-3.1-8B", {}, "meta-llama/Llama-3.1-8B"),
    ("/models/llama-8b", {}, "/models/llama-8b"),
    # a quantized upload names its full-precision source: never a stand-in for the checkpoint sized
    ("configs/genz-gptq.json", {"_name_or_path": "budecosystem/genz-70b"}, "MODEL"),
    ("configs/llama.json", {"_name_or_path": "/opt/ckpts/llama"}, "MODEL"),
    ("configs/llama.json", {}, "MODEL"),
])
def test_served_model_name(model_id, raw, expected):
    name, warning = served_model_name(model_id, raw)
    assert name == expected
    assert (warning is None) == (model_id == expected)
    if raw.get("_name_or_path"):
        assert raw["_name_or_path"] in warning
