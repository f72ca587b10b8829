"""The CUDA path of the profile session, through a fake device that behaves like torch's caching allocator.

Checks the phases run in vLLM's order, measure what vLLM measures, and that the arithmetic is right:
every expected figure below is worked out by hand from what the scripted workload allocates.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvadvise.model.spec import load_model_spec
from kvadvise.plan.advice import REDUNDANCY_BUFFER_BYTES
from kvadvise.profile.session import (ProfileOutOfMemory, ProfileSettings, run_profile, shape_note,
                                      stage_layers)
from fake_device import GIB, KIB, MIB, FakeCudaDevice, ScriptedWorkload

DATA = Path(__file__).parent / "data"
LLAMA_1B = DATA / "configs" / "meta-llama__Llama-3.2-1B.json"
GEMMA_4B = DATA / "configs" / "google__gemma-3-4b-it.json"
QWEN3_NEXT = DATA / "configs" / "Qwen__Qwen3-Next-80B-A3B-Thinking.json"


def _settings(**overrides):
    values = dict(model_id="meta-llama/Llama-3.2-1B", max_num_batched_tokens=2048, max_num_seqs=256,
                  cuda_graph_sizes=(4, 2, 1), vllm_version="0.11")
    values.update(overrides)
    return ProfileSettings(**values)


@pytest.fixture(scope="module")
def llama_spec():
    return load_model_spec(str(LLAMA_1B))


def test_phases_order_and_arithmetic(llama_spec):
    fake = FakeCudaDevice(80 * GIB, context_bytes=500 * MIB, cublas_workspace_bytes=8 * MIB)
    workload = ScriptedWorkload(fake)
    result = run_profile(_settings(), llama_spec, fake, workload)
    memory = result.report.memory

    # weights: blocks rounded to 512 bytes -> 1 GiB + 100 MiB + 1024 (the 1000-byte tensor)
    assert memory.weights_bytes == GIB + 100 * MIB + 1024
    # peak during the run: the 8 MiB cuBLAS workspace of the run's first matmul (as in vLLM, whose first
    # matmul is in its profile run) + a (200) + b (300) live together = 508 MiB above the weights
    assert memory.activation_peak_bytes == 508 * MIB
    # non-torch: only the 64 MiB taken during the run (the workspace is the caching allocator's)
    assert memory.non_torch_bytes == 64 * MIB
    # graphs, by hand (sizes 4, 2, 1; step = 3 MiB x size intermediate, then 1 MiB x size output):
    #   each warm-up's cached blocks go back at torch.cuda.graph's entry (synchronize + empty_cache);
    #   captures share one pool: a 12 MiB segment (size 4's intermediate, reused by sizes 2 and 1 and by
    #   size 2's output), a 20 MiB segment for size 4's 4 MiB output (the allocator's kLargeBuffer for
    #   requests of 1-10 MiB), a 2 MiB small-pool segment for size 1's 1 MiB output -> 34 MiB; the 40 MiB
    #   static buffer is allocated before the first snapshot of the phase, so it is not in the drop
    assert memory.cuda_graph_bytes == 34 * MIB
    assert {memory.weights_method, memory.activation_peak_method, memory.non_torch_method,
            memory.cuda_graph_method} == {"measured"}

    # the device as vLLM's start-up snapshot sees it: after init (the context; no cuBLAS handle yet)
    assert result.report.device.total_bytes == 80 * GIB
    assert result.report.device.free_bytes_at_start == 80 * GIB - 500 * MIB
    non_kv = GIB + 100 * MIB + 1024 + 508 * MIB + 64 * MIB + 34 * MIB
    assert result.report.advice.fit_kv_cache_memory_bytes == int(80 * GIB * 0.9) - non_kv - 150 * MIB
    assert result.report.advice.full_kv_cache_memory_bytes == 80 * GIB - 500 * MIB - non_kv - 150 * MIB

    # order: init, then the baseline snapshot, load, the profile run between cache empties and snapshots,
    # then graphs, then release
    calls = [c for c in fake.calls if c in ("init", "reset_peak_memory_stats", "empty_cache") or
             c.startswith(("workload.", "capture_graphs"))]
    assert calls == ["init", "empty_cache", "reset_peak_memory_stats", "workload.load",
                     "workload.prepare_dummy_run", "empty_cache", "reset_peak_memory_stats", "workload.dummy_run:2048:256", "empty_cache",
                     "empty_cache", "workload.prepare_graph_capture", "capture_graphs:4,2,1", "empty_cache",
                     "workload.release", "empty_cache"]
    assert fake.calls.index("release_workspaces") > fake.calls.index("workload.release")
    # every snapshot synchronises first, then reads free/total, reserved, allocated, peak
    first = fake.calls.index("synchronize")
    assert fake.calls[first:first + 5] == ["synchronize", "mem_get_info", "memory_reserved", "memory_allocated",
                                           "max_memory_allocated"]
    # everything returned to the driver at the end
    assert fake.allocated == 0 and fake.reserved == 0


def test_tokens_and_concurrency_from_kv_plan(llama_spec):
    fake = FakeCudaDevice(80 * GIB)
    result = run_profile(_settings(max_model_len=8192), llama_spec, fake, ScriptedWorkload(fake))
    fit = result.report.fit
    # Llama-3.2-1B: 16 layers x 2 x 8 kv heads x 64 x 2 bytes x 16 tokens = 524288 bytes per block (all layers)
    assert fit.num_blocks == fit.kv_cache_memory_bytes // 524288
    assert fit.tokens == fit.num_blocks * 16
    assert fit.max_concurrency == pytest.approx(fit.num_blocks / (8192 // 16))
    assert f"--kv-cache-memory-bytes {fit.kv_cache_memory_bytes}" in fit.command
    assert "--max-model-len 8192" in fit.command


def test_enforce_eager_skips_graphs(llama_spec):
    fake = FakeCudaDevice(80 * GIB)
    result = run_profile(_settings(enforce_eager=True), llama_spec, fake, ScriptedWorkload(fake))
    assert result.report.memory.cuda_graph_bytes == 0
    assert result.report.memory.cuda_graph_method == "not_applicable"
    assert not any(c.startswith("capture_graphs") or c == "workload.prepare_graph_capture" for c in fake.calls)
    assert "--enforce-eager" in result.report.fit.command


def test_graph_capture_failure_falls_back_to_estimate(llama_spec):
    fake = FakeCudaDevice(80 * GIB)
    workload = ScriptedWorkload(fake, graph_fails=True, eager_peak=7 * MIB)
    result = run_profile(_settings(), llama_spec, fake, workload)
    assert result.report.memory.cuda_graph_bytes == 7 * MIB
    assert result.report.memory.cuda_graph_method == "estimated"
    assert "workload.eager_decode_peak:4" in fake.calls       # the largest size
    assert any("ESTIMATED" in w for w in result.report.warnings)
    assert fake.allocated == 0 and fake.reserved == 0


def test_default_batch_and_graph_sizes_follow_vllm(llama_spec):
    fake = FakeCudaDevice(80 * GIB, device_name="NVIDIA H100 80GB HBM3")
    workload = ScriptedWorkload(fake, step_intermediate=4 * KIB, step_output=KIB)
    result = run_profile(_settings(max_num_batched_tokens=None, max_num_seqs=None, cuda_graph_sizes=None),
                         llama_spec, fake, workload)
    # vLLM 0.11: >= 70 GiB and not an A100 -> 8192 tokens, 1024 seqs; graphs up to min(2 x 1024, 512)
    assert (result.report.max_num_batched_tokens, result.report.max_num_seqs) == (8192, 1024)
    assert "workload.dummy_run:8192:1024" in fake.calls
    capture = next(c for c in fake.calls if c.startswith("capture_graphs:"))
    sizes = [int(s) for s in capture.split(":")[1].split(",")]
    assert sizes == sorted([1, 2, 4] + list(range(8, 513, 8)), reverse=True)


@pytest.mark.parametrize("phase,tag", [("load", "weights"), ("profile_run", "activation"),
                                       ("cuda_graphs", "graph")])
def test_out_of_memory_names_phase_keeps_figures_and_releases(llama_spec, phase, tag):
    fake = FakeCudaDevice(80 * GIB)
    fake.fail_on_tag = tag
    with pytest.raises(ProfileOutOfMemory) as caught:
        run_profile(_settings(), llama_spec, fake, ScriptedWorkload(fake))
    error = caught.value
    assert error.phase == phase and error.exit_code == 3
    measured = error.partial.measurements
    expected_done = {"load": 0, "profile_run": 1, "cuda_graphs": 3}[phase]
    values = [measured.weights_bytes, measured.activation_peak_bytes, measured.non_torch_bytes,
              measured.cuda_graph_bytes]
    assert values[:expected_done] == [GIB + 100 * MIB + 1024, 500 * MIB, 64 * MIB][:expected_done]
    assert values[expected_done:] == [None] * (4 - expected_done)
    assert error.partial.device.free_bytes_at_start == 80 * GIB - 500 * MIB
    assert fake.allocated == 0 and fake.reserved == 0
    assert fake.calls[-3:] == ["workload.release", "release_workspaces", "empty_cache"]


def test_real_out_of_memory_when_the_card_is_too_small(llama_spec):
    fake = FakeCudaDevice(2 * GIB, context_bytes=500 * MIB)   # 1.1 GiB of weights fit, the run does not
    with pytest.raises(ProfileOutOfMemory) as caught:
        run_profile(_settings(), llama_spec, fake, ScriptedWorkload(fake, run=(("a", GIB),)))
    assert caught.value.phase == "profile_run"
    assert caught.value.partial.measurements.weights_bytes == GIB + 100 * MIB + 1024
    assert fake.allocated == 0 and fake.reserved == 0


def test_second_run_finds_the_card_as_the_first_did(llama_spec):
    fake = FakeCudaDevice(80 * GIB, cublas_workspace_bytes=8 * MIB)
    workload = lambda: ScriptedWorkload(fake, run_driver_bytes=0)   # noqa: E731 (torch memory only)
    first = run_profile(_settings(), llama_spec, fake, workload())
    after_first = (fake.free, fake.reserved, fake.allocated)
    fake.fail_on_tag = "activation"
    with pytest.raises(ProfileOutOfMemory):
        run_profile(_settings(), llama_spec, fake, workload())
    # the cuBLAS workspace of each run's first matmul is returned at release, so each run allocates it anew
    assert (fake.free, fake.reserved, fake.allocated) == after_first == (80 * GIB - 500 * MIB, 0, 0)
    fake.fail_on_tag = None
    third = run_profile(_settings(), llama_spec, fake, workload())
    assert third.report.device == first.report.device
    assert third.report.memory == first.report.memory
    assert third.report.advice == first.report.advice


def test_does_not_fit_is_exit_2_with_what_would_help(llama_spec):
    fake = FakeCudaDevice(4 * GIB)
    result = run_profile(_settings(), llama_spec, fake, ScriptedWorkload(fake, weights=(3 * GIB,)))
    advice = result.report.advice
    assert advice.fit_kv_cache_memory_bytes < 0
    error = result.does_not_fit
    assert error is not None and error.exit_code == 2
    short = -advice.fit_kv_cache_memory_bytes
    assert f"short by {short / GIB:.2f} GiB" in error.message
    assert "fp8" in error.hint and "--max-num-batched-tokens" in error.hint and "tensor" in error.hint
    assert result.report.fit.command is None and result.report.fit.tokens is None


def test_other_processes_and_nvml_disagreement_are_warnings(llama_spec):
    from kvadvise.profile.nvml import NvmlInfo, OtherProcess

    fake = FakeCudaDevice(80 * GIB, other_processes_bytes=3 * GIB)

    def reader(device):
        free, total = device.mem_get_info()
        return NvmlInfo("NVIDIA H100 80GB HBM3", "550.54.15", False, total, free - GIB,
                        (OtherProcess(4242, 3 * GIB),), own_process_listed=True)

    result = run_profile(_settings(), llama_spec, fake, ScriptedWorkload(fake), nvml_reader=reader)
    assert result.report.device.other_processes_bytes == 3 * GIB
    assert result.report.device.driver_version == "550.54.15"
    text = " ".join(result.report.warnings)
    assert "other process" in text and "more than 1% apart" in text


def test_stage_layers_and_shape_note():
    assert stage_layers((48, 16), 0) == tuple(range(48))
    assert stage_layers((48, 16), 1) == tuple(range(48, 64))
    assert shape_note(_settings()) is None
    note = shape_note(_settings(tensor_parallel_size=2, partition=(8, 8), stage=1))
    assert "shape-equivalent" in note and "collective" in note and "stage 1 of 2" in note


# ---- the logs: a profile whose measured terms are the logged ones must give vLLM's logged suggestion ----

def _gib_interval(figure, direction):
    """One end of a 2-decimal GiB figure's rounding interval, as whole 2 MiB segments inside it."""
    low, high = (figure - 0.005) * GIB, (figure + 0.005) * GIB
    value = high if direction > 0 else low
    segment = 2 * MIB
    return int(value // segment * segment) if direction > 0 else int(-(-value // segment) * segment)


def _profile_with_logged_terms(spec, total_gib, free_gib, util, weights, activation, non_torch, graphs, lowest):
    """Run the session on a fake card whose total/free and workload reproduce the logged figures.

    lowest=True: the card at the bottom of its interval, every term at the top (the lowest advice).
    """
    card, term = (-1, 1) if lowest else (1, -1)
    total = _gib_interval(total_gib, card)
    free = _gib_interval(free_gib, card)
    fake = FakeCudaDevice(total, context_bytes=total - free)
    workload = ScriptedWorkload(fake, weights=(_gib_interval(weights, term),),
                                run=(("a", _gib_interval(activation, term)), ("-a",)),
                                run_driver_bytes=_gib_interval(non_torch, term), static_bytes=2 * MIB,
                                step_intermediate=_gib_interval(graphs, term), step_output=0,
                                capture_only=True)
    settings = _settings(model_id="google/gemma-3-4b-it", gpu_memory_utilization=util, cuda_graph_sizes=None,
                         vllm_version="0.10.2", max_num_batched_tokens=8192, max_num_seqs=1024)
    return run_profile(settings, spec, fake, workload, graph_sizes=lambda seqs, tokens: [1])


def test_gemma3_4b_log_reproduced_through_the_session():
    # reference section 2: total 178.36 GiB, free 177.66, util 0.9, weights 8.58, activation 9.96,
    # non-torch 0.07, graphs 0.65 -> fit 151519866880, full 169914314752
    spec = load_model_spec(str(GEMMA_4B))
    figures = (178.36, 177.66, 0.9, 8.58, 9.96, 0.07, 0.65)
    low = _profile_with_logged_terms(spec, *figures, lowest=True).report
    high = _profile_with_logged_terms(spec, *figures, lowest=False).report
    for report, expected in ((low, (8.58, 9.96, 0.07, 0.65)), (high, (8.58, 9.96, 0.07, 0.65))):
        terms = (report.memory.weights_bytes, report.memory.activation_peak_bytes, report.memory.non_torch_bytes,
                 report.memory.cuda_graph_bytes)
        assert [round(t / GIB, 2) for t in terms] == list(expected)   # the fake measured what the log says
        assert round(report.device.total_bytes / GIB, 2) == 178.36
        assert round(report.device.free_bytes_at_start / GIB, 2) == 177.66
    assert low.advice.fit_kv_cache_memory_bytes <= 151519866880 <= high.advice.fit_kv_cache_memory_bytes
    assert low.advice.full_kv_cache_memory_bytes <= 169914314752 <= high.advice.full_kv_cache_memory_bytes
    # no looser than the log's rounding: 7 figures of +-0.005 GiB
    assert high.advice.fit_kv_cache_memory_bytes - low.advice.fit_kv_cache_memory_bytes <= 0.06 * GIB
    assert low.advice.redundancy_buffer_bytes == REDUNDANCY_BUFFER_BYTES


def test_qwen3_next_h200_case04_suggestion_line():
    case = next(c for c in json.loads((DATA / "profile_cases.json").read_text()) if c["id"] == "case04")
    spec = load_model_spec(str(QWEN3_NEXT))
    figures = (case["gpu_total_gib"], case["startup_free_gib"], case["gpu_memory_utilization"],
               case["suggestion_line_weights_gib"], case["activation_peak_gib"], case["non_torch_gib"],
               case["cudagraph_gib"])
    low = _profile_with_logged_terms(spec, *figures, lowest=True).report.advice
    high = _profile_with_logged_terms(spec, *figures, lowest=False).report.advice
    assert low.fit_kv_cache_memory_bytes <= case["suggest_kv_cache_memory_fit_bytes"] <= high.fit_kv_cache_memory_bytes
    assert low.full_kv_cache_memory_bytes <= case["suggest_kv_cache_memory_full_bytes"] <= \
        high.full_kv_cache_memory_bytes


def test_real_workload_runs_every_phase_and_its_decode_steps(tmp_path):
    """TorchWorkload on host tensors, sequenced by the fake CUDA device: build, persistent inputs, dummy run,
    the decode steps graph capture would record (one per size, largest first), and release."""
    from kvadvise.profile.session import TorchWorkload
    from tiny_models import tiny_config, tiny_spec

    spec = tiny_spec(tiny_config("llama"), model_id="tiny-llama")
    fake = FakeCudaDevice(80 * GIB)
    fake.torch_device = "cpu"          # the model's tensors live on the host; the fake only sequences
    settings = _settings(model_id="tiny-llama", load_format="dummy", max_num_batched_tokens=64, max_num_seqs=8,
                         cuda_graph_sizes=(8, 4, 1))
    workload = TorchWorkload(spec, settings, fake)
    outputs = {}
    original = fake.capture_graphs

    def capture(make_step, sizes):
        for size in sorted(sizes, reverse=True):
            outputs[size] = tuple(make_step(size)().shape)
        return original(make_step, sizes)

    fake.capture_graphs = capture
    result = run_profile(settings, spec, fake, workload)
    # the decode step is the decoder on `size` sequences of one token each, laid out flat as vLLM does
    # (one row of `size` tokens, each attending over its slot of the static KV cache): hidden states
    # (1, size, hidden=64)
    assert outputs == {8: (1, 8, 64), 4: (1, 4, 64), 1: (1, 1, 64)}
    graphs = next(p for p in result.phases if p.name == "cuda_graphs")
    # static buffers for the largest size: int32 ids + int64 positions = 8 x 12 bytes, and the KV cache
    # (2 layers x key and value x 8 sequences x 2 kv heads x 1 token x head_dim 16 x bf16 = 2048 bytes)
    assert graphs.detail["static_buffers_bytes"] == 8 * 4 + 8 * 8 + 2 * 2 * 8 * 2 * 1 * 16 * 2
    assert workload.model is None      # released


def test_one_cuda_graph_size_is_the_largest_with_vllms_pattern_below(llama_spec):
    fake = FakeCudaDevice(80 * GIB)
    run_profile(_settings(cuda_graph_sizes=(24,)), llama_spec, fake,
                ScriptedWorkload(fake, step_intermediate=KIB, step_output=KIB))
    # vLLM 0.11 (--cuda-graph-sizes 24): [1, 2, 4] + range(8, 24 + 1, 8), captured largest first
    assert "capture_graphs:24,16,8,4,2,1" in fake.calls
