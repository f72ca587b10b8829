"""`kvadvise capacity`: the JSON contract, tables, CI gates, bad input, and speed (no torch on this path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvadvise.cli import app
from kvadvise.report.schema import validate

CONFIGS = Path(__file__).parent / "data" / "kv_configs"
LLAMA = str(CONFIGS / "meta-llama__Llama-3.1-8B.json")
QWEN3_NEXT = str(CONFIGS / "Qwen__Qwen3-Next-80B-A3B-Thinking.json")
GIB = 1 << 30
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["capacity", *args])


def run_json(*args: str) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert validate(document, "capacity") == []
    return document


def test_json_worked_example_llama_3_1_8b():
    # 53.29 GiB as vLLM would hold it: 27,284 blocks * 2 MiB lies inside [53.285, 53.295) GiB
    document = run_json(LLAMA, "--kv-cache-memory-bytes", str(27284 * 2 * (1 << 20)), "--vllm-version", "0.11")
    kv = document["kv_cache"]
    assert document["command"] == "capacity"
    assert document["inputs"]["kv_cache_memory_bytes"] == 27284 * 2 * (1 << 20)
    assert kv["bytes_per_token"] == 131072                # 32 layers * 2 * 8 * 128 * 2
    assert kv["bytes_per_token_by_kind"] == {"full_attention": 131072}
    assert kv["page_size_bytes"] == 65536
    assert kv["block_size"] == 16
    assert kv["num_blocks"] == 27284
    assert kv["tokens"] == 436544
    assert f"{kv['max_concurrency']:.2f}" == "3.33"
    assert kv["max_model_len"] == 131072
    assert kv["fits_one_request"] is True and kv["largest_fitting_model_len"] is None
    assert kv["vllm_version"] == "0.11" and "0.11" in kv["rules"]
    assert document["model"]["num_layers"] == 32
    assert document["warnings"] == []


def test_json_hybrid_case04():
    document = run_json(QWEN3_NEXT, "--kv-cache-memory-bytes", "47878721024", "--tensor-parallel-size", "2",
                        "--vllm-version", "0.10.2")
    kv = document["kv_cache"]
    assert (kv["block_size"], kv["page_size_bytes"], kv["num_blocks"], kv["tokens"]) == (544, 557056, 7162, 973760)
    assert f"{kv['max_concurrency']:.2f}" == "14.77"
    assert kv["mamba_state_bytes_per_request"] == 36 * 548864
    assert sorted(g["kind"] for g in kv["groups"]) == ["full_attention", "mamba", "mamba", "mamba"]
    assert any("padded" in note for note in kv["notes"])


def test_default_rules_are_newest_and_byte_units(tmp_path):
    document = run_json(LLAMA, "--kv-cache-memory-bytes", "16GiB", "--max-model-len", "20000")
    kv = document["kv_cache"]
    # 16 GiB / 2 MiB = 8192 blocks; per request cdiv(20000, 16) = 1250 -> 6.5536x; 0.33: int(6.5536 * 20000)
    assert kv["vllm_version"] == "0.33"
    assert kv["num_blocks"] == 8192
    assert kv["tokens"] == 131072
    short = ("--max-model-len", "20000")
    assert run_json(LLAMA, "--kv-cache-memory-bytes", "16G", *short)["kv_cache"]["num_blocks"] == 8192
    # 16g is decimal, as vLLM reads it: 16,000,000,000 // 2 MiB = 7,629
    assert run_json(LLAMA, "--kv-cache-memory-bytes", "16g", *short)["kv_cache"]["num_blocks"] == 7629


def test_options_reach_the_layout():
    kv = run_json(LLAMA, "--kv-cache-memory-bytes", "8GiB", "--tensor-parallel-size", "2", "--kv-cache-dtype",
                  "fp8", "--block-size", "32", "--vllm-version", "0.12")["kv_cache"]
    # 4 kv heads per rank, 1-byte KV, block 32: page 2 * 32 * 4 * 128 * 1 = 32,768; 8 GiB / (32,768 * 32) = 8192
    assert (kv["kv_heads_per_rank"], kv["kv_cache_dtype"], kv["page_size_bytes"]) == (4, "fp8", 32768)
    assert kv["num_blocks"] == 8192 and kv["tokens"] == 8192 * 32


def test_sliding_window_default_batched_tokens_is_a_warning():
    config = str(CONFIGS / "openai__gpt-oss-120b.json")
    result = run(config, "--kv-cache-memory-bytes", "40GiB", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert any("max-num-batched-tokens" in w for w in document["warnings"])
    assert "warning:" in result.stderr
    quiet = run_json(config, "--kv-cache-memory-bytes", "40GiB", "--max-num-batched-tokens", "2048")
    # what remains is the config's own caveat (gpt-oss names no dtype), not the batch assumption
    assert not any("max-num-batched-tokens" in w for w in quiet["warnings"])
    assert [w for w in quiet["warnings"] if not w.startswith("no dtype in the config")] == []
    assert quiet["kv_cache"]["max_num_batched_tokens"] == 2048


def test_human_output_has_the_numbers():
    result = run(LLAMA, "--kv-cache-memory-bytes", str(27284 * 2 * (1 << 20)), "--vllm-version", "0.11")
    assert result.exit_code == 0, result.output
    for text in ("131,072", "65,536", "27,284", "436,544", "3.33x", "53.29 GiB", "0.11"):
        assert text in result.stdout


def test_output_file_is_written(tmp_path):
    target = tmp_path / "capacity.json"
    result = run(LLAMA, "--kv-cache-memory-bytes", "16GiB", "--output", str(target))
    assert result.exit_code == 0, result.output
    document = json.loads(target.read_text())
    assert validate(document, "capacity") == []
    assert document["kv_cache"]["num_blocks"] == 8192


def test_request_that_does_not_fit_exits_2_with_the_largest_fitting_len(tmp_path):
    target = tmp_path / "r.json"
    result = run(LLAMA, "--kv-cache-memory-bytes", "1GiB", "--json", "--output", str(target))
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert validate(document, "capacity") == []
    kv = document["kv_cache"]
    # 1 GiB / 2 MiB = 512 blocks = 8,192 tokens: the longest request that fits
    assert kv["fits_one_request"] is False and kv["largest_fitting_model_len"] == 8192
    assert json.loads(target.read_text())["kv_cache"]["num_blocks"] == 512
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "refuse to start" in lines[0]
    assert lines[1].startswith("hint: --max-model-len 8192")
    assert str(16 * GIB) in lines[1]                       # 8192 blocks * 2 MiB for one full-length request
    human = run(LLAMA, "--kv-cache-memory-bytes", "1GiB")
    assert human.exit_code == 2 and "max model len that fits" in human.stdout


@pytest.mark.parametrize("gate, value, code", [("--min-tokens", "436544", 0), ("--min-tokens", "436545", 4),
                                               ("--min-concurrency", "3.33", 0), ("--min-concurrency", "3.34", 4)])
def test_ci_gates(gate, value, code, tmp_path):
    target = tmp_path / "g.json"
    result = run(LLAMA, "--kv-cache-memory-bytes", str(27284 * 2 * (1 << 20)), "--vllm-version", "0.11", gate, value,
                 "--json", "--output", str(target))
    assert result.exit_code == code, result.output
    document = json.loads(target.read_text())
    assert validate(document, "capacity") == []
    assert document["gates"][0]["passed"] is (code == 0)
    if code:
        assert result.stderr.strip().splitlines()[-1].startswith("error: CI gate failed")


def _bad_inputs(tmp_path: Path):
    directory = tmp_path / "empty"
    directory.mkdir()
    malformed = tmp_path / "bad.json"
    malformed.write_text("{not json")
    no_layers = tmp_path / "nolayers.json"
    no_layers.write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                     "hidden_size": 4096, "num_attention_heads": 32, "vocab_size": 1000}))
    # an unknown architecture without the fields a standard decoder has (here vocab_size) cannot be described;
    # one WITH them is described as vLLM's generic decoder and says so in `warnings` (test below)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"architectures": ["FrobnicatorForCausalLM"], "model_type": "frobnicator",
                                   "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4}))
    budget = ["--kv-cache-memory-bytes", "16GiB"]
    return {
        "missing path": [str(tmp_path / "nope.json"), *budget],
        "directory without config": [str(directory), *budget],
        "malformed json": [str(malformed), *budget],
        "config without layer count": [str(no_layers), *budget],
        "unknown architecture": [str(unknown), *budget],
        "no budget": [LLAMA],
        "zero budget": [LLAMA, "--kv-cache-memory-bytes", "0"],
        "negative budget": [LLAMA, "--kv-cache-memory-bytes", "-5"],
        "garbage budget": [LLAMA, "--kv-cache-memory-bytes", "lots"],
        "unknown unit": [LLAMA, "--kv-cache-memory-bytes", "12XB"],
        "unknown kv dtype": [LLAMA, *budget, "--kv-cache-dtype", "int3"],
        "tp does not divide heads": [LLAMA, *budget, "--tensor-parallel-size", "3"],
        "tp garbage": [LLAMA, *budget, "--tensor-parallel-size", "two"],
        "tp zero": [LLAMA, *budget, "--tensor-parallel-size", "0"],
        "block size zero": [LLAMA, *budget, "--block-size", "0"],
        "block size vllm refuses": [LLAMA, *budget, "--block-size", "7"],
        "max model len garbage": [LLAMA, *budget, "--max-model-len", "1e5"],
        "unknown vllm version": [LLAMA, *budget, "--vllm-version", "0.9"],
        "negative gate": [LLAMA, *budget, "--min-tokens", "-1"],
        "nan gate": [LLAMA, *budget, "--min-concurrency", "nan"],
        "infinite gate": [LLAMA, *budget, "--min-concurrency", "inf"],
    }


BAD_NAMES = ["missing path", "directory without config", "malformed json", "config without layer count",
             "unknown architecture", "no budget", "zero budget", "negative budget", "garbage budget", "unknown unit",
             "unknown kv dtype", "tp does not divide heads", "tp garbage", "tp zero", "block size zero",
             "block size vllm refuses", "max model len garbage", "unknown vllm version", "negative gate", "nan gate",
             "infinite gate"]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("json_mode", [False, True])
def test_bad_input_is_exit_2_one_line_no_traceback(name, json_mode, tmp_path):
    args = _bad_inputs(tmp_path)[name] + (["--json"] if json_mode else [])
    result = run(*args)
    assert result.exit_code == 2, (name, result.output)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), (name, result.stderr)
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), (name, result.stderr)
    assert "Traceback" not in result.output and result.stdout == ""


def test_fast_and_no_torch_in_a_subprocess():
    """Arithmetic only: answers in < 0.5 s of CPU and never imports torch or transformers (tests/helpers.py)."""
    from helpers import assert_fast_and_light

    def check(document):
        assert document["kv_cache"]["num_blocks"] == 20480

    assert_fast_and_light(["capacity", LLAMA, "--kv-cache-memory-bytes", "40GiB", "--json"], check)


def test_mamba_cache_mode_option():
    base = (QWEN3_NEXT, "--kv-cache-memory-bytes", "47878721024", "--tensor-parallel-size", "2")
    document = run_json(*base, "--mamba-cache-mode", "align")
    assert document["inputs"]["mamba_cache_mode"] == "align"
    assert document["kv_cache"]["blocks_per_request"] == 482 + 3 * 2
    assert run(*base, "--mamba-cache-mode", "all").exit_code == 2
    default = run_json(*base)                                # 0.33: align by default, and said so
    assert default["inputs"]["mamba_cache_mode"] is None
    assert default["kv_cache"]["mamba_cache_mode"] == "align"
    assert any("align" in warning for warning in default["warnings"])


def test_unknown_architecture_with_standard_fields_is_described_and_warned(tmp_path):
    config = json.loads(Path(LLAMA).read_text())
    config.update(architectures=["FrobnicatorForCausalLM"], model_type="frobnicator")
    path = tmp_path / "frobnicator.json"
    path.write_text(json.dumps(config))
    document = run_json(str(path), "--kv-cache-memory-bytes", "40GiB")
    assert any("FrobnicatorForCausalLM is not a vLLM built-in name" in w for w in document["warnings"])
    assert any("'frobnicator' has no family rules" in w for w in document["warnings"])
    # described as the generic decoder it is: the same blocks as the Llama config it was made from
    assert document["kv_cache"]["num_blocks"] == run_json(LLAMA, "--kv-cache-memory-bytes", "40GiB")["kv_cache"]["num_blocks"]


SPEC_CONFIGS = Path(__file__).parent / "data" / "configs"


def test_llama31_405b_tp8_by_hand():
    """126 layers; 8 kv heads / TP8 = 1 head x 128 x bf16: a 16-token page is 2 x 16 x 128 x 2 = 8,192 B a
    layer, so 40 GiB is 40 x 2**30 // 8,192 // 126 = 41,610 blocks, 665,760 tokens, 41,610 / 8,192 at 131,072."""
    kv = run_json(str(SPEC_CONFIGS / "meta-llama__Llama-3.1-405B.json"), "--kv-cache-memory-bytes", "40GiB",
                  "-tp", "8")["kv_cache"]
    assert (kv["kv_heads_per_rank"], kv["page_size_bytes"], kv["bytes_per_token"]) == (1, 8192, 126 * 512)
    assert (kv["num_blocks"], kv["tokens"]) == (41610, 41610 * 16)
    assert kv["max_concurrency"] == 41610 / 8192


def test_llama4_maverick_tp8_chunked_groups_by_hand():
    """36 chunked + 12 global layers: group_size min(36, 12) = 12 (36 is not < 1.5 x 12), so 4 groups of 12
    share one pool of 40 x 2**30 // 8,192 // 12 blocks. One request of 1,048,576 tokens needs 65,536 blocks
    in the global group and cdiv(8,192 + 8,192, 16) = 1,024 in each of the 3 chunked groups."""
    kv = run_json(str(SPEC_CONFIGS / "meta-llama__Llama-4-Maverick-17B-128E-Instruct.TRIMMED.json"),
                  "--kv-cache-memory-bytes", "40GiB", "-tp", "8", "--max-num-batched-tokens", "8192")["kv_cache"]
    blocks = 40 * 2**30 // 8192 // 12
    per_request = 1048576 // 16 + 3 * 1024
    assert (kv["group_size"], kv["num_groups"], kv["num_blocks"]) == (12, 4, blocks)
    assert kv["blocks_per_request"] == per_request
    assert kv["max_concurrency"] == blocks / per_request
    assert kv["tokens"] == int(blocks / per_request * 1048576)


def test_falcon_7b_mqa_by_hand():
    """One KV head of 64 in bf16: a 16-token page is 2 x 16 x 1 x 64 x 2 = 4,096 B a layer; 10 GiB over 32
    layers is 81,920 blocks, 1,310,720 tokens, 640x at 2,048 (128 blocks a request)."""
    kv = run_json(str(SPEC_CONFIGS / "tiiuae__falcon-7b.json"), "--kv-cache-memory-bytes", "10GiB")["kv_cache"]
    assert (kv["kv_heads_per_rank"], kv["page_size_bytes"], kv["bytes_per_token"]) == (1, 4096, 32 * 256)
    assert (kv["num_blocks"], kv["tokens"], kv["max_concurrency"]) == (81920, 1310720, 640.0)
    # 71 heads: TP 2 is refused as vLLM refuses it; at TP 71 the one KV head is replicated on every rank
    falcon = str(SPEC_CONFIGS / "tiiuae__falcon-7b.json")
    assert run(falcon, "--kv-cache-memory-bytes", "10GiB", "-tp", "2").exit_code == 2
    assert run_json(falcon, "--kv-cache-memory-bytes", "10GiB", "-tp", "71")["kv_cache"]["num_blocks"] == 81920


def test_every_block_size_vllm_accepts_is_accepted():
    """vLLM 0.11 config/cache.py BlockSize: 1, 8, 16, 32, 64, 128, 256; at 256 a Llama block is 32 MiB (2 x 32
    layers x 8 heads x 128 x 2 B x 256), so 40 GiB holds 1280 of them."""
    for size in (1, 8, 16, 32, 64, 128, 256):
        assert run(LLAMA, "--kv-cache-memory-bytes", "40GiB", "--block-size", str(size)).exit_code == 0, size
    assert run_json(LLAMA, "--kv-cache-memory-bytes", "40GiB", "--block-size", "256")["kv_cache"]["num_blocks"] == 1280


def test_vllm_version_with_patch_level():
    budget = str(27284 * 2 * (1 << 20))
    document = run_json(LLAMA, "--kv-cache-memory-bytes", budget, "--vllm-version", "v0.11.0")
    assert document["inputs"]["vllm_version"] == "0.11"
    assert document["kv_cache"]["num_blocks"] == 27284


def test_modelopt_fp8_kv_checkpoint_directory(tmp_path):
    """nvidia/Llama-3.1-70B-Instruct-FP8 (config.json + hf_quant_config.json, kv_cache_quant_algo FP8): the 0.33
    rules size `auto` in fp8 (vLLM resolve_kv_cache_dtype_string): page 2 * 16 * 8 * 128 * 1 = 32,768 B and
    40 GiB / 32,768 / 80 = 16,384 blocks = int(2.0 * 131,072) = 262,144 tokens; the 0.12 rules keep bf16:
    65,536 B, 8,192 blocks = 8,192 * 16 = 131,072 tokens."""
    configs = Path(__file__).parent / "data" / "configs"
    (tmp_path / "config.json").write_text((configs / "nvidia__Llama-3.1-70B-Instruct-FP8.json").read_text())
    (tmp_path / "hf_quant_config.json").write_text(
        (configs / "nvidia__Llama-3.1-70B-Instruct-FP8.hf_quant_config.json").read_text())
    newest = run_json(str(tmp_path), "--kv-cache-memory-bytes", "40GiB")["kv_cache"]
    assert (newest["kv_cache_dtype"], newest["page_size_bytes"], newest["num_blocks"], newest["tokens"]) == (
        "fp8_e4m3", 32768, 16384, 262144)
    assert any("auto resolved to fp8_e4m3" in note for note in newest["notes"])
    older = run_json(str(tmp_path), "--kv-cache-memory-bytes", "40GiB", "--vllm-version", "0.12")
    assert (older["kv_cache"]["kv_cache_dtype"], older["kv_cache"]["page_size_bytes"], older["kv_cache"]["num_blocks"],
            older["kv_cache"]["tokens"]) == ("bfloat16", 65536, 8192, 131072)
    assert any("--kv-cache-dtype fp8_e4m3" in warning for warning in older["warnings"])
