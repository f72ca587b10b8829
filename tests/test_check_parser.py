"""The vLLM log parser on real start-up excerpts, multi-rank and interleaved logs, and garbage.

Every case of ../shared/vllm-cases/cases.json (copied to tests/data/logs/caseNN.log with its source in
tests/data/logs/README.md) must parse to the figures the case records, field by field.
"""

from __future__ import annotations

import json
import math
import os
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import pytest

from kvadvise.check.parser import GIB, Size, parse_log, parse_text
from kvadvise.errors import InputError

LOGS = Path(__file__).parent / "data" / "logs"
# a verbatim copy of ../shared/vllm-cases/cases.json (each case keeps its `source`)
CASES_FILE = Path(__file__).parent / "data" / "logs" / "cases.json"


def _cases() -> list[dict]:
    """The cases, read from the copy of the shared file; the excerpts are also copied as tests/data/logs/caseNN.log."""
    return json.loads(CASES_FILE.read_text())


# Fields a case records that its raw_excerpt does not print: mostly tp = pp = 1, which the collector
# recorded as the default when no flag is shown, else values from the prose, the code around the
# log, or sibling reports (see each case's notes). The parser cannot and must not produce them;
# test_cases_fields_not_excerpted_are_really_absent keeps this list honest.
NOT_IN_EXCERPT = {
    "case01": {"tp", "pp", "dtype", "kv_cache_dtype"},  # notes: "from engine config line" (not excerpted)
    "case02": {"tp", "pp"},  # from the README's code
    "case04": {"tp", "pp", "dtype", "kv_cache_dtype"},
    "case06": {"tp", "pp", "dtype", "kv_cache_dtype"},
    "case07": {"pp"},
    "case10": {"tp", "pp"},
    "case11": {"tp", "pp"},
    "case12": {"tp", "pp"},
    "case13": {"tp", "pp"},
    "case14": {"tp", "pp"},
    "case15": {"pp"},
    "case16": {"kv_cache_dtype"},  # prose: "with kv-cache-dtype fp8"
    "case20": {"pp"},
    "case21": {"tp", "pp"},
    "case22": {"tp", "pp", "gpu_memory_utilization"},  # prose
    "case23": {"tp", "pp", "gpu_memory_utilization", "max_model_len"},  # the flags line has no `vllm serve`
    "case24": {"pp"},
    "case28": set(),
    "case29": {"tp", "pp"},
    "case30": {"tp", "pp"},
    "case31": {"tp", "pp"},
    "case32": {"tp", "pp"},
    "case35": {"pp", "gpu_memory_utilization"},  # prose: "with `--gpu-memory-utilization 0.5`"
    "case36": {"tp", "pp", "kv_cache_dtype", "gpu_memory_utilization"},  # from sibling reports
    "case37": {"tp", "pp"},
}
# The start-up a case records when its excerpt holds several (default: the last).
STARTUP_INDEX = {"case23": 1}  # the 0.2.4 run of three (0.2.3, 0.2.4, 0.2.5)


def _first(startup, getter):
    for rank in startup.ranks:
        value = getter(rank)
        if value is not None:
            return value
    return None


def _gib(size):
    return None if size is None else float(size.text)


def _parsed_fields(startup) -> dict:
    """The case fields, as read from a parsed start-up (None where the log does not print them)."""
    sug = lambda name: (lambda r: getattr(r.suggestion, name) if r.suggestion else None)  # noqa: E731
    error = startup.engine_value("max_len_error")
    return {
        "weights_gib": _gib(_first(startup, lambda r: r.weights_figure)),
        "load_seconds": _first(startup, lambda r: r.load_seconds),
        "non_torch_gib": _gib(_first(startup, lambda r: r.non_torch or sug("non_torch")(r))),
        "activation_peak_gib": _gib(_first(startup, lambda r: r.activation_peak or sug("activation_peak")(r))),
        "kv_available_gib": _gib(_first(startup, lambda r: r.available_kv)),
        "cudagraph_gib": _gib(_first(startup, lambda r: r.cuda_graph or sug("cuda_graph")(r))),
        "gpu_total_gib": _gib(_first(startup, lambda r: r.total or sug("total")(r))),
        "gpu_memory_utilization": _first(startup, lambda r: r.gpu_memory_utilization
                                         or sug("gpu_memory_utilization")(r)) or startup.config.gpu_memory_utilization,
        "kv_tokens": startup.engine_value("kv_tokens") or (error.kv_tokens if error else None),
        "max_concurrency": startup.engine_value("max_concurrency"),
        "max_concurrency_len": startup.engine_value("max_concurrency_len"),
        "gpu_blocks": startup.engine_value("gpu_blocks"),
        "max_model_len": startup.max_model_len,
        "tp": startup.config.tensor_parallel_size,
        "pp": startup.config.pipeline_parallel_size,
        "dtype": startup.config.dtype,
        "kv_cache_dtype": startup.config.kv_cache_dtype,
        "startup_free_gib": _gib(_first(startup, sug("free_at_start"))),
        "requested_gib": _gib(_first(startup, sug("requested"))),
        "suggest_kv_cache_memory_fit_bytes": _first(startup, sug("fit_bytes")),
        "suggest_kv_cache_memory_full_bytes": _first(startup, sug("full_bytes")),
        "kv_in_use_bytes": (lambda s: s.bytes if s is not None else None)(_first(startup, sug("kv_in_use"))),
    }


def test_every_case_has_its_log_file():
    for case in _cases():
        text = (LOGS / f"{case['id']}.log").read_text(encoding="utf-8")
        assert text == case["raw_excerpt"] + "\n", case["id"]
        assert f"| {case['id']}.log | {case['id']} |" in (LOGS / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["id"])
def test_case_figures(case):
    parse = parse_log(LOGS / f"{case['id']}.log")
    assert parse.startups, "no start-up found"
    startup = parse.startups[STARTUP_INDEX.get(case["id"], -1)]
    parsed = _parsed_fields(startup)
    skipped = NOT_IN_EXCERPT.get(case["id"], set())
    checked = 0
    for name, value in parsed.items():
        expected = case.get(name)
        if expected is None or name in skipped:
            continue
        checked += 1
        assert value == expected, f"{case['id']} {name}: parsed {value!r}, case {expected!r}"
    # and nothing the case records as printed is missed silently: at least one figure per case
    assert checked >= 1
    if startup.vllm_version is not None:
        assert startup.vllm_version in case["vllm_version"]
    if startup.config.model is not None:  # a hub id, or a local path whose last part names the model
        assert startup.config.model in case["model"] or Path(startup.config.model).name in case["model"]


def test_cases_fields_not_excerpted_are_really_absent():
    """The exemptions above are honest: those fields are not printed in the excerpt."""
    for case in _cases():
        parsed = _parsed_fields(parse_log(LOGS / f"{case['id']}.log").startups[STARTUP_INDEX.get(case["id"], -1)])
        for name in NOT_IN_EXCERPT.get(case["id"], set()):
            if name in parsed and case.get(name) is not None:
                assert parsed[name] is None or parsed[name] != case[name], f"{case['id']} {name} is parsed after all"


def test_multiple_startups():
    case07 = parse_log(LOGS / "case07.log")
    assert [s.engine_value("gpu_blocks") for s in case07.startups] == [4739, 5266]
    assert [s.engine_value("max_concurrency") for s in case07.startups] == [1.85, 2.06]
    assert all(s.config.tensor_parallel_size == 8 for s in case07.startups)
    case23 = parse_log(LOGS / "case23.log")
    assert [s.engine_value("gpu_blocks") for s in case23.startups] == [1464, 1464, 112]


def test_suggestion_line_case04():
    rank = parse_log(LOGS / "case04.log").startups[0].ranks[0]
    assert (rank.label, rank.tensor_parallel_rank, rank.pid) == ("Worker_TP1", 1, 1806414)
    line = rank.suggestion
    assert (line.free_at_start.text, line.total.text, line.gpu_memory_utilization, line.requested.text) == (
        "139.21", "139.81", 0.9, "125.83")
    assert (line.weights.text, line.activation_peak.text, line.non_torch.text, line.cuda_graph.text) == (
        "74.28", "5.58", "1.38", "2.37")
    assert (line.fit_bytes, line.full_bytes, line.kv_in_use.bytes) == (45175492096, 59540753920, 47878721024)


def test_newer_suggestion_wording():
    startup = parse_log(LOGS / "gb300-decode-graph-estimate.log").startups[0]
    rank = startup.ranks[0]
    assert (rank.label, rank.data_parallel_rank, rank.expert_parallel_rank) == ("Worker_DP0_EP0", 0, 0)
    line = rank.suggestion
    assert line.weights is None and line.non_torch is None
    assert (line.consumed.text, line.activation_peak.text, line.cuda_graph.text) == ("171.25", "36.74", "8.57")
    assert (line.fit_bytes, line.full_bytes) == (40574291354, 61814666240)
    assert line.kv_in_use.text == "46.5" and line.kv_in_use.unit == "GiB"
    assert (rank.cuda_graph_pool.text, rank.cuda_graph_estimate.text) == ("8.57", "33.06")
    assert rank.weights_loaded.text == "168.89" and rank.available_kv.text == "46.50"
    # "GPU KV cache size: N tokens, Maximum concurrency for L tokens per request: Cx" on one line
    assert (startup.engine_value("kv_tokens"), startup.engine_value("max_concurrency"),
            startup.engine_value("max_concurrency_len")) == (394633, 38.54, 10240)
    assert startup.engine_version == "V1"


def test_interleaved_ranks_and_a_pasted_docker_command():
    startup = parse_log(LOGS / "qwen3-235b-tp4.log").startups[0]
    assert [r.label for r in startup.ranks] == ["Worker_TP0", "Worker_TP1", "Worker_TP2", "Worker_TP3"]
    assert [r.tensor_parallel_rank for r in startup.ranks] == [0, 1, 2, 3]
    assert [r.pid for r in startup.ranks] == [770, 771, 772, 773]
    assert {r.suggestion.fit_bytes for r in startup.ranks} == {29407858586}
    assert startup.ranks[0].weights_loaded.text == "55.19"
    config = startup.config
    assert (config.model, config.tensor_parallel_size, config.gpu_memory_utilization, config.max_model_len,
            config.max_num_seqs) == ("Qwen/Qwen3-235B-A22B-Instruct-2507-FP8", 4, 0.9, 32768, 32)
    assert config.sources == ("command line",)


WORKER_PREFIXES = """\
\x1b[1;36m(VllmWorker TP1 pid=4242)\x1b[0;0m INFO 05-01 10:00:01 [gpu_model_runner.py:1] Model loading took 7.50 GiB and 3.1 seconds
\x1b[1;36m(VllmWorker TP0 pid=4241)\x1b[0;0m INFO 05-01 10:00:01 [gpu_model_runner.py:1] Model loading took 7.49 GiB and 3.0 seconds
(Worker_PP1_TP0 pid=77) INFO 05-01 10:00:02 [gpu_worker.py:1] Available KV cache memory: 12.00 GiB
(RayWorkerWrapper pid=3131, ip=10.0.0.7) INFO 05-01 10:00:03 [worker.py:1] Loading model weights took 3.2 GB
(VllmWorkerProcess pid=235) INFO 05-01 10:00:03 [worker.py:1] model weights take 6.74GiB; non_torch_memory takes 0.11GiB; PyTorch activation peak memory takes 1.66GiB; the rest of the memory reserved for KV Cache is 3.88GiB.
vllm-llm-1  | (EngineCore_DP1 pid=900) INFO 05-01 10:00:04 [gpu_worker.py:1] Available KV cache memory: 20.25 GiB
[2025-12-15T20:52:30Z] (Worker_DP1_TP1_EP3 pid=3585771) INFO 08-19 05:56:57 [gpu_model_runner.py:6936] Estimated CUDA graph memory: 118.65 GiB total
"""


def test_worker_prefixes_and_ansi_colour():
    startup = parse_text(WORKER_PREFIXES).startups[0]
    by_label = {r.label: r for r in startup.ranks}
    assert set(by_label) == {"VllmWorker TP0", "VllmWorker TP1", "Worker_PP1_TP0", "RayWorkerWrapper pid=3131",
                             "VllmWorkerProcess pid=235", "EngineCore_DP1", "Worker_DP1_TP1_EP3"}
    assert by_label["VllmWorker TP1"].tensor_parallel_rank == 1
    assert by_label["VllmWorker TP1"].weights_loaded.text == "7.50"
    worker = by_label["Worker_PP1_TP0"]
    assert (worker.pipeline_parallel_rank, worker.tensor_parallel_rank, worker.available_kv.text) == (1, 0, "12.00")
    ray = by_label["RayWorkerWrapper pid=3131"]
    assert (ray.pid, ray.weights_loaded.text, ray.weights_loaded.unit) == (3131, "3.2", "GB")
    assert by_label["VllmWorkerProcess pid=235"].available_kv.text == "3.88"
    assert by_label["EngineCore_DP1"].data_parallel_rank == 1
    big = by_label["Worker_DP1_TP1_EP3"]
    assert (big.data_parallel_rank, big.tensor_parallel_rank, big.expert_parallel_rank) == (1, 1, 3)
    assert big.cuda_graph_estimate.text == "118.65"
    assert len(parse_text(WORKER_PREFIXES).startups) == 1


def test_line_numbers_count_newlines_only():
    text = "Capturing CUDA graphs: 50%|#####\rCapturing CUDA graphs: 100%|##########\n" \
           "INFO 12-19 22:58:41 model_runner.py:1535] Graph capturing finished in 14 secs, took 0.21 GiB\n"
    startup = parse_text("noise\n" + text).startups[0]
    assert startup.ranks[0].first_line == 3
    assert startup.ranks[0].cuda_graph.text == "0.21"
    assert parse_text("noise\n" + text).lines_read == 3


def test_size_intervals():
    # "2.89 GiB" is any byte count in [2.885, 2.895) GiB (the brief's example)
    size = Size("2.89")
    assert size.low_bytes == -(-2885 * GIB // 1000) and size.high_bytes == -(-2895 * GIB // 1000) - 1
    assert size.bytes == round(2.89 * GIB)
    # vLLM's round(x, 2) drops trailing zeros: "46.5" is still known to 2 decimals
    assert Size("46.5").decimals == 2
    assert Size("46.5").low_bytes == math.ceil(Fraction("46.495") * GIB)
    assert Size("46.5").high_bytes == math.ceil(Fraction("46.505") * GIB) - 1
    assert Size("46.5").high_bytes - Size("46.5").low_bytes == Size("46.50").high_bytes - Size("46.50").low_bytes
    # 4-decimal figures are tighter
    assert Size("8.6253").high_bytes - Size("8.6253").low_bytes < GIB // 10000 + 1
    assert Size("47878721024", "bytes").low_bytes == Size("47878721024", "bytes").high_bytes == 47878721024
    assert Size("-1.05").high_bytes < 0


def test_truncated_log_never_crashes():
    text = (LOGS / "case04.log").read_text()
    for cut in range(0, len(text), 7):
        parse_text(text[:cut])  # no exception for any prefix
    # cut in the middle of the suggestion line: the terms before the cut are kept, the rest is None
    cut = text.index("to fit into requested memory")
    rank = parse_text(text[:cut]).startups[0].ranks[0]
    assert rank.suggestion.cuda_graph.text == "2.37"
    assert rank.suggestion.fit_bytes is None and rank.suggestion.full_bytes is None


def test_empty_binary_and_garbage(tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert parse_log(empty).startups == () and parse_log(empty).lines_read == 0
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(bytes(range(256)) * 4096 + os.urandom(1 << 20))
    assert parse_log(binary).startups == ()
    garbage = tmp_path / "garbage.log"
    garbage.write_text("took memory blocks: nothing\nversion -- \\\nKV cache usage 5%\n" * 100)
    assert parse_log(garbage).startups == ()


def test_missing_and_directory(tmp_path):
    with pytest.raises(InputError, match="not found"):
        parse_log(tmp_path / "nope.log")
    with pytest.raises(InputError, match="directory"):
        parse_log(tmp_path)


def test_100_mb_log_is_streamed(tmp_path):
    """A 100 MB serving log (start-up at the top, then stats lines) parses in seconds in a few MB."""
    head = (LOGS / "qwen3-235b-tp4.log").read_bytes()
    noise = (b"(APIServer pid=1) INFO 09-04 11:47:26 [loggers.py:310] Engine 000: Avg prompt throughput: 0.0 "
             b"tokens/s, Avg generation throughput: 168.1 tokens/s, Running: 1 reqs, Waiting: 0 reqs, GPU KV cache "
             b"usage: 4.6%, Prefix cache hit rate: 0.0%\n"
             b"(APIServer pid=1) INFO:     127.0.0.1:50312 - \"POST /v1/chat/completions HTTP/1.1\" 200 OK\n")
    block = noise * ((1 << 20) // len(noise))
    path = tmp_path / "big.log"
    with open(path, "wb") as stream:
        stream.write(head)
        for _ in range(100):
            stream.write(block)
        stream.write(head)  # the same start-up again at the very end: a second start-up
    size = path.stat().st_size
    assert size > 100 * 10**6
    tracemalloc.start()
    started = time.perf_counter()
    parse = parse_log(path)
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert parse.bytes_read == size
    assert parse.lines_read == 2 * head.count(b"\n") + 100 * block.count(b"\n")
    assert [s.ranks[0].suggestion.fit_bytes for s in parse.startups] == [29407858586, 29407858586]
    assert parse.startups[1].first_line == head.count(b"\n") + 100 * block.count(b"\n") + 1
    assert parse.startups[1].config.tensor_parallel_size == 4
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.1f} MiB: the file was not streamed"
    assert elapsed < 8, f"{elapsed:.1f} s for {size / 2**20:.0f} MiB"


def test_log_full_of_trigger_lines_is_linear(tmp_path):
    """Lines that hold a needle ("took", "memory") but no figure must each cost their own length only: a
    20 MB log of them (no \r anywhere, the case that once rescanned the chunk per hit) parses in seconds."""
    head = (LOGS / "qwen3-235b-tp4.log").read_bytes()
    noise = (b"(APIServer pid=1) INFO 09-04 11:47:26 [logger.py:41] Request chatcmpl-1 took 0.31 s; "
             b"memory use steady\n")
    path = tmp_path / "triggers.log"
    with open(path, "wb") as stream:
        stream.write(head)
        stream.write(noise * (20 * 10**6 // len(noise)))
    started = time.perf_counter()
    parse = parse_log(path)
    elapsed = time.perf_counter() - started
    assert parse.lines_read == head.count(b"\n") + 20 * 10**6 // len(noise)
    assert [s.ranks[0].suggestion.fit_bytes for s in parse.startups] == [29407858586]
    assert elapsed < 8, f"{elapsed:.1f} s for 20 MB of trigger lines"


# Verbatim lines of a vLLM 0.11.0 TP4 start-up of Qwen3-VL-30B-A3B-Instruct (GitHub file, find_string/read_file
# id 42514581982; the engine config line is cut where the stored excerpt ends), followed by one figure line
# that is NOT from that log (hand-written, so that the start-up has a figure and is kept).
QWEN3_VL_CONFIG = """\
(APIServer pid=41428) INFO 10-06 15:56:26 [utils.py:233] non-default args: {'model_tag': '/home/zp/work/models/Qwen/Qwen3-VL-30B-A3B-Instruct', 'host': '0.0.0.0', 'api_key': ['sk123'], 'model': '/home/zp/work/models/Qwen/Qwen3-VL-30B-A3B-Instruct', 'max_model_len': 65536, 'served_model_name': ['Qwen3-VL-30B-A3B-Instruct'], 'tensor_parallel_size': 4}
(APIServer pid=41428) INFO 10-06 15:56:26 [model.py:1510] Using max model len 65536
(EngineCore_DP0 pid=41565) INFO 10-06 15:56:35 [core.py:77] Initializing a V1 LLM engine (v0.11.0) with config: model='/home/zp/work/models/Qwen/Qwen3-VL-30B-A3B-Instruct', speculative_config=None, tokenizer='/home/zp/work/models/Qwen/Qwen3-VL-30B-A3B-Instruct', skip_tokenizer_init=False, tokenizer_mode=auto, revision=None, tokenizer_revision=None, trust_remote_code=False, dtype=torch.bfloat16, max_seq_len=65536, download_dir=None, load_format=auto, tensor_parallel_size=4, pipeline_parallel_size=1, data_parallel_size=1, disable_custom_all_reduce=False, quantization=None, enforce_eager=False, kv_cache_dtype=auto, device_config=cuda, structured_outputs_config=StructuredOutputsConfig(backend='auto', disable_fallback=False, disable_any_whitespace=False, disable_additional_properties=False, reasoning_parser=''), observability_config=ObservabilityConfig(show_hidden_metrics_for_version=None, otlp_traces_endpoint=None, collect_detailed_traces=None), seed=0, served_model_name=Qwen3-VL-30B-A3B-Instruct, enable_prefix_caching=True, chunked_prefill_enabled=True, pooler_config=None, compilation_config={"level":3,"
(Worker_TP0 pid=41700) INFO 10-06 15:57:00 [gpu_worker.py:298] Available KV cache memory: 20.00 GiB
"""


def test_engine_config_line_and_non_default_args():
    startup = parse_text(QWEN3_VL_CONFIG).startups[0]
    config = startup.config
    assert (startup.vllm_version, startup.engine_version) == ("0.11.0", "V1")
    assert config.model == "/home/zp/work/models/Qwen/Qwen3-VL-30B-A3B-Instruct"
    assert (config.tensor_parallel_size, config.pipeline_parallel_size, config.data_parallel_size) == (4, 1, 1)
    assert (config.max_model_len, config.dtype, config.kv_cache_dtype, config.quantization, config.enforce_eager) == (
        65536, "bfloat16", "auto", None, False)
    assert config.sources == ("non-default args", "engine config line")
    assert [r.label for r in startup.ranks] == ["Worker_TP0"]  # settings lines are not ranks


def test_nested_ray_prefix_names_the_inner_process():
    # verbatim (GitHub file, find_string/read_file id 69533898330), cut at the end of its tensor_parallel_size
    line = ("(APIServer pid=5332) (DPEngineCoreActor pid=5439, ip=10.233.69.249) INFO 01-12 06:15:17 [core.py:77] "
            "Initializing a V1 LLM engine (v0.11.0) with config: model='Qwen/Qwen2.5-0.5B-Instruct', "
            "speculative_config=None, tokenizer='Qwen/Qwen2.5-0.5B-Instruct', dtype=torch.float16, "
            "max_seq_len=32768, tensor_parallel_size=1, pipeline_parallel_size=1, data_parallel_size=2\n")
    from kvadvise.check.parser import _origin

    origin = _origin(line)
    assert (origin.label, origin.kind, origin.pid) == ("DPEngineCoreActor pid=5439", "engine", 5439)


def test_crlf_line_endings(tmp_path):
    """A log saved with Windows line endings parses the same, commands continued with backslashes included."""
    for name in ("case04.log", "qwen3-235b-tp4.log"):
        unix = parse_log(LOGS / name)
        path = tmp_path / name
        path.write_bytes((LOGS / name).read_bytes().replace(b"\n", b"\r\n"))
        windows = parse_log(path)
        assert windows.lines_read == unix.lines_read
        assert windows.startups[0].config == unix.startups[0].config
        assert [r.suggestion for r in windows.startups[0].ranks] == [r.suggestion for r in unix.startups[0].ranks]


def test_v06_engine_line_without_engine_word_gives_the_version():
    """vLLM 0.6-0.7.1 print "Initializing an LLM engine (v0.6.4.post1)" with no V0/V1 word (a public log of
    microsoft/phi-1_5, find_string id 19059716582); the version is read and the engine left unknown."""
    text = ("INFO 12-06 11:39:30 llm_engine.py:249] Initializing an LLM engine (v0.6.4.post1) with config: "
            "model='microsoft/phi-1_5', speculative_config=None, tokenizer='microsoft/phi-1_5', "
            "skip_tokenizer_init=False\n"
            "INFO 12-06 11:39:40 gpu_executor.py:122] # GPU blocks: 715, # CPU blocks: 1310\n")
    startup = parse_text(text).startups[0]
    assert (startup.vllm_version, startup.engine_version, startup.config.model) == ("0.6.4.post1", None,
                                                                                    "microsoft/phi-1_5")
