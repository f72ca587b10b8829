"""`kvadvise pp-split`: JSON contract, the issue's worked cases through the CLI, stage profiles, bad input,
CI gates, and speed (arithmetic only: no torch on any path that exists today)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvadvise.cli import app
from kvadvise.gpus import lookup_gpu
from kvadvise.report.schema import validate

CONFIGS = Path(__file__).parent / "data" / "pp_configs"
QWEN32 = str(CONFIGS / "Qwen3-32B-FP8.config.json")   # 64 layers, 8 KV heads x 128, bf16 KV
QWEN8 = str(CONFIGS / "Qwen3-8B.config.json")         # 36 layers, 8 KV heads x 128, bf16
LLAMA70 = str(CONFIGS / "Llama-3.1-70B.config.json")  # 80 layers, 8 KV heads x 128, bf16, vocab 128256
GIB = 1 << 30
MIB = 1 << 20
KIB = 1 << 10
runner = CliRunner()


# the scripted stage figures are the whole terms with the V1 runner; Model Runner V2 (0.33's default) adds its
# computed state to non-torch memory (test_measured_here_adds_model_runner_v2_state)
V1_RUNNER = ("--model-runner", "v1")
# vLLM 0.33's Model Runner V2 state that vLLM counts with non-torch memory (kvadvise/plan/vllm_buffers.py), by
# hand: request state 2 R + R int64 + R, inputs T x 13 + (R + 1) + 2 R (int32 unless said); at R 4, T 2048
RUNNER_INPUTS_4_2048 = 4 * 2 * 4 + 8 * 4 + 4 * 4 + 13 * 2048 + 4 * 5 + 4 * 2 * 4


def runner_sampler_state(r: int, v: int) -> int:
    """The sampler's tables (last stage): bin counts R x V, two R x ceil(V/32) masks, four R x 1024 tables,
    two R x 128, R x 129 offsets and R structured indices, int32."""
    return 4 * (r * v + 2 * r * -(-v // 32) + 4 * r * 1024 + 2 * r * 128 + r * 129 + r)


def run(*args: str):
    return runner.invoke(app, ["pp-split", *args])


def run_json(*args: str, exit_code: int = 0) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == exit_code, result.output
    document = json.loads(result.stdout)
    assert validate(document, "pp_split", strict=True) == []   # strict: every key emitted is documented
    return document


def test_schema_coverage_check_finds_an_undeclared_key():
    document = run_json(QWEN32, "--partition", "48,16", "--kv-cache-memory-bytes", "8GiB")
    document["stages"][1]["surprise"] = 1
    document["uniform"]["surprise"] = 2
    assert sorted(validate(document, "pp_split", strict=True)) == [
        "$.stages[1]: unexpected key 'surprise'",             # stages forbid extra keys outright
        "$.uniform: key 'surprise' is not in the schema"]     # elsewhere strict validation catches them


def test_48_16_on_equal_cards_from_parameter_counts():
    document = run_json(QWEN32, "--partition", "48,16", "--gpu-memory", "32GiB", "--parameter-counts")
    assert document["command"] == "pp-split"
    stage0, stage1 = document["stages"]
    assert (stage0["first_layer"], stage0["layers"], stage1["first_layer"], stage1["layers"]) == (0, 48, 48, 16)
    # 2 (K and V) x 8 heads x 128 x 2 bytes = 4 KiB per layer per token
    assert stage0["kv_bytes_per_token"] == 48 * 4 * KIB and stage1["kv_bytes_per_token"] == 16 * 4 * KIB
    assert stage0["total_bytes"] == stage1["total_bytes"] == 32 * GIB
    # one budget on both ranks: stage 1 turns it into three times stage 0's blocks (to the block)
    budget = document["uniform"]["kv_cache_memory_bytes"]
    assert stage0["uniform_num_blocks"] == budget // (3 * MIB) == document["uniform"]["num_blocks"]
    assert stage1["uniform_num_blocks"] == budget // MIB
    assert 3 * stage0["uniform_num_blocks"] <= stage1["uniform_num_blocks"] < 3 * stage0["uniform_num_blocks"] + 3
    # proportional budgets 3:1 for the same capacity; the surplus of stage 1 is what it frees
    blocks = document["proportional"]["num_blocks"]
    assert stage0["proportional_kv_cache_memory_bytes"] == blocks * 3 * MIB
    assert stage1["proportional_kv_cache_memory_bytes"] == blocks * MIB
    assert document["proportional"]["saved_bytes"] == sum(s["idle_bytes_uniform"] for s in document["stages"])
    assert document["bottleneck_stage"] == 0
    assert stage0["methods"]["non_kv"] == "estimated" and stage0["methods"]["card"] == "gpu-memory option"
    # the suggestion moves toward 32,32 and says what it gains
    split = document["suggested_partition"]
    assert sum(split) == 64 and abs(split[0] - 32) <= 2
    assert document["suggested_tokens"] > document["uniform"]["tokens"]
    assert document["suggestion"]["gain_tokens"] == document["suggested_tokens"] - document["uniform"]["tokens"]
    assert document["suggestion"]["gain_percent"] > 100
    assert document["suggestion"]["command"].startswith(
        f"VLLM_PP_LAYER_PARTITION={split[0]},{split[1]} vllm serve MODEL --pipeline-parallel-size 2 ")
    assert document["vllm_serve_command"] == document["suggestion"]["command"]


def test_16_and_32_gib_cards_from_parameter_counts():
    document = run_json(QWEN8, "-pp", "2", "--gpu-memory", "16GiB,32GiB", "--parameter-counts", "--max-model-len", "8192")
    assert document["partition"] == [18, 18]
    stage0, stage1 = document["stages"]
    # same layers, same non-KV terms but the last stage's (lm_head, sampler and, with 0.33's Model Runner V2,
    # the sampler's state: 256 sequences x vocabulary 151936, in non-torch memory): the budgets differ by
    # exactly the cards' requested memory less those
    assert stage1["non_torch_bytes"] - stage0["non_torch_bytes"] == runner_sampler_state(256, 151936)
    assert stage1["non_kv_bytes"] - stage0["non_kv_bytes"] == (
        stage1["activation_peak_bytes"] - stage0["activation_peak_bytes"]
        + stage1["weights_bytes"] - stage0["weights_bytes"] + runner_sampler_state(256, 151936))
    difference = int(32 * GIB * 0.9) - int(16 * GIB * 0.9) - (stage1["non_kv_bytes"] - stage0["non_kv_bytes"])
    assert abs(stage1["fit_kv_cache_memory_bytes"] - stage0["fit_kv_cache_memory_bytes"] - difference) <= 1
    split = document["suggested_partition"]
    assert split[1] > split[0]
    assert document["suggested_tokens"] > document["uniform"]["tokens"]


def test_catalog_card_names():
    document = run_json(QWEN8, "--partition", "20,16", "--gpu", "h100", "--parameter-counts", "--util", "0.8")
    assert [s["total_bytes"] for s in document["stages"]] == [lookup_gpu("h100").total_bytes] * 2
    assert [s["card"] for s in document["stages"]] == [lookup_gpu("h100").key] * 2
    assert [s["gpu_memory_utilization"] for s in document["stages"]] == [0.8, 0.8]
    assert document["stages"][0]["methods"]["card"] == "catalog"


def test_the_issues_own_card_list_rtx5070ti_and_rtx5090():
    """`--gpu rtx5070ti,rtx5090`: each stage on its own card (16,302 and 32,606 MiB as CUDA reports them), and
    the suggestion moves layers onto the 5090."""
    document = run_json(QWEN8, "--partition", "18,18", "--gpu", "rtx5070ti,rtx5090", "--parameter-counts",
                        "--max-model-len", "8192")
    assert [s["card"] for s in document["stages"]] == ["RTX-5070-Ti", "RTX-5090"]
    assert [s["total_bytes"] for s in document["stages"]] == [16302 * MIB, 32606 * MIB]
    first, second = document["suggested_partition"]
    assert first + second == 36 and second > first
    assert document["suggested_tokens"] > document["uniform"]["tokens"]


def write_profile(path: Path, *, total, free, weights, activation, non_torch, graphs, util, partition, stage,
                  vllm_buffers=None):
    """A `kvadvise profile --partition ... --stage i --json` document with the keys pp-split reads."""
    memory_extra = {} if vllm_buffers is None else {"weights_vllm_buffers": vllm_buffers}
    path.write_text(json.dumps({
        "schema_version": 1, "command": "profile",
        "device": {"name": "NVIDIA TEST", "kind": "cuda", "source": "cuda", "total_bytes": total,
                   "free_bytes_at_start": free},
        "settings": {"gpu_memory_utilization": util, "partition": partition, "stage": stage,
                     "max_num_batched_tokens": 2048, "max_num_seqs": 256},
        "memory": {"weights_bytes": weights, "weights_method": "measured",
                   "activation_peak_bytes": activation, "activation_peak_method": "measured",
                   "non_torch_bytes": non_torch, "non_torch_method": "measured",
                   "cuda_graph_bytes": graphs, "cuda_graph_method": "measured",
                   "non_kv_bytes": weights + activation + non_torch + graphs, **memory_extra},
    }))
    return str(path)


def profiles(tmp_path, partition=(18, 18)):
    s0 = write_profile(tmp_path / "s0.json", total=16 * GIB, free=15872 * MIB, weights=8 * GIB, activation=GIB,
                       non_torch=256 * MIB, graphs=512 * MIB, util=0.75, partition=list(partition), stage=0)
    s1 = write_profile(tmp_path / "s1.json", total=32 * GIB, free=32000 * MIB, weights=8 * GIB,
                       activation=2 * GIB, non_torch=256 * MIB, graphs=512 * MIB, util=0.75,
                       partition=list(partition), stage=1)
    return s0, s1


def test_stage_profiles_measured_where_they_run(tmp_path):
    s0, s1 = profiles(tmp_path)
    document = run_json(QWEN8, "--partition", "18,18", "--stage-profile", s0, s1, "--max-model-len", "8192")
    stage0, stage1 = document["stages"]
    # fit = 16 GiB x 0.75 - (8 GiB + 1 GiB + 256 MiB + 512 MiB) - 150 MiB = 12288 - 9984 - 150 MiB
    assert stage0["fit_kv_cache_memory_bytes"] == 2154 * MIB
    assert stage0["full_kv_cache_memory_bytes"] == (15872 - 9984 - 150) * MIB
    assert stage1["fit_kv_cache_memory_bytes"] == (24576 - 11008 - 150) * MIB
    assert stage0["methods"]["non_kv"] == "measured" and stage0["methods"]["card"] == "stage profile"
    assert stage0["methods"]["moved_layer_weights"] == "measured"
    # 18 layers x 64 KiB = 1152 KiB per block: 2154 MiB -> 1914 blocks, the engine's count (0.33 shrink rule)
    assert stage0["bytes_per_block"] == 1152 * KIB
    assert document["uniform"]["num_blocks"] == 1914
    assert document["uniform"]["kv_cache_memory_bytes"] == 1914 * 1152 * KIB
    assert document["uniform"]["tokens"] == 1914 * 16
    assert document["bottleneck_stage"] == 0
    # the suggestion moves layers off the small card; their weights move with them, taken from the MEASURED
    # stage weights less the config's extras: embedding 151936 x 4096 x 2 B on stage 0; final norm 4096 x 2 B
    # and lm_head (untied) on stage 1 -> stage 0's 18 layers weigh 8 GiB - 1244659712 B together
    split = document["suggested_partition"]
    assert split[0] < 18
    embedding = 151936 * 4096 * 2
    layers0 = 8 * GIB - embedding
    assert stage0["layer_weights_bytes"] == layers0 == 7345274880
    assert stage1["layer_weights_bytes"] == 8 * GIB - embedding - 4096 * 2
    assert document["moved_layer_weights"]["method"] == "measured"
    assert "measured weights" in document["moved_layer_weights"]["source"]
    # equal layers share it equally (to the byte, cumulative rounding): the first k weigh layers0 * k // 18
    moved = layers0 - layers0 * split[0] // 18
    fits = document["suggestion"]["stage_fit_kv_cache_memory_bytes"]
    assert fits[0] == 2154 * MIB + moved
    assert fits[1] == (24576 - 11008 - 150) * MIB - moved


def test_stage_profiles_with_vllm_rotary_cache_in_the_weights(tmp_path):
    """Profiles that add vLLM's weight-time buffers to the weights list them: the rotary cache (10 MiB here)
    stays with its stage; only the rest of the layers' part moves."""
    buffers = {"rotary cos/sin cache": 10 * MIB, "vocabulary padding to a multiple of 64": 0}
    s0 = write_profile(tmp_path / "s0.json", total=16 * GIB, free=15872 * MIB, weights=8 * GIB, activation=GIB,
                       non_torch=256 * MIB, graphs=512 * MIB, util=0.75, partition=[18, 18], stage=0,
                       vllm_buffers=buffers)
    s1 = write_profile(tmp_path / "s1.json", total=32 * GIB, free=32000 * MIB, weights=8 * GIB,
                       activation=2 * GIB, non_torch=256 * MIB, graphs=512 * MIB, util=0.75, partition=[18, 18],
                       stage=1, vllm_buffers=buffers)
    document = run_json(QWEN8, "--partition", "18,18", "--stage-profile", s0, s1, "--max-model-len", "8192")
    embedding = 151936 * 4096 * 2
    assert document["stages"][0]["layer_weights_bytes"] == 8 * GIB - embedding - 10 * MIB
    assert document["stages"][1]["layer_weights_bytes"] == 8 * GIB - embedding - 4096 * 2 - 10 * MIB
    bad = json.loads(Path(s0).read_text())
    bad["memory"]["weights_vllm_buffers"] = {"rotary cos/sin cache": "10 MiB"}
    Path(s0).write_text(json.dumps(bad))
    result = run(QWEN8, "--partition", "18,18", "--stage-profile", s0, s1)
    assert result.exit_code == 2 and "not a byte count" in result.stderr


def test_stage_profiles_repeated_option_and_util_override(tmp_path):
    s0, s1 = profiles(tmp_path)
    document = run_json(QWEN8, "--partition", "18,18", "--stage-profile", s0, "--stage-profile", s1,
                        "--util", "0.5", "--max-model-len", "8192", exit_code=2)
    # 16 GiB x 0.5 = 8192 MiB < 9984 MiB of non-KV: stage 0 does not fit; the report still prints (exit 2)
    assert [s["gpu_memory_utilization"] for s in document["stages"]] == [0.5, 0.5]
    assert document["stages"][0]["fit_kv_cache_memory_bytes"] == (8192 - 9984 - 150) * MIB
    assert document["stages"][1]["fit_kv_cache_memory_bytes"] == (16384 - 11008 - 150) * MIB
    assert document["uniform"]["kv_cache_memory_bytes"] is None
    assert document["suggested_partition"][0] < 18


def test_stage_profile_of_another_partition_is_bad_input(tmp_path):
    s0, s1 = profiles(tmp_path, partition=(20, 16))
    result = run(QWEN8, "--partition", "18,18", "--stage-profile", s0, s1)
    assert result.exit_code == 2
    assert "measured for partition 20,16, not 18,18" in result.stderr


def test_given_budget_only():
    document = run_json(QWEN32, "--partition", "48,16", "--kv-cache-memory-bytes", "8GiB")
    assert document["mode"] == "budget"
    assert document["uniform"]["given"] is True
    assert [s["uniform_num_blocks"] for s in document["stages"]] == [8 * GIB // (3 * MIB), 8 * GIB // MIB]
    assert document["uniform"]["num_blocks"] == 2730
    assert document["stages"][0]["fit_kv_cache_memory_bytes"] is None
    assert document["suggested_partition"] == [32, 32]


def test_default_split_by_pipeline_size():
    document = run_json(QWEN32, "-pp", "3", "--kv-cache-memory-bytes", "4G")
    assert document["partition"] == [21, 22, 21]          # 64 // 3 = 21, remainder 1 -> stage -2
    assert document["inputs"]["pipeline_parallel_size"] == 3


def test_table_output():
    result = run(QWEN32, "--partition", "48,16", "--gpu-memory", "32GiB", "--parameter-counts")
    assert result.exit_code == 0, result.output
    assert "Suggested partition" in result.stdout and "VLLM_PP_LAYER_PARTITION=48,16" in result.stdout


def test_min_tokens_gate():
    result = run(QWEN32, "--partition", "48,16", "--kv-cache-memory-bytes", "8GiB", "--min-tokens", "10000000")
    assert result.exit_code == 4
    assert result.stderr.strip().splitlines()[-1].startswith("error: CI gate failed")


def test_ci_gates_read_the_uniform_capacity():
    """8 GiB on 48,16: 2730 blocks x 16 = 43680 tokens; one 40960-token request needs 2560 blocks, so the
    engine holds 2730 / 2560 = 1.06640625 of them. The gates are judged on that (what vLLM will do)."""
    base = (QWEN32, "--partition", "48,16", "--kv-cache-memory-bytes", "8GiB")
    document = run_json(*base, "--min-tokens", "43680", "--min-concurrency", "1.0664")
    assert document["uniform"]["tokens"] == 43680 and document["uniform"]["max_concurrency"] == 2730 / 2560
    assert document["gates"] == [
        {"name": "min_tokens", "threshold": 43680, "value": 43680, "passed": True},
        {"name": "min_concurrency", "threshold": 1.0664, "value": 2730 / 2560, "passed": True}]
    document = run_json(*base, "--min-concurrency", "1.07", exit_code=4)
    assert document["gates"] == [{"name": "min_concurrency", "threshold": 1.07, "value": 2730 / 2560,
                                  "passed": False}]
    result = run(*base, "--min-tokens", "43681")
    assert result.exit_code == 4 and "KV tokens 43680 below --min-tokens 43681" in result.stderr


def test_given_partition_already_optimal_is_said():
    """32,32 with one budget: 8 GiB // (32 x 64 KiB) = 4096 blocks on both stages, the best any split gets."""
    document = run_json(QWEN32, "--partition", "32,32", "--kv-cache-memory-bytes", "8GiB")
    assert document["suggestion"]["already_optimal"] is True
    assert document["suggested_partition"] == [32, 32] and document["suggestion"]["gain_tokens"] == 0
    assert document["suggested_tokens"] == document["uniform"]["tokens"] == 4096 * 16
    result = run(QWEN32, "--partition", "32,32", "--kv-cache-memory-bytes", "8GiB")
    text = " ".join(result.stdout.split())
    assert "Partition 32,32 is already optimal: 65,536 tokens" in text
    assert "Suggested:" not in text


def test_command_keys():
    """The envelope's `command` names the kvadvise command (as in every document); the issue's `command`
    (the ready-to-paste serve line) is `vllm_serve_command`, the suggestion's line when there is one."""
    document = run_json(QWEN32, "--partition", "48,16", "--kv-cache-memory-bytes", "8GiB")
    assert document["command"] == "pp-split"
    assert document["vllm_serve_command"] == document["suggestion"]["command"] == (
        f"VLLM_PP_LAYER_PARTITION=32,32 vllm serve MODEL --pipeline-parallel-size 2 "
        f"--kv-cache-memory-bytes {8 * GIB}")
    assert document["uniform"]["command"].startswith("VLLM_PP_LAYER_PARTITION=48,16 vllm serve MODEL ")


def test_serve_lines_name_what_vllm_can_serve(tmp_path):
    """vLLM cannot serve a config FILE: MODEL with a warning (naming the config's `_name_or_path`, which is
    no safe stand-in: a quantized upload names its full-precision source); a checkpoint directory stays."""
    document = run_json(QWEN8, "--partition", "18,18", "--kv-cache-memory-bytes", "4GiB")
    assert document["uniform"]["command"].startswith("VLLM_PP_LAYER_PARTITION=18,18 vllm serve MODEL ")
    assert any("config file, which vLLM cannot serve" in w for w in document["warnings"])
    config = json.loads(Path(QWEN8).read_text())
    named = tmp_path / "named.json"
    named.write_text(json.dumps({**config, "_name_or_path": "Qwen/Qwen3-8B"}))
    document = run_json(str(named), "--partition", "18,18", "--kv-cache-memory-bytes", "4GiB")
    assert document["uniform"]["command"].startswith("VLLM_PP_LAYER_PARTITION=18,18 vllm serve MODEL ")
    assert document["suggestion"]["command"].startswith("VLLM_PP_LAYER_PARTITION=18,18 vllm serve MODEL ")
    assert any("_name_or_path says Qwen/Qwen3-8B" in w for w in document["warnings"])
    local = tmp_path / "local.json"
    local.write_text(json.dumps({**config, "_name_or_path": "/data/models/qwen3-8b"}))
    document = run_json(str(local), "--partition", "18,18", "--kv-cache-memory-bytes", "4GiB")
    assert " vllm serve MODEL " in document["uniform"]["command"]
    checkpoint = tmp_path / "Qwen3-8B"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(Path(QWEN8).read_text())
    document = run_json(str(checkpoint), "--partition", "18,18", "--kv-cache-memory-bytes", "4GiB")
    assert document["uniform"]["command"].startswith(f"VLLM_PP_LAYER_PARTITION=18,18 vllm serve {checkpoint} ")
    assert not any("vllm serve" in w for w in document["warnings"])


def test_partition_that_does_not_fit_exits_2_after_the_report():
    result = run(QWEN8, "--partition", "34,2", "--gpu-memory", "16GiB", "--parameter-counts", "--json")
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["uniform"]["kv_cache_memory_bytes"] is None
    assert "does not fit" in result.stderr


LLAMA70_60_20 = (LLAMA70, "--partition", "60,20", "--gpu", "h100", "--kv-cache-memory-bytes", "20GiB",
                 "--parameter-counts", "--util", "0.95")


def test_given_budget_on_a_stage_whose_weights_overflow_its_card_exits_2():
    """The reviewer's case: Llama-3.1-70B 60,20 on H100s with 20 GiB, at --util 0.95 (so some split fits).
    Stage 0's weights by parameter count:
    60 layers x ((8192 x 64 x 128 x 2 + 8192 x 8 x 128 x 2 + 3 x 8192 x 28672) x 2 B + 2 norms x 8192 x 2 B)
    + embedding 128256 x 8192 x 2 B = 104779874304 B, more than ceil(85027979264 x 0.95) = 80776580301 B
    requested on its own. 20 GiB // (60 layers x 64 KiB per block) = 5461 blocks = 21473525760 B of KV cache.
    The plan is infeasible: exit 2 after the report, one line naming stage 0 and by how much, no tokens
    claimed, no gain against it; the suggestion that fits says so."""
    document = run_json(*LLAMA70_60_20, exit_code=2)
    stage0 = document["stages"][0]
    assert stage0["weights_bytes"] == 60 * ((8192 * 64 * 128 * 2 + 8192 * 8 * 128 * 2 + 3 * 8192 * 28672) * 2
                                            + 2 * 8192 * 2) + 128256 * 8192 * 2 == 104779874304
    fit = math.ceil(85027979264 * 0.95) - stage0["non_kv_bytes"] - 150 * MIB
    assert stage0["fit_kv_cache_memory_bytes"] == fit < 80776580301 - 104779874304 - 150 * MIB
    assert document["feasible"] is False
    kv = 5461 * 60 * 64 * KIB
    assert kv == 21473525760 and stage0["uniform_allocated_bytes"] == kv
    assert document["shortfalls"] == [{"stage": 0, "kv_cache_bytes": kv, "fit_kv_cache_memory_bytes": fit,
                                       "over_bytes": kv - fit, "non_kv_fits": False}]
    assert (document["uniform"]["tokens"], document["uniform"]["num_blocks"]) == (0, 0)
    assert document["uniform"]["command"] is None and document["proportional"]["gain_tokens"] is None
    suggestion = document["suggestion"]
    assert suggestion["makes_feasible"] is True
    assert suggestion["gain_tokens"] is None and suggestion["gain_percent"] is None
    assert all(f >= 0 for f in suggestion["stage_fit_kv_cache_memory_bytes"])
    # what fits holds fewer tokens than one 131072-token request: said, since vLLM would refuse to start
    assert suggestion["fits_one_request"] is False
    assert any(w.startswith(f"the suggested plan holds {suggestion['tokens']:,} tokens") for w in document["warnings"])
    result = run(*LLAMA70_60_20, "--json")
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(errors) == 2 and errors[1].startswith("hint: ") and "fits with --kv-cache-memory-bytes" in errors[1]
    assert errors[0].startswith("error: the partition does not fit its cards: stage 0: its non-KV memory alone "
                                f"exceeds the requested memory (less vLLM's 150 MiB buffer) by {-fit / GIB:.2f} GiB")
    assert f"{(kv - fit) / GIB:.2f} GiB over" in errors[0]
    # the same without a budget exits 2 too, naming the same stage
    result = run(LLAMA70, "--partition", "60,20", "--gpu", "h100", "--parameter-counts", "--json")
    assert result.exit_code == 2 and "error: the partition does not fit its cards: stage 0: " in result.stderr


def test_given_budget_with_cards_is_fast_and_imports_no_torch():
    """--parameter-counts with cards and a budget: the estimate engine's analytic formula, no torch."""
    from helpers import assert_fast_and_light

    def check(document):
        assert document["feasible"] is False and document["shortfalls"][0]["stage"] == 0

    assert_fast_and_light(["pp-split", *LLAMA70_60_20, "--json"], check)


def test_human_mode_warnings_go_to_stderr_once():
    """Issue 2's contract: the tables on stdout, every warning of the document on stderr (execute prints them)."""
    document = run_json(QWEN32, "--partition", "48,16", "--kv-cache-memory-bytes", "8GiB")
    assert document["warnings"]
    result = run(QWEN32, "--partition", "48,16", "--kv-cache-memory-bytes", "8GiB")
    assert result.exit_code == 0
    assert "warning" not in result.stdout
    for warning in document["warnings"]:
        assert result.stderr.count(f"warning: {' '.join(warning.split())}") == 1


def test_infeasible_table_says_what_fits():
    result = run(*LLAMA70_60_20)
    assert result.exit_code == 2
    text = " ".join(result.stdout.split())
    assert "Does not fit: partition 60,20 with 21,474,836,480 B (20.00 GiB) overflows stage(s) 0" in text
    assert "What fits these cards: suggested partition" in text and "%" not in text


@pytest.mark.parametrize("name, args, message", [
    ("sum", ["--partition", "48,15", "--gpu-memory", "32GiB"], "sums to 63 layers but the model has 64"),
    ("zero", ["--partition", "64,0", "--gpu-memory", "32GiB"], "stage 1 has 0 layers"),
    ("negative", ["--partition", "70,-6", "--gpu-memory", "32GiB"], "stage 1 has -6 layers"),
    ("more stages", ["--partition", ",".join(["1"] * 65), "--gpu-memory", "32GiB"], "only 64 layers"),
    ("pp too large", ["-pp", "65", "--gpu-memory", "32GiB"], "only 64 layers"),
    ("gpu list", ["--partition", "48,16", "--gpu-memory", "16GiB,32GiB,48GiB"], "3 values for 2 stages"),
    ("gpu names", ["--partition", "48,16", "--gpu", "h100,h100,h100"], "3 values for 2 stages"),
    ("util list", ["--partition", "48,16", "--gpu-memory", "32GiB", "--util", "0.9,0.8,0.7"], "3 values"),
    ("util range", ["--partition", "48,16", "--gpu-memory", "32GiB", "--util", "1.5"], "in (0, 1]"),
    ("no card", ["--partition", "48,16"], "no card"),
    ("no split", ["--gpu-memory", "32GiB"], "no pipeline split"),
    ("unknown gpu", ["--partition", "48,16", "--gpu", "nosuchcard"], "unknown GPU"),
    ("both cards", ["--partition", "48,16", "--gpu", "h100", "--gpu-memory", "80GiB"], "not both"),
    ("unreadable", ["--partition", "48;16", "--gpu-memory", "32GiB"], "cannot read"),
    ("block size", ["--partition", "48,16", "--gpu-memory", "32GiB", "--block-size", "48"], "--block-size must be one of"),
])
def test_bad_input_is_one_line_exit_2(name, args, message):
    result = run(QWEN32, *args)
    assert result.exit_code == 2, (name, result.output)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: ") and message in lines[0], (name, result.stderr)
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), (name, result.stderr)


# ------------------------------------------------------------------ measured here (the fake CUDA device)

EMBEDDING_32B = 151936 * 5120 * 2      # Qwen3-32B: vocab (a multiple of 64) x hidden x bf16
LAYER_32B = 400 * MIB                  # what the scripted workload allocates per decoder layer


def stage_script(stage: int) -> dict:
    """What one stage of 48,16 allocates on the fake card: embedding + 48 layers, 1 GiB activation on stage 0;
    16 layers + final norm (5120 x 2 B) + lm_head, 1 GiB + 2 GiB (sampler) live together on stage 1. Both:
    64 MiB of driver memory during the run; graph capture of sizes 8,4,2,1 into one pool: 8 x 1 MiB (a 20 MiB
    kLargeBuffer segment, sizes 4 and 2 reuse it) and size 1's 1 MiB (a 2 MiB small-pool segment) = 22 MiB."""
    weights = (EMBEDDING_32B,) + (LAYER_32B,) * 48 if stage == 0 else (LAYER_32B,) * 16 + (5120 * 2, EMBEDDING_32B)
    run = (("a", GIB), ("-a",)) if stage == 0 else (("a", GIB), ("b", 2 * GIB), ("-a",), ("-b",))
    return dict(weights=weights, run=run, run_driver_bytes=64 * MIB, static_bytes=40 * MIB,
                step_intermediate=MIB, step_output=0, capture_only=True)


def measured_here(monkeypatch, fake, script=stage_script):
    """Drive the plain command's measuring path with `fake` as this machine's CUDA card; returns the log of
    (stage settings, allocated and reserved bytes on the card when that stage's workload was made)."""
    import kvadvise.commands.pp_split as command
    from fake_device import ScriptedWorkload

    made = []

    def make_workload(spec, stage_settings, device):
        assert device is fake
        made.append((stage_settings, fake.allocated, fake.reserved))
        return ScriptedWorkload(fake, **script(stage_settings.stage))

    monkeypatch.setattr(command, "_cuda_device_present", lambda: True)
    monkeypatch.setattr(command, "_local_cuda_device", lambda: (fake, None))
    monkeypatch.setattr(command, "_stage_workload", make_workload)
    return made


def test_measured_here_stage_by_stage_on_the_local_card(monkeypatch):
    from fake_device import FakeCudaDevice

    fake = FakeCudaDevice(80 * GIB, context_bytes=500 * MIB)
    made = measured_here(monkeypatch, fake)
    document = run_json(QWEN32, "--partition", "48,16", "--util", "0.75", "--max-model-len", "4096",
                        "--max-num-batched-tokens", "2048", "--max-num-seqs", "4", *V1_RUNNER)
    # each stage measured in turn, as the profile's --stage path: dummy weights, the stage's shape
    assert [(m[0].partition, m[0].stage, m[0].load_format) for m in made] == [((48, 16), 0, "dummy"),
                                                                              ((48, 16), 1, "dummy")]
    # the card was released between the stages and at the end (model dropped, cache returned)
    assert made[1][1:] == (0, 0)
    assert fake.allocated == 0 and fake.reserved == 0
    calls = [c for c in fake.calls if c in ("init", "workload.release") or c.startswith("workload.dummy_run")]
    assert calls == ["init", "workload.dummy_run:2048:4", "workload.release",
                     "init", "workload.dummy_run:2048:4", "workload.release"]

    stage0, stage1 = document["stages"]
    assert document["non_kv_method"] == "measured (this machine's card, stage by stage)"
    for stage in (stage0, stage1):
        assert stage["methods"]["non_kv"] == "measured" and stage["methods"]["card"] == "cuda"
        assert {stage["methods"][t] for t in ("weights", "activation_peak", "non_torch", "cuda_graph")} == {"measured"}
        # the card as the first stage found it (after init: 500 MiB context) stands for every stage
        assert stage["card"] == "Fake H100 80GB HBM3" and stage["total_bytes"] == 80 * GIB
        assert stage["free_bytes_at_start"] == 80 * GIB - 500 * MIB
        assert stage["gpu_memory_utilization"] == 0.75
        # graphs: the 22 MiB pool of stage_script (the 40 MiB static buffers are allocated before the phase's
        # first snapshot). Non-torch: the run's 64 MiB of driver memory (the V1 runner: no computed runner state)
        assert stage["cuda_graph_bytes"] == 22 * MIB and stage["non_torch_bytes"] == 64 * MIB
    # weights = the blocks allocated while loading (all multiples of 512 B); activation = the run's peak
    assert stage0["weights_bytes"] == EMBEDDING_32B + 48 * LAYER_32B
    assert stage1["weights_bytes"] == 16 * LAYER_32B + 5120 * 2 + EMBEDDING_32B
    assert (stage0["activation_peak_bytes"], stage1["activation_peak_bytes"]) == (GIB, 3 * GIB)
    non_kv0 = EMBEDDING_32B + 48 * LAYER_32B + GIB + 64 * MIB + 22 * MIB
    non_kv1 = 16 * LAYER_32B + 5120 * 2 + EMBEDDING_32B + 3 * GIB + 64 * MIB + 22 * MIB
    assert (stage0["non_kv_bytes"], stage1["non_kv_bytes"]) == (non_kv0, non_kv1)
    # fit = 80 GiB x 0.75 - non-KV - 150 MiB (39496.25 MiB and 50248.24 MiB); full from the free at start
    fit0, fit1 = 60 * GIB - non_kv0 - 150 * MIB, 60 * GIB - non_kv1 - 150 * MIB
    assert (stage0["fit_kv_cache_memory_bytes"], stage1["fit_kv_cache_memory_bytes"]) == (fit0, fit1)
    assert stage0["full_kv_cache_memory_bytes"] == 80 * GIB - 500 * MIB - non_kv0 - 150 * MIB
    # uniform (0.33): stage 0 binds: 48 x 64 KiB = 3 MiB per block -> 39496.25 MiB // 3 MiB = 13165 blocks
    assert fit0 // (3 * MIB) == 13165
    assert document["uniform"]["num_blocks"] == 13165
    assert document["uniform"]["kv_cache_memory_bytes"] == 13165 * 3 * MIB
    assert document["bottleneck_stage"] == 0
    # moved layers weigh what the card measured per layer (400 MiB), not a parameter count (FP8 checkpoint)
    assert document["moved_layer_weights"]["method"] == "measured"
    assert stage0["layer_weights_bytes"] == 48 * LAYER_32B and stage1["layer_weights_bytes"] == 16 * LAYER_32B
    assert stage0["methods"]["moved_layer_weights"] == "measured"
    # second method: every split l, 64 - l by hand with 400 MiB per moved layer
    best = max((min((fit0 + (48 - l) * LAYER_32B) // (l * 64 * KIB),
                    (fit1 - (48 - l) * LAYER_32B) // ((64 - l) * 64 * KIB)), l) for l in range(1, 64))
    assert document["suggestion"]["num_blocks"] == best[0]
    assert document["suggested_partition"] == [best[1], 64 - best[1]]
    assert document["suggested_tokens"] == best[0] * 16
    fits = document["suggestion"]["stage_fit_kv_cache_memory_bytes"]
    assert fits == [fit0 + (48 - best[1]) * LAYER_32B, fit1 - (48 - best[1]) * LAYER_32B]
    assert any("shape-equivalent" in w for w in document["warnings"])


def test_measured_here_table_says_measured(monkeypatch):
    from fake_device import FakeCudaDevice

    measured_here(monkeypatch, FakeCudaDevice(80 * GIB))
    result = run(QWEN32, "--partition", "48,16", "--max-num-batched-tokens", "2048", "--max-num-seqs", "4")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())       # rich wraps long lines
    assert "non-KV memory measured (this machine's card, stage by stage)" in text
    assert "measuring stage 1 of 2 (layers 48-63) on cuda:0" in result.stderr
    assert "Weights of moved layers: measured" in text
    # the "how" column of both stage rows
    rows = [line for line in result.stdout.splitlines() if line.lstrip("│ ").startswith(("0* ", "1 "))]
    assert len(rows) == 2 and all("measured" in row for row in rows), result.stdout


def test_measured_here_later_stage_keeps_the_first_stages_non_torch(monkeypatch):
    """Stage 1 in the same process finds the driver allocations already made: stage 0's figure stands."""
    from fake_device import FakeCudaDevice

    def script(stage):
        values = stage_script(stage)
        values["run_driver_bytes"] = 64 * MIB if stage == 0 else 16 * MIB
        return values

    measured_here(monkeypatch, FakeCudaDevice(80 * GIB), script)
    document = run_json(QWEN32, "--partition", "48,16", "--max-num-batched-tokens", "2048", "--max-num-seqs", "4", *V1_RUNNER)
    assert [s["non_torch_bytes"] for s in document["stages"]] == [64 * MIB, 64 * MIB]
    assert any(w.startswith("stage 1: non-torch memory measured 16777216 bytes") for w in document["warnings"])


def test_measured_here_for_named_cards(monkeypatch):
    """--gpu-memory with a CUDA device: the terms are measured here, the budgets are for the named cards."""
    from fake_device import FakeCudaDevice

    fake = FakeCudaDevice(80 * GIB)
    made = measured_here(monkeypatch, fake)
    document = run_json(QWEN32, "--partition", "48,16", "--gpu-memory", "32GiB,48GiB", "--util", "0.75",
                        "--max-num-batched-tokens", "2048", "--max-num-seqs", "4", *V1_RUNNER, exit_code=0)
    assert len(made) == 2
    stage0, stage1 = document["stages"]
    assert (stage0["total_bytes"], stage1["total_bytes"]) == (32 * GIB, 48 * GIB)
    assert stage0["methods"]["card"] == "gpu-memory option" and stage0["methods"]["non_kv"] == "measured"
    assert stage0["free_bytes_at_start"] is None and stage0["full_kv_cache_memory_bytes"] is None
    non_kv0 = EMBEDDING_32B + 48 * LAYER_32B + GIB + 64 * MIB + 22 * MIB
    assert stage0["fit_kv_cache_memory_bytes"] == 24 * GIB - non_kv0 - 150 * MIB
    assert any("measured on this machine's card" in w for w in document["warnings"])


def test_measured_here_out_of_memory_names_the_stage(monkeypatch):
    """Stage 0 measures; stage 1's dummy run asks 30 GiB of a 24 GiB card: exit 3 naming stage and phase,
    and the card is left as found."""
    from fake_device import FakeCudaDevice

    def script(stage):
        values = stage_script(stage)
        if stage == 1:
            values["run"] = (("a", 30 * GIB),)
        return values

    fake = FakeCudaDevice(24 * GIB)
    measured_here(monkeypatch, fake, script)
    result = run(QWEN32, "--partition", "48,16", "--max-num-batched-tokens", "2048", "--max-num-seqs", "4")
    assert result.exit_code == 3
    lines = result.stderr.splitlines()
    assert lines[:2] == ["measuring stage 0 of 2 (layers 0-47) on cuda:0",
                         "measuring stage 1 of 2 (layers 48-63) on cuda:0"]
    assert lines[2] == "error: stage 1: out of device memory during the dummy max-batch run phase"
    assert len(lines) == 4 and lines[3].startswith("hint: ") and "--estimate" in lines[3]
    assert fake.allocated == 0 and fake.reserved == 0


def test_measure_stages_with_the_real_stage_workload_on_the_host(tmp_path):
    """The real model side (the profile's TorchWorkload, dummy weights, stage shapes) through measure_stages on
    the host device: a tiny Llama (hidden 64, 4 heads x 16, 2 KV heads, MLP 128, vocab 512, bf16, tied) split 3,1.
    By hand, one layer: q, o 64 x 64; k, v 64 x 32; gate, up, down 64 x 128; 2 norms of 64 -> 36992 x 2 B =
    73984 B. What stays: the embedding 512 x 64 x 2 B = 65536 B first; final norm 128 B + the last stage's own
    table (65536 B) last; vLLM's rotary cache on each (the session adds it: 131072 positions x 16 x 2 B)."""
    from kvadvise.model.spec import load_model_spec
    from kvadvise.plan.kv import KvSettings
    from kvadvise.plan.pp import layer_weights_from_stages, estimate_layer_weights_bytes
    from kvadvise.profile.device import CpuDevice
    from kvadvise.profile.tracker import LiveBytesTracker
    from tiny_models import tiny_config
    import kvadvise.commands.pp_split as command

    (tmp_path / "config.json").write_text(json.dumps(tiny_config("llama", layers=4)))
    spec = load_model_spec(str(tmp_path))
    device = CpuDevice(24 * GIB, tracker=LiveBytesTracker(), target_name="host")
    settings = KvSettings(max_num_batched_tokens=256, max_model_len=512, vllm_version="0.33")
    made = []

    def make_workload(spec, stage_settings, device):
        made.append((stage_settings.partition, stage_settings.stage, stage_settings.load_format))
        return command._stage_workload(spec, stage_settings, device)

    cards, non_kv, warnings, extras = command.measure_stages(
        spec, (3, 1), settings, model=str(tmp_path), max_num_seqs=8, utils=[0.9, 0.9], device=device,
        make_workload=make_workload)
    assert made == [((3, 1), 0, "dummy"), ((3, 1), 1, "dummy")]
    rotary = 131072 * 16 * 2
    assert extras == [65536 + rotary, 128 + 65536 + rotary]
    assert [c.total_bytes for c in cards] == [24 * GIB] * 2 and cards[0].source == "cpu"
    assert {m.term_methods["weights"] for m in non_kv} == {"measured"}
    # the layers' part of each stage's measured weights is the hand figure, plus transformers' own rotary
    # inv_freq buffers (< 1 KiB, one set per stage)
    layers = [m.weights_bytes - e for m, e in zip(non_kv, extras)]
    assert 0 <= layers[0] - 3 * 73984 < KIB and 0 <= layers[1] - 73984 < KIB
    shares, kept = layer_weights_from_stages(estimate_layer_weights_bytes(spec), (3, 1),
                                             [m.weights_bytes for m in non_kv], extras)
    assert kept == () and all(0 <= share - 73984 < KIB for share in shares)


@pytest.mark.gpu
def test_measured_here_on_a_real_card(monkeypatch, tmp_path):
    """A tiny Llama (4 layers) split 3,1 on the real card: both stages measured there, the card's own total
    for both, and the card left as found (every byte the stages allocated returned)."""
    import torch

    import kvadvise.commands.pp_split as command
    from tiny_models import tiny_config

    (tmp_path / "config.json").write_text(json.dumps(tiny_config("llama", layers=4)))
    monkeypatch.setattr(command, "_cuda_device_present", lambda: True)
    torch.cuda.init()
    allocated_before = torch.cuda.memory_allocated(0)
    document = run_json(str(tmp_path), "--partition", "3,1", "--max-num-batched-tokens", "256",
                        "--max-num-seqs", "8", "--max-model-len", "512")
    assert torch.cuda.memory_allocated(0) == allocated_before
    assert document["non_kv_method"] == "measured (this machine's card, stage by stage)"
    total = torch.cuda.mem_get_info(0)[1]
    for stage in document["stages"]:
        assert stage["methods"]["card"] == "cuda" and stage["methods"]["weights"] == "measured"
        assert stage["total_bytes"] == total
    assert document["stages"][0]["free_bytes_at_start"] == document["stages"][1]["free_bytes_at_start"]


def test_cuda_node_without_usable_cuda(monkeypatch):
    """A device node torch cannot use: no card -> exit 2 asking for --gpu; cards -> estimates."""
    import kvadvise.commands.pp_split as command

    monkeypatch.setattr(command, "_cuda_device_present", lambda: True)
    monkeypatch.setattr(command, "_local_cuda_device", lambda: None)
    result = run(QWEN32, "--partition", "48,16")
    assert result.exit_code == 2 and result.stderr.startswith("error: no card")
    assert "--gpu" in result.stderr
    document = run_json(QWEN32, "--partition", "48,16", "--gpu-memory", "32GiB", "--parameter-counts")
    assert document["non_kv_method"] == "estimated (parameter counts)"
    assert document["moved_layer_weights"] == {"method": "estimated", "source": "parameter counts"}


def test_given_budget_is_fast_and_imports_no_torch():
    """Arithmetic only: < 0.5 s of CPU and no torch / transformers / pynvml (tests/helpers.py)."""
    from helpers import assert_fast_and_light

    def check(document):
        assert document["uniform"]["num_blocks"] == 2730      # 8 GiB // (48 x 64 KiB)

    assert_fast_and_light(["pp-split", QWEN32, "--partition", "48,16", "--kv-cache-memory-bytes", "8GiB", "--json"],
                          check)


def test_estimate_engine_per_stage_shape():
    """--estimate runs the estimate engine on each stage's shape (partition, stage, card) and plans with it."""
    from kvadvise.estimate.engine import estimate, target_card
    from kvadvise.model.spec import load_model_spec
    from kvadvise.profile.session import ProfileSettings

    document = run_json(QWEN8, "--partition", "18,18", "--gpu-memory", "16GiB,32GiB", "--estimate",
                        "--max-model-len", "8192")
    assert document["non_kv_method"] == "estimated (estimate engine, per stage)"
    spec = load_model_spec(QWEN8)
    for index, size in enumerate((16, 32)):
        stage = document["stages"][index]
        settings = ProfileSettings(model_id=QWEN8, load_format="dummy", max_model_len=8192, partition=(18, 18),
                                   stage=index, vllm_version="0.33")
        estimated = estimate(spec, settings, target_card(None, size * GIB, None))
        memory = estimated.report.memory
        assert (stage["weights_bytes"], stage["activation_peak_bytes"], stage["non_torch_bytes"],
                stage["cuda_graph_bytes"]) == (memory.weights_bytes, memory.activation_peak_bytes,
                                               memory.non_torch_bytes, memory.cuda_graph_bytes)
        # vLLM 0.33 requests ceil(total x util)
        assert stage["fit_kv_cache_memory_bytes"] == math.ceil(size * GIB * 0.9) - memory.total_bytes - 150 * MIB
        assert stage["methods"]["weights"] == "estimated"
        # what moves: the engine's stage weights less what stays (embedding 151936 x 4096 x 2 B first; final
        # norm 4096 x 2 B + lm_head last; the engine's one rotary cos/sin cache per stage)
        stays = 151936 * 4096 * 2 + (4096 * 2 if index == 1 else 0)
        stays += estimated.detail["weights"]["vllm_extra"].get("rotary cos/sin cache", 0)
        assert stage["layer_weights_bytes"] == memory.weights_bytes - stays
        assert stage["methods"]["moved_layer_weights"] == "estimated"
    assert "estimated weights" in document["moved_layer_weights"]["source"]
    split = document["suggested_partition"]
    assert split[1] > split[0]
    # the config-file warning every stage's estimate gives is said once, for the whole report
    config_file = [w for w in document["warnings"] if "is a config file, which vLLM cannot serve" in w]
    assert len(config_file) == 1 and not config_file[0].startswith("stage ")


def test_estimate_engine_failure_falls_back_to_parameter_counts(monkeypatch):
    import kvadvise.commands.pp_split as command

    def broken(*args, **kwargs):
        raise ImportError("no torch here")

    monkeypatch.setattr(command, "_engine_estimates", broken)
    document = run_json(QWEN8, "--partition", "18,18", "--gpu-memory", "24GiB", "--estimate")
    assert document["non_kv_method"] == "estimated (parameter counts)"
    assert any("estimate engine could not size the stages (no torch here)" in w for w in document["warnings"])


def test_serve_lines_cap_max_model_len_when_one_request_does_not_fit():
    """Llama-3.1-70B over two H100s and an A10G: whatever the split, the engine holds fewer tokens than one
    131,072-token request, so vLLM would refuse the model's length. Both serve lines carry the longest
    length that fits: full attention, 16 tokens a block, so blocks x 16 (vLLM's max_model_len estimate)."""
    given = run_json(LLAMA70, "--partition", "30,30,20", "--gpu", "h100,h100,a10g", "--parameter-counts",
                     exit_code=2)                     # 30 layers overflow the A10G; the suggestion fits
    suggested = given["suggestion"]["partition"]
    again = run_json(LLAMA70, "--partition", ",".join(map(str, suggested)), "--gpu", "h100,h100,a10g",
                     "--parameter-counts")
    assert again["suggestion"]["already_optimal"] is True
    for plan in (given["suggestion"], again["uniform"]):
        blocks = plan["num_blocks"]
        assert 0 < blocks * 16 < 131072
        assert plan["fits_one_request"] is False and plan["largest_fitting_model_len"] == blocks * 16
        assert f" --max-model-len {blocks * 16} " in plan["command"]


def test_stage_warnings_are_said_once():
    """A warning every stage repeats stays under the first stage; one the whole report also gives stays
    unprefixed; distinct stage warnings and their order are kept."""
    from kvadvise.commands.pp_split import _said_once

    given = ["stage 0: graphs estimated", "stage 0: config file", "stage 1: graphs estimated",
             "stage 1: sampler 0.11", "note: a plain one", "config file"]
    assert _said_once(given) == ["stage 0: graphs estimated", "stage 1: sampler 0.11", "note: a plain one",
                                 "config file"]


def test_model_runner_sets_the_last_stages_sampler_share():
    """pp-split takes --model-runner like profile and estimate: with the parameter counts, the last stage's
    activation under V1 exceeds V2's (the 0.33 default) by the two samplers' shares, by hand (Qwen3-8B on an
    RTX 4090: 256 rows, vocabulary 151936, hidden 4096, bf16); the first stage runs no sampler."""
    from kvadvise.profile.sampler import v1_sampler_bytes, v2_sampler_bytes

    args = (QWEN8, "--partition", "18,18", "--gpu", "rtx4090", "--parameter-counts")
    v2 = run_json(*args)["stages"]
    v1_document = run_json(*args, "--model-runner", "v1")
    v1 = v1_document["stages"]
    assert v1_document["inputs"]["model_runner"] == "v1"
    assert v1[0]["activation_peak_bytes"] == v2[0]["activation_peak_bytes"]
    assert v1[1]["activation_peak_bytes"] - v2[1]["activation_peak_bytes"] == (
        v1_sampler_bytes(256, 151936, 4096, 2) - v2_sampler_bytes(256, 151936, 2))
    result = run(*args, "--vllm-version", "0.12", "--model-runner", "v2")
    assert result.exit_code == 2 and "--model-runner" in result.stderr


def test_measured_here_adds_model_runner_v2_state(monkeypatch):
    """With vLLM 0.33's default runner (V2) each measured stage's non-torch memory also holds the runner state
    vLLM counts there: the request and input buffers on every stage, the sampler's tables on the last one."""
    from fake_device import FakeCudaDevice

    measured_here(monkeypatch, FakeCudaDevice(80 * GIB))
    document = run_json(QWEN32, "--partition", "48,16", "--max-num-batched-tokens", "2048", "--max-num-seqs", "4")
    stage0, stage1 = document["stages"]
    assert stage0["non_torch_bytes"] == 64 * MIB + RUNNER_INPUTS_4_2048
    assert stage1["non_torch_bytes"] == 64 * MIB + RUNNER_INPUTS_4_2048 + runner_sampler_state(4, 151936)
