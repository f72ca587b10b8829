"""`kvadvise pp-split`: JSON contract, the issue's worked cases through the CLI, stage profiles, bad input,
CI gates, and speed (arithmetic only: no torch on any path that exists today)."""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvadvise.cli import app
from kvadvise.gpus import lookup_gpu
from kvadvise.report.schema import validate

CONFIGS = Path(__file__).parent / "data" / "pp_configs"
QWEN32 = str(CONFIGS / "Qwen3-32B-FP8.config.json")   # 64 layers, 8 KV heads x 128, bf16 KV
QWEN8 = str(CONFIGS / "Qwen3-8B.config.json")         # 36 layers, 8 KV heads x 128, bf16
GIB = 1 << 30
MIB = 1 << 20
KIB = 1 << 10
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["pp-split", *args])


def run_json(*args: str, exit_code: int = 0) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == exit_code, result.output
    document = json.loads(result.stdout)
    assert validate(document, "pp_split") == []
    return document


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
        f"VLLM_PP_LAYER_PARTITION={split[0]},{split[1]} vllm serve {QWEN32} --pipeline-parallel-size 2 ")
    assert document["vllm_serve_command"] == document["suggestion"]["command"]


def test_16_and_32_gib_cards_from_parameter_counts():
    document = run_json(QWEN8, "-pp", "2", "--gpu-memory", "16GiB,32GiB", "--parameter-counts", "--max-model-len", "8192")
    assert document["partition"] == [18, 18]
    stage0, stage1 = document["stages"]
    # same layers, same non-KV terms: the budgets differ by exactly the cards' requested memory
    assert stage1["non_kv_bytes"] - stage0["non_kv_bytes"] == (
        stage1["activation_peak_bytes"] - stage0["activation_peak_bytes"]
        + stage1["weights_bytes"] - stage0["weights_bytes"])
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


def write_profile(path: Path, *, total, free, weights, activation, non_torch, graphs, util, partition, stage):
    """A `kvadvise profile --partition ... --stage i --json` document with the keys pp-split reads."""
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
                   "non_kv_bytes": weights + activation + non_torch + graphs},
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
    assert stage0["methods"]["moved_layer_weights"] == "estimated"
    # 18 layers x 64 KiB = 1152 KiB per block: 2154 MiB -> 1914 blocks, the engine's count (0.33 shrink rule)
    assert stage0["bytes_per_block"] == 1152 * KIB
    assert document["uniform"]["num_blocks"] == 1914
    assert document["uniform"]["kv_cache_memory_bytes"] == 1914 * 1152 * KIB
    assert document["uniform"]["tokens"] == 1914 * 16
    assert document["bottleneck_stage"] == 0
    # the suggestion moves layers off the small card; their weights (estimated) move with them
    split = document["suggested_partition"]
    assert split[0] < 18
    from kvadvise.model.spec import load_model_spec
    from kvadvise.plan.pp import estimate_layer_weights_bytes

    layer = estimate_layer_weights_bytes(load_model_spec(QWEN8))[0]
    fits = document["suggestion"]["stage_fit_kv_cache_memory_bytes"]
    assert fits[0] == 2154 * MIB + (18 - split[0]) * layer
    assert fits[1] == (24576 - 11008 - 150) * MIB - (split[1] - 18) * layer


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


def test_partition_that_does_not_fit_exits_2_after_the_report():
    result = run(QWEN8, "--partition", "34,2", "--gpu-memory", "16GiB", "--parameter-counts", "--json")
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["uniform"]["kv_cache_memory_bytes"] is None
    assert "does not fit" in result.stderr


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
])
def test_bad_input_is_one_line_exit_2(name, args, message):
    result = run(QWEN32, *args)
    assert result.exit_code == 2, (name, result.output)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: ") and message in lines[0], (name, result.stderr)
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), (name, result.stderr)


def test_measuring_here_is_not_wired_yet(monkeypatch):
    """On a machine with a CUDA device, the plain command would measure each stage: not available yet."""
    import kvadvise.commands.pp_split as command

    monkeypatch.setattr(command, "_cuda_device_present", lambda: True)
    result = run(QWEN32, "--partition", "48,16", "--gpu-memory", "32GiB")
    assert result.exit_code == 3
    assert "--stage path" in result.stderr
    # the estimates still answer there
    assert run(QWEN32, "--partition", "48,16", "--gpu-memory", "32GiB", "--parameter-counts").exit_code == 0


def test_given_budget_is_fast_and_imports_no_torch():
    """Arithmetic only: < 0.5 s and no torch / transformers. Timed as the child's CPU time (user + sys, best of
    three) as tests/test_cli_capacity.py does: the suite's two busy cores inflate wall time, not CPU time."""
    code = ("import sys\n"
            "sys.argv = ['kvadvise', 'pp-split', %r, '--partition', '48,16', '--kv-cache-memory-bytes', '8GiB',"
            " '--json']\n"
            "from kvadvise.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'pynvml') if m in sys.modules]\n"
            "sys.stderr.write('HEAVY=' + ','.join(heavy))\n") % QWEN32
    cpu_seconds, wall_seconds = [], []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        wall_seconds.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_seconds.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        assert json.loads(done.stdout)["uniform"]["num_blocks"] == 2730, done.stderr
        assert done.stderr.rsplit("HEAVY=", 1)[1].strip() == ""
    assert min(cpu_seconds) < 0.5, (cpu_seconds, wall_seconds)


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
        memory = estimate(spec, settings, target_card(None, size * GIB, None)).report.memory
        assert (stage["weights_bytes"], stage["activation_peak_bytes"], stage["non_torch_bytes"],
                stage["cuda_graph_bytes"]) == (memory.weights_bytes, memory.activation_peak_bytes,
                                               memory.non_torch_bytes, memory.cuda_graph_bytes)
        # vLLM 0.33 requests ceil(total x util)
        assert stage["fit_kv_cache_memory_bytes"] == math.ceil(size * GIB * 0.9) - memory.total_bytes - 150 * MIB
        assert stage["methods"]["weights"] == "estimated"
    split = document["suggested_partition"]
    assert split[1] > split[0]


def test_estimate_engine_failure_falls_back_to_parameter_counts(monkeypatch):
    import kvadvise.commands.pp_split as command

    def broken(*args, **kwargs):
        raise ImportError("no torch here")

    monkeypatch.setattr(command, "_engine_estimates", broken)
    document = run_json(QWEN8, "--partition", "18,18", "--gpu-memory", "24GiB", "--estimate")
    assert document["non_kv_method"] == "estimated (parameter counts)"
    assert any("estimate engine could not size the stages (no torch here)" in w for w in document["warnings"])
