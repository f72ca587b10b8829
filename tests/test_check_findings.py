"""Recomputing a vLLM start-up's budgets and naming its faults, on real logs and hand-built lines.

Real logs: tests/data/logs (sources in its README). Hand-built lines are marked as such; their expected
bytes are worked out in the test from the formula of ../shared/reference/vllm-accounting.md section 2,
independently of kvadvise.plan.advice.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from kvadvise.check.findings import ByteRange, check_startup, rules_for
from kvadvise.check.parser import GIB, Size, parse_log, parse_text
from kvadvise.errors import InputError
from kvadvise.model.spec import load_model_spec

LOGS = Path(__file__).parent / "data" / "logs"
CONFIGS = Path(__file__).parent / "data" / "configs"
MIB_150 = 150 * (1 << 20)


def check(name: str, **kwargs):
    return check_startup(parse_log(LOGS / name), **kwargs)


def codes(result) -> list[tuple[str, str]]:
    return sorted((f.code, f.severity) for f in result.findings)


def gib(text: str) -> Fraction:
    return Fraction(text) * GIB


# ---- the suggestion line agrees -----------------------------------------------------------------

def test_gemma3_4b_reference_log():
    """The log that started the project (built from the reference's figures, see tests/data/logs/README.md)."""
    result = check("gemma3-4b-suggestion.log")
    assert result.findings == ()
    rank = result.ranks[0]
    assert rank.recomputed_fit.contains(151519866880) and rank.recomputed_full.contains(169914314752)
    # by hand, from the printed figures' centres: int(178.36 GiB x 0.9) - 19.26 GiB - 150 MiB
    by_hand_fit = int(gib("178.36") * Fraction(9, 10)) - gib("19.26") - MIB_150
    by_hand_full = gib("177.66") - gib("19.26") - MIB_150
    assert rank.recomputed_fit.contains(int(by_hand_fit)) and rank.recomputed_full.contains(int(by_hand_full))
    # the interval is the figures' rounding: five figures at +-0.005 GiB, no looser
    assert rank.recomputed_fit.high - rank.recomputed_fit.low <= 5 * GIB // 100
    assert (result.suggested_fit_bytes, result.suggested_full_bytes) == (151519866880, 169914314752)
    assert result.recommended_kv_cache_memory_bytes == 151519866880  # vLLM's exact figure, since it agrees
    assert not result.has_errors


def test_qwen3_next_h200_case04():
    result = check("case04.log")
    assert result.findings == ()
    assert result.vllm_rules == "0.10.2"  # the log prints no version; the 0.10.2 wording says which
    rank = result.ranks[0]
    assert rank.recomputed_fit.contains(45175492096) and rank.recomputed_full.contains(59540753920)
    assert rank.budget == ByteRange.of(Size("44.59"))
    assert result.recommended_kv_cache_memory_bytes == 45175492096


def test_qwen3_235b_tp4_four_identical_ranks():
    result = check("qwen3-235b-tp4.log")
    assert result.findings == ()
    assert len(result.ranks) == 4 and result.bottleneck_rank is None
    assert all(r.recomputed_fit.contains(29407858586) and r.recomputed_full.contains(38581581312)
               for r in result.ranks)
    assert result.recommended_kv_cache_memory_bytes == 29407858586


# ---- graph memory counted twice -----------------------------------------------------------------

def test_gb300_peak_activation_holds_the_graph_estimate():
    """Real GB300 log: KV in use = requested - consumed - activation, so the 36.74 GiB activation holds the
    33.06 GiB estimate, and the suggestion subtracts the 8.57 GiB pool on top (vLLM issue #57936)."""
    result = check("gb300-decode-graph-estimate.log")
    assert codes(result) == [("graph_counted_twice", "error"), ("graph_estimate_off", "warning")]
    rank = result.ranks[0]
    assert rank.recomputed_fit.contains(40574291354)  # vLLM's arithmetic on its own terms is consistent ...
    # ... but the right figure is vLLM's own plus the estimate it subtracted twice (a second route)
    assert rank.corrected_fit.contains(40574291354 + Size("33.06").bytes)
    assert rank.corrected_full.contains(61814666240 + Size("33.06").bytes)
    # and by hand: 254.49 - 171.25 - (36.74 - 33.06) - 8.57 GiB - 150 MiB
    assert rank.corrected_fit.contains(int(gib("254.49") - gib("171.25") - gib("3.68") - gib("8.57") - MIB_150))
    assert result.recommended_kv_cache_memory_bytes == rank.corrected_fit.low
    estimate = next(f for f in result.findings if f.code == "graph_estimate_off")
    assert "3.9x" in estimate.message and "24.49 GiB" in estimate.message
    assert result.has_errors


def test_glm_tp3_ranks_differ_and_graphs_twice():
    result = check("glm53-tp3-ranks.log")
    found = codes(result)
    assert found.count(("graph_counted_twice", "error")) == 3
    assert ("rank_budgets_differ", "warning") in found and ("other_process_memory", "warning") in found
    differ = next(f for f in result.findings if f.code == "rank_budgets_differ")
    assert differ.rank == "Worker_TP1_EP1" and "17.73 GiB" in differ.message and "18.04 GiB" in differ.message
    others = [f for f in result.findings if f.code == "other_process_memory"]
    assert len(others) == 1 and "Worker_TP1_EP1 3.52 GiB" in others[0].message  # 94.97 - 91.45
    tp1 = next(r for r in result.ranks if r.rank.label == "Worker_TP1_EP1")
    # TP1 printed no estimate of its own: TP0's 0.38 GiB is used, and the message says so
    borrowed = next(f for f in result.findings if f.code == "graph_counted_twice" and f.rank == "Worker_TP1_EP1")
    assert "that Worker_TP0_EP0 printed" in borrowed.message
    # the message names what is counted twice (the 0.38 GiB estimate inside the activation plus the 0.25 GiB
    # pool) and the correction is the estimate's worth
    assert "0.38 GiB CUDA-graph estimate" in borrowed.message and "0.25 GiB graph pool on top" in borrowed.message
    assert "graph memory counted twice; with the estimate taken out of the activation" in borrowed.message
    assert tp1.corrected_fit.contains(18609223762 + Size("0.38").bytes)
    assert result.bottleneck_rank == "Worker_TP1_EP1"
    assert result.recommended_kv_cache_memory_bytes == tp1.corrected_fit.low


# Hand-built (not from a log): an 80 GiB card, free 79.5, util 0.9; weights 10, activation 2, non-torch 0.5,
# graphs 1 GiB. fit = int(80 GiB x 0.9) - 13.5 GiB - 150 MiB = 77309411328 - 14495514624 - 157286400.
RIGHT_FIT = 77309411328 - 14495514624 - MIB_150          # 62656610304
RIGHT_FULL = int(gib("79.5")) - 14495514624 - MIB_150     # 70709673984


def suggestion_line(fit: int, full: int, weights: str = "10.0") -> str:
    return ("(Worker_TP0 pid=1) INFO 01-01 00:00:00 [gpu_worker.py:391] Free memory on device (79.5/80.0 GiB) on "
            "startup. Desired GPU memory utilization is (0.9, 72.0 GiB). Actual usage is "
            f"{weights} GiB for weight, 2.0 GiB for peak activation, 0.5 GiB for non-torch memory, and 1.0 GiB for "
            f"CUDAGraph memory. Replace gpu_memory_utilization config with `--kv-cache-memory={fit}` to fit into "
            f"requested memory, or `--kv-cache-memory={full}` to fully utilize gpu memory.\n")


def test_hand_built_suggestion_agrees():
    assert (RIGHT_FIT, RIGHT_FULL) == (62656610304, 70709673984)
    result = check_startup(parse_text(suggestion_line(RIGHT_FIT, RIGHT_FULL)))
    assert result.findings == ()


def test_suggestion_that_subtracts_the_graphs_twice():
    printed_fit = RIGHT_FIT - GIB  # the 1 GiB of graphs taken off a second time
    result = check_startup(parse_text(suggestion_line(printed_fit, RIGHT_FULL)))
    assert codes(result) == [("graph_counted_twice", "error")]
    assert "'fit'" in result.findings[0].message
    assert result.ranks[0].corrected_fit.contains(RIGHT_FIT)
    assert result.recommended_kv_cache_memory_bytes <= RIGHT_FIT


def test_suggestion_off_by_something_else():
    result = check_startup(parse_text(suggestion_line(RIGHT_FIT + 3 * GIB, RIGHT_FULL)))
    assert codes(result) == [("suggestion_mismatch", "error")]
    assert "3.00 GiB" in result.findings[0].message


# ---- negative budgets, failures ------------------------------------------------------------------

def test_negative_budget_v0_case18():
    result = check("case18.log")
    assert codes(result) == [("negative_budget", "error")]  # once, though blocks are 0 and concurrency 0.00x too
    assert "-1.05 GiB" in result.findings[0].message


def test_negative_budget_v1_case28():
    assert codes(check("case28.log")) == [("negative_budget", "error")]


def test_negative_suggestion_hand_built():
    # weights 70 GiB: fit = 77309411328 - 73.5 GiB - 150 MiB < 0; full = 79.5 GiB - 73.5 GiB - 150 MiB
    fit = 77309411328 - int(gib("73.5")) - MIB_150
    full = int(gib("79.5")) - int(gib("73.5")) - MIB_150
    assert fit == -1767899136
    result = check_startup(parse_text(suggestion_line(fit, full, weights="70.0")))
    assert codes(result) == [("negative_budget", "error")]


def test_max_model_len_errors():
    case16 = check("case16.log")
    assert codes(case16) == [("max_model_len_too_long", "error")]
    assert "221,000" in case16.findings[0].message and "122,080" in case16.findings[0].message
    case20 = check("case20.log")
    assert codes(case20) == [("max_model_len_too_long", "error")]
    assert "81,536" in case20.findings[0].message


def test_engine_failed_case29():
    assert codes(check("case29.log")) == [("engine_failed", "error")]


def test_engine_failed_case29_names_the_kv_cause_with_the_model():
    """gpt-oss-120b, 1.71 GiB = [1,830,712,771, 1,841,450,189) B; page 16 * 2 * 8 * 64 * 2 = 32,768 B, 18 layers
    a group: 3,103..3,122 blocks; one 131,072-token request needs 8,192 full + cdiv(127 + 1024, 16) + 1 = 73
    sliding blocks = 8,265: 0.38x < 1, vLLM's check_enough_kv_cache_memory refusal (0.11 rules: tokens
    3,103 // 2 * 16 = 24,816 .. 3,122 // 2 * 16 = 24,976)."""
    result = check("case29.log", spec=load_model_spec(str(CONFIGS / "openai__gpt-oss-120b.json")))
    assert codes(result) == [("engine_failed", "error")]
    message = result.findings[0].message
    assert message.startswith("line 3: the engine failed to start: ")
    assert "24,816..24,976 tokens (0.38x < 1 at max_model_len 131,072" in message and "one request" in message


# ---- graph estimates, stages -----------------------------------------------------------------------

def test_graph_estimate_below_the_actual_pool():
    text = ("(Worker_TP0 pid=1) INFO 01-01 00:00:00 [gpu_model_runner.py:1] Estimated CUDA graph memory: 0.50 GiB total\n"
            "(Worker_TP0 pid=1) INFO 01-01 00:00:09 [gpu_worker.py:1] CUDA graph pool memory: 1.20 GiB (actual), "
            "0.50 GiB (estimated), difference: 0.70 GiB (58.3%).\n")
    result = check_startup(parse_text(text))
    assert codes(result) == [("graph_estimate_off", "warning")]
    assert "2.4x the 0.50 GiB estimate" in result.findings[0].message


def test_graph_estimate_within_one_and_a_half():
    text = ("(Worker_TP0 pid=1) INFO 01-01 00:00:09 [gpu_worker.py:1] CUDA graph pool memory: 0.24 GiB (actual), "
            "0.35 GiB (estimated), difference: 0.11 GiB.\n")
    assert check_startup(parse_text(text)).findings == ()


def test_pipeline_stages_with_different_budgets():
    text = ("(Worker_PP0 pid=611) INFO 01-01 00:00:00 [gpu_worker.py:563] Available KV cache memory: 6.92 GiB\n"
            "(Worker_PP1 pid=612) INFO 01-01 00:00:00 [gpu_worker.py:563] Available KV cache memory: 12.00 GiB\n")
    result = check_startup(parse_text(text))
    assert codes(result) == [("rank_budgets_differ", "warning")]
    assert result.findings[0].rank == "Worker_PP0"
    assert "pipeline stages" in result.findings[0].message and "pp-split" in result.findings[0].message


def test_equal_budgets_within_rounding_are_no_finding():
    text = ("(Worker_TP0 pid=1) INFO 01-01 00:00:00 [gpu_worker.py:1] Available KV cache memory: 6.92 GiB\n"
            "(Worker_TP1 pid=2) INFO 01-01 00:00:00 [gpu_worker.py:1] Available KV cache memory: 6.92 GiB\n")
    assert check_startup(parse_text(text)).findings == ()


# ---- V0 logs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["case01", "case02", "case03", "case05", "case06", "case12", "case14", "case34"])
def test_v0_budget_arithmetic_holds_in_real_logs(case):
    assert "budget_arithmetic_mismatch" not in [f.code for f in check(f"{case}.log").findings]


def test_v0_budget_arithmetic_mismatch():
    text = (LOGS / "case01.log").read_text().replace("KV Cache is 45.21GiB", "KV Cache is 40.00GiB")
    assert codes(check_startup(parse_text(text))) == [("budget_arithmetic_mismatch", "warning")]


def test_v0_fit_recomputed_with_the_suggestion_formula():
    result = check("case01.log")
    # by hand: int(79.15 GiB x 0.70) - (8.63 + 1.16 + 0.09 + 1.12 GiB of graphs) - 150 MiB
    by_hand = int(gib("79.15") * Fraction(7, 10)) - int(gib("11.00")) - MIB_150
    assert result.recomputed_fit.contains(by_hand)
    assert result.recomputed_full is None  # V0 prints no free memory at start
    assert result.suggested_fit_bytes is None


# ---- KV tokens against the model's config ----------------------------------------------------------

def test_case04_tokens_from_the_qwen3_next_config():
    """The case is Qwen3-Next-80B-A3B-Instruct; the Thinking model's config (tests/data/configs) has the same
    layers, heads and linear-attention state. TP 2 is read from the Worker_TP1 prefix."""
    spec = load_model_spec(str(CONFIGS / "Qwen__Qwen3-Next-80B-A3B-Thinking.json"))
    result = check("case04.log", spec=spec)
    kv = result.kv
    assert kv.agrees and kv.logged_tokens == 973760
    assert kv.tokens[0] <= 973760 <= kv.tokens[1]
    assert kv.num_blocks[0] <= 7162 <= kv.num_blocks[1]
    assert kv.max_concurrency[0] - 0.005 <= 14.77 <= kv.max_concurrency[1] + 0.005
    assert any("TP1" in note for note in kv.notes)
    assert "kv_tokens_mismatch" not in [f.code for f in result.findings]
    # the same budget under the newer rules (tokens = concurrency x max_model_len) disagrees: a finding
    newer = check("case04.log", spec=spec, vllm_version="0.33")
    assert [f.code for f in newer.findings] == ["kv_tokens_mismatch"]


def test_case14_llama2_blocks_from_the_config():
    spec = load_model_spec(str(CONFIGS / "meta-llama__Llama-2-7b-hf.json"))
    kv = check("case14.log", spec=spec).kv
    assert kv.agrees and kv.num_blocks[0] <= 7191 <= kv.num_blocks[1]  # README: 7,190-7,191 blocks


def test_case08_llama31_blocks_and_concurrency():
    spec = load_model_spec(str(CONFIGS / "meta-llama__Llama-3.1-8B.json"))
    kv = check("case08.log", spec=spec).kv
    assert kv.agrees and kv.num_blocks == (1948, 1953)  # README: 3.81 GiB -> 1,948-1,953 blocks; log 1,952


# A V0 start-up of gemma-2-9b-it written in the line format of case01/case02 (vLLM 0.6.4, worker.py and
# gpu_executor.py); the figures are made up, the blocks worked out by hand from V0's rule below.
GEMMA2_V0 = """\
INFO 11-20 10:00:00 llm_engine.py:249] Initializing an LLM engine (v0.6.4) with config: model='google/gemma-2-9b-it', speculative_config=None, tokenizer='google/gemma-2-9b-it', dtype=torch.bfloat16, max_seq_len=8192, tensor_parallel_size=1, pipeline_parallel_size=1, kv_cache_dtype=auto
INFO 11-20 10:00:30 worker.py:232] Memory profiling results: total_gpu_memory=79.15GiB initial_memory_usage=18.02GiB peak_torch_memory=19.01GiB memory_usage_post_profile=18.16GiB non_torch_memory=0.61GiB kv_cache_size=52.62GiB gpu_memory_utilization=0.90
INFO 11-20 10:00:30 gpu_executor.py:76] # GPU blocks: 10263, # CPU blocks: 780
INFO 11-20 10:00:30 gpu_executor.py:80] Maximum concurrency for 8192 tokens per request: 20.04x
"""


def test_v0_sliding_window_model_is_sized_as_v0_does():
    """V0's CacheEngine gives every one of gemma-2's 42 layers (21 of them sliding, window 4096) the whole
    context: a 16-token block is 42 x 2 x 16 x 8 heads x 256 x 2 B = 5,505,024 B, so 52.62 GiB
    ([52.615, 52.625) GiB) is 10,262-10,264 blocks, and 10,263 x 16 / 8,192 = 20.04x. The V1 grouping (21 + 21
    layers, a page per layer) would make it 20,524 blocks and call the log wrong."""
    spec = load_model_spec(str(CONFIGS / "google__gemma-2-9b-it.json"))
    result = check_startup(parse_text(GEMMA2_V0), spec=spec)
    kv = result.kv
    assert kv.num_blocks == (10262, 10264) and kv.logged_blocks == 10263
    assert kv.max_concurrency == (10262 * 16 / 8192, 10264 * 16 / 8192)
    assert kv.agrees and "kv_tokens_mismatch" not in [f.code for f in result.findings]
    assert any("V0 engine: 21 sliding_window layer(s)" in note for note in kv.notes)
    # the same lines from a V1 engine are sized with V1's grouping, and 10,263 blocks is then a finding
    v1 = GEMMA2_V0.replace("Initializing an LLM engine (v0.6.4)", "Initializing a V1 LLM engine (v0.10.2)")
    v1_result = check_startup(parse_text(v1), spec=spec)
    assert v1_result.kv.num_blocks[0] > 20000 and "kv_tokens_mismatch" in [f.code for f in v1_result.findings]


def test_case15_mismatch_says_the_other_ranks_were_not_printed():
    """case15 prints one budget (8.11 GiB) for a TP4 engine and 178,880 tokens, below the 180,816.. that 8.11
    GiB buys: the message says why (the minimum over ranks), not only that the figures differ."""
    spec = load_model_spec(str(Path(__file__).parent / "data" / "kv_configs" / "Qwen__Qwen3-235B-A22B.json"))
    finding = next(f for f in check("case15.log", spec=spec).findings if f.code == "kv_tokens_mismatch")
    assert "180,816..181,040 tokens" in finding.message
    assert "only 1 of 4 ranks printed a budget" in finding.message and "by the smallest" in finding.message
    # a single-rank engine with too few tokens gets no such excuse
    single = GEMMA2_V0.replace("# GPU blocks: 10263", "# GPU blocks: 9000")
    gemma = load_model_spec(str(CONFIGS / "google__gemma-2-9b-it.json"))
    lone = next(f for f in check_startup(parse_text(single), spec=gemma).findings if f.code == "kv_tokens_mismatch")
    assert "ranks printed" not in lone.message


# ---- rules and errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version, rules", [("0.7.2", "0.10.2"), ("0.10.2", "0.10.2"), ("0.11.0", "0.11"),
                                            ("0.12.0", "0.12"), ("0.33.0", "0.33"), ("0.7.3.dev233+gad5a35c2",
                                                                                     "0.10.2")])
def test_rules_follow_the_printed_version(version, rules):
    text = (f"INFO 01-01 00:00:00 [core.py:1] Initializing a V1 LLM engine (v{version}) with config: model='m'\n"
            "INFO 01-01 00:00:01 [gpu_worker.py:1] Available KV cache memory: 1.00 GiB\n")
    startup = parse_text(text).startups[0]
    assert rules_for(startup) == (rules, None)


def test_a_release_we_do_not_mirror_is_mapped_with_a_warning():
    """case31.log is vLLM 0.19.0: checked with the 0.33 rules, and the warning says so and what may differ."""
    result = check("case31.log")
    assert result.vllm_rules == "0.33"
    note = next(n for n in result.notes if "0.19.0" in n)
    assert "not a release kvadvise mirrors" in note and "0.33 rules" in note
    # 0.19 < 0.21: graphs not yet subtracted; < 0.28: no 160 GiB batch tier; the ratio and Mamba changes named
    for fact in ("PR #36684", "PR #50991", "since 0.21", "since 0.28"):
        assert fact in note
    text = ("INFO 01-01 00:00:00 [core.py:1] Initializing a V1 LLM engine (v0.29.1) with config: model='m'\n"
            "INFO 01-01 00:00:01 [gpu_worker.py:1] Available KV cache memory: 1.00 GiB\n")
    rules, note = rules_for(parse_text(text).startups[0])
    assert rules == "0.33" and "PR #36684" in note and "since 0.21" not in note and "since 0.28" not in note
    newer = parse_text(text.replace("v0.29.1", "v0.34.0")).startups[0]
    assert rules_for(newer)[0] == "0.33" and "newer than the rules kvadvise mirrors" in rules_for(newer)[1]


def test_no_startup_is_input_error():
    with pytest.raises(InputError, match="no vLLM start-up lines"):
        check_startup(parse_text("hello\nworld\n"))


def test_data_parallel_engines_are_not_compared():
    """Each DP engine sizes its own KV cache: different budgets across DP ranks are no fault (hand-built)."""
    text = ("(EngineCore_DP0 pid=1) INFO 01-01 00:00:00 [gpu_worker.py:1] Available KV cache memory: 6.92 GiB\n"
            "(EngineCore_DP1 pid=2) INFO 01-01 00:00:00 [gpu_worker.py:1] Available KV cache memory: 12.00 GiB\n")
    assert check_startup(parse_text(text)).findings == ()
