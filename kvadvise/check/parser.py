"""Stream a vLLM start-up log into what each rank and each engine printed.

Knows the start-up lines of vLLM 0.6 to 0.33, V0 and V1 engines: model loading, the V0 memory
profile (three wordings), "Available KV cache memory", "# GPU blocks" / "# cuda blocks", "GPU KV cache
size", "Maximum concurrency", graph capture, "CUDA graph pool memory", "Estimated CUDA graph memory",
the `--kv-cache-memory=` suggestion line (the 0.10.2 wording with "for weight" and the newer one with
"for consumed memory (weights + non-torch)"), the engine config line, "non-default args", a pasted
`vllm serve` command, the start-up errors about KV space, and the vLLM version where printed.
Worker prefixes such as `(VllmWorker TP1 pid=7)`, `(Worker_PP1_TP0 pid=7)`, `(EngineCore_DP0 pid=7)`,
`(VllmWorkerProcess pid=7)`, `(RayWorkerWrapper pid=7, ip=...)` name the rank; docker-compose and
timestamp prefixes and ANSI colour codes are ignored.

Does not know what the numbers should be (findings.py) nor how to print them (report/check.py).
Never holds the file whole: it reads fixed-size chunks, finds trigger phrases in the raw bytes and
decodes only the lines that carry one, so a 100 MB log costs a few MB of memory.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, BinaryIO, Iterator, Optional

from kvadvise.errors import InputError

GIB = 1 << 30
CHUNK_BYTES = 1 << 22          # read 4 MiB at a time
MAX_PARTIAL_LINE_BYTES = 1 << 20  # a "line" longer than this (binary data) is cut, never accumulated
MAX_LINE_CHARS = 1 << 16       # a decoded line is cut to this many characters

# Substrings one of which every line we parse contains. Searched with bytes.find (C speed, about a
# second per 100 MB for all of them); kept few and specific, so vLLM's periodic stats lines ("GPU KV
# cache usage: 1.0%") never match and a long serving log is skipped quickly. "emory" covers every memory
# line (Available KV cache memory, total_gpu_memory, Free memory on device, CUDA graph ... memory, ...).
_NEEDLES = (b"took", b"blocks", b"emory", b"concurrency", b"cache size", b"LLM engine", b"version",
            b"non-default", b"vllm serve", b"vllm.entrypoints", b"vllm-openai", b"seq len", b"failed to start",
            b"initialization failed", b"weights take", b"instance can use",
            b"\\\n", b"\\\r", b"--")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_NUM = r"-?\d+(?:\.\d+)?"
_INT = r"\d[\d,]*"


@dataclass(frozen=True)
class Size:
    """A memory figure as vLLM printed it: the number's text and its unit.

    vLLM prints GiB rounded to 2 decimals (`%.2f` or `round(x, 2)`, which drops trailing zeros), some
    figures to 4; V0 labels GiB figures "GB" (it divides by 2**30). So "2.89" stands for any byte count
    in [2.885, 2.895) GiB: `low_bytes`..`high_bytes` inclusive. "bytes" figures are exact.
    """

    text: str
    unit: str = "GiB"  # "GiB", "GB" (a GiB figure labelled GB by vLLM V0) or "bytes"

    @property
    def exact(self) -> bool:
        return self.unit == "bytes"

    @property
    def decimals(self) -> int:
        if self.exact:
            return 0
        fraction = self.text.partition(".")[2]
        return max(2, len(fraction))

    @property
    def gib(self) -> float:
        return int(self.text) / GIB if self.exact else float(self.text)

    @property
    def bytes(self) -> int:
        """The centre of the interval (the printed number converted), rounded to a byte."""
        if self.exact:
            return int(self.text)
        return int((Decimal(self.text) * GIB).to_integral_value())

    @property
    def low_bytes(self) -> int:
        if self.exact:
            return int(self.text)
        half = Decimal(5) / (Decimal(10) ** (self.decimals + 1))
        return math.ceil((Decimal(self.text) - half) * GIB)

    @property
    def high_bytes(self) -> int:
        if self.exact:
            return int(self.text)
        half = Decimal(5) / (Decimal(10) ** (self.decimals + 1))
        return math.ceil((Decimal(self.text) + half) * GIB) - 1

    def __str__(self) -> str:
        return f"{self.text} {self.unit}"


@dataclass(frozen=True)
class SuggestionLine:
    """vLLM's "Free memory on device ... Replace gpu_memory_utilization config with ..." line (0.10.2+)."""

    line_number: int
    free_at_start: Optional[Size] = None
    total: Optional[Size] = None
    gpu_memory_utilization: Optional[float] = None
    requested: Optional[Size] = None
    weights: Optional[Size] = None            # 0.10.2 wording: "X GiB for weight"
    consumed: Optional[Size] = None           # newer wording: "X GiB for consumed memory (weights + non-torch)"
    activation_peak: Optional[Size] = None
    non_torch: Optional[Size] = None
    cuda_graph: Optional[Size] = None
    fit_bytes: Optional[int] = None           # `--kv-cache-memory=N` "to fit into requested memory"
    full_bytes: Optional[int] = None          # `--kv-cache-memory=M` "to fully utilize gpu memory"
    kv_in_use: Optional[Size] = None          # "Current kv cache memory in use is K bytes" (or "K GiB")


@dataclass(frozen=True)
class RankLog:
    """What one rank (one worker process, or the single process of a TP=1 engine) printed."""

    label: str
    kind: str                                  # "worker", "engine", "main" (no prefix), "api"
    tensor_parallel_rank: Optional[int] = None
    pipeline_parallel_rank: Optional[int] = None
    data_parallel_rank: Optional[int] = None
    expert_parallel_rank: Optional[int] = None
    rank: Optional[int] = None
    pid: Optional[int] = None
    weights_loaded: Optional[Size] = None      # "Model loading took X GiB" / V0 "Loading model weights took X GB"
    load_seconds: Optional[float] = None
    # the V0 memory profile ("the current vLLM instance can use ...", "model weights take ...")
    total: Optional[Size] = None
    gpu_memory_utilization: Optional[float] = None
    requested: Optional[Size] = None
    weights: Optional[Size] = None
    non_torch: Optional[Size] = None
    activation_peak: Optional[Size] = None
    available_kv: Optional[Size] = None        # V0 "reserved for KV Cache is" / V1 "Available KV cache memory"
    # CUDA graphs
    cuda_graph: Optional[Size] = None          # "Graph capturing finished in S secs, took X GiB"
    graph_seconds: Optional[float] = None
    cuda_graph_pool: Optional[Size] = None     # "CUDA graph pool memory: X GiB (actual), ..."
    cuda_graph_estimate: Optional[Size] = None  # "... Y GiB (estimated)" / "Estimated CUDA graph memory: Y GiB"
    graph_profiling_enabled: bool = False      # "CUDA graph memory profiling is enabled" (estimate subtracted)
    suggestion: Optional[SuggestionLine] = None
    first_line: Optional[int] = None

    @property
    def weights_figure(self) -> Optional[Size]:
        """The most precise weights figure printed: the loading line (4 decimals) before the profile term."""
        if self.weights_loaded is not None:
            return self.weights_loaded
        if self.weights is not None:
            return self.weights
        return self.suggestion.weights if self.suggestion else None


@dataclass(frozen=True)
class MaxLenError:
    """vLLM refused max_model_len: "To serve at least one request ..." (V1) or "max seq len ... larger" (V0)."""

    line_number: int
    max_model_len: int
    kv_needed: Optional[Size] = None
    kv_available: Optional[Size] = None
    estimated_max_model_len: Optional[int] = None
    kv_tokens: Optional[int] = None            # V0: "maximum number of tokens that can be stored in KV cache (N)"


@dataclass(frozen=True)
class EngineLog:
    """What one engine (EngineCore, the V0 driver, the API server's echo) printed about the KV cache."""

    label: str
    gpu_blocks: Optional[int] = None
    cpu_blocks: Optional[int] = None
    kv_tokens: Optional[int] = None
    max_concurrency: Optional[float] = None
    max_concurrency_len: Optional[int] = None
    max_len_error: Optional[MaxLenError] = None


@dataclass(frozen=True)
class EngineConfig:
    """The settings a start-up printed or was launched with (engine config line > non-default args > command)."""

    model: Optional[str] = None
    tensor_parallel_size: Optional[int] = None
    pipeline_parallel_size: Optional[int] = None
    data_parallel_size: Optional[int] = None
    max_model_len: Optional[int] = None
    gpu_memory_utilization: Optional[float] = None
    kv_cache_dtype: Optional[str] = None
    block_size: Optional[int] = None
    dtype: Optional[str] = None
    quantization: Optional[str] = None
    enforce_eager: Optional[bool] = None
    max_num_seqs: Optional[int] = None
    max_num_batched_tokens: Optional[int] = None
    kv_cache_memory_bytes: Optional[int] = None
    sources: tuple[str, ...] = ()              # "engine config line", "non-default args", "command line"


@dataclass(frozen=True)
class Failure:
    """A start-up error line vLLM printed (no KV space, engine failed to start)."""

    code: str                                  # "no_kv_memory", "engine_failed"
    line_number: int
    text: str


@dataclass(frozen=True)
class StartupLog:
    """One start-up of vLLM found in the log."""

    index: int
    first_line: int
    last_line: int
    vllm_version: Optional[str]
    engine_version: Optional[str]              # "V0" or "V1" where the log says so
    config: EngineConfig
    ranks: tuple[RankLog, ...]
    engines: tuple[EngineLog, ...]
    failures: tuple[Failure, ...] = ()

    def engine_value(self, name: str) -> Any:
        """The first engine that printed `name` (DP engines print the same figure each)."""
        for engine in self.engines:
            value = getattr(engine, name)
            if value is not None:
                return value
        return None

    @property
    def max_model_len(self) -> Optional[int]:
        if self.config.max_model_len is not None:
            return self.config.max_model_len
        length = self.engine_value("max_concurrency_len")
        if length is not None:
            return length
        error = self.engine_value("max_len_error")
        return error.max_model_len if error else None


@dataclass(frozen=True)
class LogParse:
    """Every start-up found in one log file."""

    path: str
    bytes_read: int
    lines_read: int
    startups: tuple[StartupLog, ...]


# ------------------------------------------------------------------------------------------------
# line patterns

_PREFIX = re.compile(r"\((?P<inner>[A-Za-z_][\w\- ]*?(?:\s+(?:pid|rank|ip)=[^()]*)?|(?:pid|rank)=\d+[^()]*)\)")
_PREFIX_NAMES = re.compile(r"^(?:VllmWorker|Worker|EngineCore|DPEngineCore|APIServer|RayWorkerWrapper|pid=|rank=)")
_LEVEL = re.compile(r"\b(?:INFO|WARNING|WARN|DEBUG|ERROR|CRITICAL)\b")

_LOADING = re.compile(rf"(?:Model loading took|Loading model weights took)\s+(?P<size>{_NUM})\s*(?P<unit>GiB|GB)"
                      rf"(?:\s+memory)?(?:\s+and\s+(?P<seconds>{_NUM})\s*s)?")
_V0_TOTAL = re.compile(rf"total_gpu_memory\s*(?:=|\()?\s*(?P<v>{_NUM})\s*GiB")
_V0_UTIL = re.compile(rf"\bgpu_memory_utilization\s*(?:=|\()?\s*(?P<v>{_NUM})(?!\s*G)")
_V0_REQUESTED = re.compile(rf"instance can use\s+(?:.*?=\s*)?(?P<v>{_NUM})\s*GiB")
_V0_WEIGHTS = re.compile(rf"model weights take\s*(?P<v>{_NUM})\s*GiB")
_V0_NON_TORCH = re.compile(rf"\bnon_torch_memory\s*(?:takes|=)?\s*(?P<v>{_NUM})\s*GiB")
_V0_ACTIVATION = re.compile(rf"PyTorch activation peak memory\s*(?:takes)?\s*(?P<v>{_NUM})\s*GiB")
_V0_KV = re.compile(rf"(?:reserved for KV Cache is(?:\s+only)?|kv_cache_size=|available_kv_cache_memory)"
                    rf"\s*(?P<v>{_NUM})\s*GiB")
_V1_KV = re.compile(rf"Available KV cache memory:\s*(?P<v>{_NUM})\s*GiB")
_GRAPH = re.compile(rf"Graph capturing finished in\s*(?P<seconds>{_NUM})\s*secs?,\s*took\s*(?P<v>{_NUM})\s*GiB")
_GRAPH_POOL = re.compile(rf"CUDA graph pool memory:\s*(?P<actual>{_NUM})\s*GiB\s*\(actual\)"
                         rf"(?:,\s*(?P<estimate>{_NUM})\s*GiB\s*\(estimated\))?")
_GRAPH_ESTIMATE = re.compile(rf"Estimated CUDA graph memory:\s*(?P<v>{_NUM})\s*GiB")
_GRAPH_PROFILING = re.compile(r"CUDA graph memory profiling is enabled")
_BLOCKS = re.compile(rf"(?:#\s*)?(?:GPU|CUDA|cuda|gpu) blocks:\s*[*_`]*(?P<v>{_INT})")
_CPU_BLOCKS = re.compile(rf"#\s*CPU blocks:\s*(?P<v>{_INT})")
_NUM_GPU_BLOCKS = re.compile(r"num_gpu_blocks is:\s*(?P<v>\d+)")
_TOKENS = re.compile(rf"GPU KV cache size:\s*(?P<v>{_INT})\s*tokens")
_CONCURRENCY = re.compile(rf"Maximum concurrency for\s*(?P<len>{_INT})\s*tokens per request:\s*(?P<v>{_NUM})x")
# the suggestion line, term by term (a truncated line keeps the terms it has)
_SUG_FREE = re.compile(rf"Free memory on device \((?P<free>{_NUM})/(?P<total>{_NUM}) GiB\)")
_SUG_DESIRED = re.compile(rf"Desired GPU memory utilization is \((?P<util>{_NUM}),\s*(?P<req>{_NUM}) GiB\)")
_SUG_WEIGHT = re.compile(rf"(?P<v>{_NUM}) GiB for weight\b")
_SUG_CONSUMED = re.compile(rf"(?P<v>{_NUM}) GiB for consumed memory")
_SUG_ACTIVATION = re.compile(rf"(?P<v>{_NUM}) GiB for peak activation")
_SUG_NON_TORCH = re.compile(rf"(?P<v>{_NUM}) GiB for non-torch memory")
_SUG_GRAPH = re.compile(rf"(?P<v>{_NUM}) GiB for CUDAGraph memory")
_SUG_FIT = re.compile(rf"--kv-cache-memory=(?P<v>-?\d+)`?(?:\s*\({_NUM} GiB\))?\s*to fit")
_SUG_FULL = re.compile(rf"--kv-cache-memory=(?P<v>-?\d+)`?(?:\s*\({_NUM} GiB\))?\s*to fully")
_SUG_IN_USE = re.compile(rf"kv cache memory in use is\s*(?:(?P<bytes>-?\d+) bytes|(?P<gib>{_NUM})\s*GiB)")
# errors about KV space
_V1_MAX_LEN = re.compile(rf"max seq len \((?P<len>\d+)\),?\s*\(?(?P<need>{_NUM}) GiB KV cache is needed"
                         rf".*?available KV cache memory \((?P<avail>{_NUM}) GiB\)"
                         rf"(?:.*?estimated maximum model length is (?P<est>\d+))?")
_V0_MAX_LEN = re.compile(r"max seq len \((?P<len>\d+)\) is larger than the maximum number of tokens that can be "
                         r"stored in KV cache \((?P<tokens>\d+)\)")
_NO_MEMORY = re.compile(r"No available memory for the cache blocks")
_FAILED = re.compile(r"Engine ?[Cc]ore failed to start|Engine core initialization failed")
# version and configuration
_VERSION_PATTERNS = (
    # 0.6-0.7.1 print no engine word: "Initializing an LLM engine (v0.6.4.post1) with config: ..."
    re.compile(r"Initializing an? (?:(?P<engine>V[01]) )?LLM engine \(v(?P<v>[^)\s]+)\)"),
    re.compile(r"vLLM API server version (?P<v>v?\d[^\s,]*)"),
    re.compile(r"vLLM version (?P<v>v?\d[^\s,]*)"),
)
_APISERVER_VERSION = re.compile(r"\bversion (?P<v>v?\d+\.\d+[^\s,]*)")
_ENGINE_WORD = re.compile(r"Initializing an? (?P<engine>V[01]) LLM engine")
_CONFIG_LINE = re.compile(r"LLM engine .*with config:")
_NON_DEFAULT = re.compile(r"non-default args:")
_COMMAND = re.compile(r"(?:^|[\s;&|$])(?:vllm serve|python3? -m vllm\.entrypoints\S*|vllm\.entrypoints\S*)"
                      r"|vllm/vllm-openai|vllm-openai:")

_CONFIG_KEYS = {
    # name in the engine config line / non-default args -> (our field, type)
    "model": ("model", str), "model_tag": ("model", str),
    "tensor_parallel_size": ("tensor_parallel_size", int), "pipeline_parallel_size": ("pipeline_parallel_size", int),
    "data_parallel_size": ("data_parallel_size", int), "max_seq_len": ("max_model_len", int),
    "max_model_len": ("max_model_len", int), "gpu_memory_utilization": ("gpu_memory_utilization", float),
    "kv_cache_dtype": ("kv_cache_dtype", str), "block_size": ("block_size", int), "dtype": ("dtype", str),
    "quantization": ("quantization", str), "enforce_eager": ("enforce_eager", bool),
    "max_num_seqs": ("max_num_seqs", int), "max_num_batched_tokens": ("max_num_batched_tokens", int),
    "kv_cache_memory_bytes": ("kv_cache_memory_bytes", int),
}
_COMMAND_FLAGS = {
    "--model": "model", "--tensor-parallel-size": "tensor_parallel_size", "-tp": "tensor_parallel_size",
    "--pipeline-parallel-size": "pipeline_parallel_size", "-pp": "pipeline_parallel_size",
    "--data-parallel-size": "data_parallel_size", "-dp": "data_parallel_size",
    "--max-model-len": "max_model_len", "--gpu-memory-utilization": "gpu_memory_utilization",
    "--kv-cache-dtype": "kv_cache_dtype", "--block-size": "block_size", "--dtype": "dtype",
    "--quantization": "quantization", "-q": "quantization", "--max-num-seqs": "max_num_seqs",
    "--max-num-batched-tokens": "max_num_batched_tokens", "--kv-cache-memory-bytes": "kv_cache_memory_bytes",
    "--kv-cache-memory": "kv_cache_memory_bytes",
}
_FIELD_TYPES = {field_name: kind for field_name, kind in _CONFIG_KEYS.values()}
_SOURCE_RANK = {"engine config line": 3, "non-default args": 2, "command line": 1}


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _convert(value: str, kind: type) -> Any:
    value = value.strip().strip("'\"")
    if value in ("None", "null", ""):
        return None
    if kind is bool:
        return value.lower() in ("true", "1", "yes", "")
    if kind is int:
        if not re.fullmatch(r"\d[\d_,]*", value):
            return None
        return int(value.replace(",", "").replace("_", ""))
    if kind is float:
        try:
            return float(value)
        except ValueError:
            return None
    if kind is str and value.startswith("torch."):
        value = value[len("torch."):]
    return value or None


# ------------------------------------------------------------------------------------------------
# the rank and engine a line belongs to

@dataclass(frozen=True)
class _Origin:
    label: str
    kind: str
    tensor_parallel_rank: Optional[int] = None
    pipeline_parallel_rank: Optional[int] = None
    data_parallel_rank: Optional[int] = None
    expert_parallel_rank: Optional[int] = None
    rank: Optional[int] = None
    pid: Optional[int] = None


_MAIN = _Origin("main", "main")


def _origin(line: str) -> _Origin:
    """Who printed the line, from its `(Name TP1 pid=..)` prefix; "main" when there is none.

    Ray nests prefixes, `(APIServer pid=1) (DPEngineCoreActor pid=7, ip=...) INFO ...`: the innermost one
    (nearest the log level) is the process that printed the line.
    """
    level = _LEVEL.search(line)
    head = line[: level.start()] if level else line[:160]
    found = None
    for match in _PREFIX.finditer(head):
        if _PREFIX_NAMES.match(match.group("inner").strip()):
            found = match
    if found is None:
        return _MAIN
    inner = found.group("inner").strip()
    name = re.split(r"\s*(?:pid|rank|ip)=", inner, maxsplit=1)[0].strip(" ,")
    pid = re.search(r"pid=(\d+)", inner)
    rank = re.search(r"rank=(\d+)", inner)
    numbers = {key: re.search(rf"(?:^|[_\s]){key}(\d+)", name) for key in ("TP", "PP", "DP", "EP")}
    values = {key: int(number.group(1)) if number else None for key, number in numbers.items()}
    if name.startswith(("EngineCore", "DPEngineCore")):
        kind = "engine"
    elif name.startswith("APIServer"):
        kind = "api"
    else:
        kind = "worker"
    if kind == "engine" and name.startswith("DPEngineCore") and pid is not None:
        label = f"{name} pid={pid.group(1)}"  # Ray DP engine actors share one name
    elif kind != "worker" or any(v is not None for v in values.values()):
        label = name
    elif rank is not None:
        label = f"{name or 'worker'} rank={rank.group(1)}"
    elif pid is not None:
        label = f"{name or 'worker'} pid={pid.group(1)}"
    else:
        label = name or "worker"
    return _Origin(label=label, kind=kind, tensor_parallel_rank=values["TP"], pipeline_parallel_rank=values["PP"],
                   data_parallel_rank=values["DP"], expert_parallel_rank=values["EP"],
                   rank=int(rank.group(1)) if rank else None, pid=int(pid.group(1)) if pid else None)


# ------------------------------------------------------------------------------------------------
# the builder: mutable while reading, frozen at the end

class _Startup:
    def __init__(self, index: int, first_line: int) -> None:
        self.index = index
        self.first_line = first_line
        self.last_line = first_line
        self.version: Optional[str] = None
        self.engine_version: Optional[str] = None
        self.config: dict[str, Any] = {}
        self.config_rank: dict[str, int] = {}
        self.sources: list[str] = []
        self.ranks: dict[str, dict[str, Any]] = {}
        self.origins: dict[str, _Origin] = {}
        self.engines: dict[str, dict[str, Any]] = {}
        self.failures: list[Failure] = []

    @property
    def has_figures(self) -> bool:
        return any(key in _FIGURE_KEYS for fields in self.ranks.values() for key in fields) \
            or any(self.engines.values()) or bool(self.failures)

    def freeze(self) -> StartupLog:
        ranks = []
        for label, fields in self.ranks.items():
            origin = self.origins[label]
            values = dict(fields)
            suggestion = values.pop("suggestion", None)
            if suggestion is not None:
                values["suggestion"] = SuggestionLine(**suggestion)
            ranks.append(RankLog(label=label, kind=origin.kind,
                                 tensor_parallel_rank=origin.tensor_parallel_rank,
                                 pipeline_parallel_rank=origin.pipeline_parallel_rank,
                                 data_parallel_rank=origin.data_parallel_rank,
                                 expert_parallel_rank=origin.expert_parallel_rank,
                                 rank=origin.rank, pid=origin.pid, **values))
        ranks = [rank for rank in ranks if _rank_has_figures(rank)]
        ranks.sort(key=lambda r: (r.data_parallel_rank or 0, r.pipeline_parallel_rank or 0,
                                  r.tensor_parallel_rank or 0, r.rank or 0, r.first_line or 0))
        engines = tuple(EngineLog(label=label, **fields) for label, fields in self.engines.items() if fields)
        config = EngineConfig(**self.config, sources=tuple(self.sources))
        return StartupLog(index=self.index, first_line=self.first_line, last_line=self.last_line,
                          vllm_version=self.version, engine_version=self.engine_version, config=config,
                          ranks=tuple(ranks), engines=engines, failures=tuple(self.failures))


# Rank fields that are figures (a utilization or a notice alone does not make a start-up).
_FIGURE_KEYS = frozenset({"weights_loaded", "total", "requested", "weights", "non_torch", "activation_peak",
                          "available_kv", "cuda_graph", "cuda_graph_pool", "cuda_graph_estimate", "suggestion"})


def _rank_has_figures(rank: RankLog) -> bool:
    names = ("weights_loaded", "total", "requested", "weights", "non_torch", "activation_peak", "available_kv",
             "cuda_graph", "cuda_graph_pool", "cuda_graph_estimate", "suggestion")
    return any(getattr(rank, name) is not None for name in names)


class _Builder:
    def __init__(self) -> None:
        self.startups: list[_Startup] = []
        self.current: Optional[_Startup] = None
        self.pending_command: list[str] = []   # a pasted command continued with trailing backslashes
        self.pending_first = 0
        self.pending_last = 0

    def flush_command(self) -> None:
        if not self.pending_command:
            return
        joined = " ".join(self.pending_command)
        first = self.pending_first
        self.pending_command = []
        if _COMMAND.search(joined) and "--help" not in joined:
            self.boundary(first)
            self.config(first, _parse_command(joined), "command line")

    def _startup(self, line_number: int) -> _Startup:
        if self.current is None:
            self.current = _Startup(len(self.startups), line_number)
            self.startups.append(self.current)
        self.current.last_line = line_number
        return self.current

    def _new_startup(self, line_number: int) -> _Startup:
        self.current = None
        return self._startup(line_number)

    def boundary(self, line_number: int) -> _Startup:
        """A line that begins a start-up (command, version, config): a new one if this one has figures."""
        startup = self._startup(line_number)
        if startup.has_figures:
            startup = self._new_startup(line_number)
        return startup

    def rank(self, origin: _Origin, line_number: int, updates: dict[str, Any]) -> None:
        startup = self._startup(line_number)
        fields = startup.ranks.get(origin.label)
        if fields is not None and any(fields.get(key) is not None for key in updates):
            startup = self._new_startup(line_number)  # the same rank printing the same figure again
            fields = None
        if fields is None:
            fields = startup.ranks.setdefault(origin.label, {"first_line": line_number})
            startup.origins[origin.label] = origin
        fields.update(updates)

    def engine(self, origin: _Origin, line_number: int, updates: dict[str, Any]) -> None:
        startup = self._startup(line_number)
        label = origin.label
        fields = startup.engines.get(label)
        if fields is not None and any(fields.get(key) is not None for key in updates):
            startup = self._new_startup(line_number)
            fields = None
        if fields is None:
            fields = startup.engines.setdefault(label, {})
        fields.update(updates)

    def config(self, line_number: int, values: dict[str, Any], source: str) -> None:
        startup = self._startup(line_number)
        rank = _SOURCE_RANK[source]
        if source not in startup.sources:
            startup.sources.append(source)
        for key, value in values.items():
            if value is None:
                continue
            if startup.config_rank.get(key, 0) <= rank:
                startup.config[key] = value
                startup.config_rank[key] = rank


def _size(text: str, unit: str = "GiB") -> Size:
    return Size(text=text, unit=unit)


def _parse_command(line: str) -> dict[str, Any]:
    """Flags of a pasted `vllm serve ...` / `python -m vllm.entrypoints...` command line."""
    values: dict[str, Any] = {}
    tokens = re.findall(r"\"[^\"]*\"|'[^']*'|\S+", line)
    serve_at = None
    for index, token in enumerate(tokens):
        if token == "serve" and index > 0 and tokens[index - 1].endswith("vllm"):
            serve_at = index
            break
    if serve_at is None:
        # `docker run ... vllm/vllm-openai:TAG MODEL --flags`: the image's entrypoint is `vllm serve`
        serve_at = next((i for i, token in enumerate(tokens) if "vllm-openai" in token), None)
    if serve_at is not None and serve_at + 1 < len(tokens) and not tokens[serve_at + 1].startswith("-"):
        values["model"] = tokens[serve_at + 1].strip("'\"")
    index = 0
    while index < len(tokens):
        token = tokens[index]
        flag, equals, inline = token.partition("=")
        flag_norm = flag.replace("_", "-") if flag.startswith("--") else flag
        if flag_norm == "--enforce-eager":
            values["enforce_eager"] = True
        elif flag_norm in _COMMAND_FLAGS:
            name = _COMMAND_FLAGS[flag_norm]
            if equals:
                raw = inline
            elif index + 1 < len(tokens):
                raw = tokens[index + 1]
                index += 1
            else:
                raw = ""
            if name == "kv_cache_memory_bytes":
                converted = _kv_cache_memory_flag(raw)
            else:
                converted = _convert(raw, _FIELD_TYPES[name])
            if converted is not None:
                values[name] = converted
        index += 1
    return values


def _kv_cache_memory_flag(raw: str) -> Optional[int]:
    from kvadvise.units import parse_bytes

    try:
        return parse_bytes(raw.strip("'\""), what="--kv-cache-memory-bytes")
    except InputError:
        return None


def _parse_config_pairs(line: str, dict_style: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, (name, kind) in _CONFIG_KEYS.items():
        if dict_style:
            found = re.search(rf"'{key}':\s*('(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^,}}\s]+)", line)
        else:
            found = re.search(rf"(?<![\w.]){key}=('(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^,\s)]+)", line)
        if found:
            converted = _convert(found.group(1), kind)
            if converted is not None and name not in values:
                values[name] = converted
    return values


def _handle_line(builder: _Builder, line_number: int, line: str) -> None:
    line = _ANSI.sub("", line)
    if len(line) > MAX_LINE_CHARS:
        line = line[:MAX_LINE_CHARS]
    stripped = line.rstrip()
    continued = stripped.endswith("\\")
    if builder.pending_command:
        if line_number == builder.pending_last + 1:
            builder.pending_command.append(stripped.rstrip("\\"))
            builder.pending_last = line_number
            if not continued:
                builder.flush_command()
            return  # a continuation line of a pasted command carries no figures
        builder.flush_command()
    if continued:
        builder.pending_command = [stripped.rstrip("\\")]
        builder.pending_first = builder.pending_last = line_number
        return
    if stripped.lstrip().startswith("--") and not _COMMAND.search(line):
        return  # a stray flag line (the end of a command whose start we did not see)
    origin = _origin(line)

    # --- start-up boundaries and configuration
    is_command = bool(_COMMAND.search(line)) and "--help" not in line
    if is_command:
        builder.boundary(line_number)
        builder.config(line_number, _parse_command(line), "command line")
    if _CONFIG_LINE.search(line) or _ENGINE_WORD.search(line):
        builder.boundary(line_number)
        builder.config(line_number, _parse_config_pairs(line, dict_style=False), "engine config line")
    elif _NON_DEFAULT.search(line):
        builder.boundary(line_number)
        builder.config(line_number, _parse_config_pairs(line, dict_style=True), "non-default args")
    for pattern in _VERSION_PATTERNS:
        found = pattern.search(line)
        if found:
            startup = builder.boundary(line_number)
            startup.version = startup.version or found.group("v").lstrip("v")
            if "engine" in found.groupdict() and found.group("engine"):
                startup.engine_version = found.group("engine")
            break
    else:
        if origin.kind == "api" and "version" in line and not re.search(r"NCCL|CUDA|torch|driver|Python", line):
            found = _APISERVER_VERSION.search(line)
            if found:
                startup = builder.boundary(line_number)
                startup.version = startup.version or found.group("v").lstrip("v")
    engine_word = _ENGINE_WORD.search(line)
    if engine_word and builder.current is not None:
        builder.current.engine_version = builder.current.engine_version or engine_word.group("engine")

    if is_command or _CONFIG_LINE.search(line) or _NON_DEFAULT.search(line):
        return  # a pasted command or a settings line carries settings, never figures

    # --- rank figures
    rank: dict[str, Any] = {}
    found = _LOADING.search(line)
    if found:
        rank["weights_loaded"] = _size(found.group("size"), found.group("unit"))
        if found.group("seconds"):
            rank["load_seconds"] = float(found.group("seconds"))
    if "Free memory on device" in line or "for CUDAGraph memory" in line or "--kv-cache-memory=" in line:
        suggestion = _suggestion(line, line_number)
        if suggestion:
            rank["suggestion"] = suggestion
    else:
        for key, pattern in (("total", _V0_TOTAL), ("requested", _V0_REQUESTED), ("weights", _V0_WEIGHTS),
                             ("non_torch", _V0_NON_TORCH), ("activation_peak", _V0_ACTIVATION),
                             ("available_kv", _V0_KV), ("available_kv", _V1_KV)):
            found = pattern.search(line)
            if found and key not in rank:
                rank[key] = _size(found.group("v"))
        found = _V0_UTIL.search(line)
        if found and "--gpu-memory-utilization" not in line:
            rank["gpu_memory_utilization"] = float(found.group("v"))
    found = _GRAPH.search(line)
    if found:
        rank["cuda_graph"] = _size(found.group("v"))
        rank["graph_seconds"] = float(found.group("seconds"))
    found = _GRAPH_POOL.search(line)
    if found:
        rank["cuda_graph_pool"] = _size(found.group("actual"))
        if found.group("estimate"):
            rank["cuda_graph_estimate_pool"] = _size(found.group("estimate"))
    found = _GRAPH_ESTIMATE.search(line)
    if found:
        rank["cuda_graph_estimate"] = _size(found.group("v"))
    if _GRAPH_PROFILING.search(line):
        rank["graph_profiling_enabled"] = True
    if rank:
        pool_estimate = rank.pop("cuda_graph_estimate_pool", None)
        if pool_estimate is not None:
            startup = builder._startup(line_number)
            fields = startup.ranks.get(origin.label, {})
            if fields.get("cuda_graph_estimate") is None:
                rank["cuda_graph_estimate"] = pool_estimate  # the pool line repeats the earlier estimate
        if rank.get("graph_profiling_enabled"):
            startup = builder._startup(line_number)
            fields = startup.ranks.get(origin.label)
            if fields is not None and fields.get("graph_profiling_enabled"):
                rank.pop("graph_profiling_enabled")  # TP ranks repeat the notice: not a new start-up
        if rank:
            builder.rank(origin, line_number, rank)

    # --- engine figures
    engine: dict[str, Any] = {}
    found = _BLOCKS.search(line)
    if found:
        engine["gpu_blocks"] = _int(found.group("v"))
        found = _CPU_BLOCKS.search(line)
        if found:
            engine["cpu_blocks"] = _int(found.group("v"))
    found = _NUM_GPU_BLOCKS.search(line)
    if found:
        engine["gpu_blocks"] = int(found.group("v"))
    found = _TOKENS.search(line)
    if found:
        engine["kv_tokens"] = _int(found.group("v"))
    found = _CONCURRENCY.search(line)
    if found:
        engine["max_concurrency"] = float(found.group("v"))
        engine["max_concurrency_len"] = _int(found.group("len"))
    found = _V1_MAX_LEN.search(line)
    if found:
        engine["max_len_error"] = MaxLenError(
            line_number=line_number, max_model_len=int(found.group("len")), kv_needed=_size(found.group("need")),
            kv_available=_size(found.group("avail")),
            estimated_max_model_len=int(found.group("est")) if found.group("est") else None)
    found = _V0_MAX_LEN.search(line)
    if found:
        engine["max_len_error"] = MaxLenError(line_number=line_number, max_model_len=int(found.group("len")),
                                              kv_tokens=int(found.group("tokens")))
    if engine:
        engine_origin = origin if origin.kind in ("engine", "main") else _Origin(origin.label, origin.kind)
        builder.engine(engine_origin, line_number, engine)

    # --- failures
    for code, pattern in (("no_kv_memory", _NO_MEMORY), ("engine_failed", _FAILED)):
        if pattern.search(line):
            startup = builder._startup(line_number)
            if not any(f.code == code for f in startup.failures):
                startup.failures.append(Failure(code=code, line_number=line_number, text=line.strip()[:300]))


def _suggestion(line: str, line_number: int) -> Optional[dict[str, Any]]:
    values: dict[str, Any] = {"line_number": line_number}
    found = _SUG_FREE.search(line)
    if found:
        values["free_at_start"] = _size(found.group("free"))
        values["total"] = _size(found.group("total"))
    found = _SUG_DESIRED.search(line)
    if found:
        values["gpu_memory_utilization"] = float(found.group("util"))
        values["requested"] = _size(found.group("req"))
    for key, pattern in (("weights", _SUG_WEIGHT), ("consumed", _SUG_CONSUMED), ("activation_peak", _SUG_ACTIVATION),
                         ("non_torch", _SUG_NON_TORCH), ("cuda_graph", _SUG_GRAPH)):
        found = pattern.search(line)
        if found:
            values[key] = _size(found.group("v"))
    found = _SUG_FIT.search(line)
    if found:
        values["fit_bytes"] = int(found.group("v"))
    found = _SUG_FULL.search(line)
    if found:
        values["full_bytes"] = int(found.group("v"))
    found = _SUG_IN_USE.search(line)
    if found:
        values["kv_in_use"] = _size(found.group("bytes"), "bytes") if found.group("bytes") else _size(found.group("gib"))
    return values if len(values) > 1 else None


# ------------------------------------------------------------------------------------------------
# reading

class _Reader:
    """Streams a binary file in chunks and yields (line number, raw line) for lines with a trigger phrase."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.bytes_read = 0
        self.lines_read = 0

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        line_base = 1  # the number of the first line in `buffer`
        buffer = b""
        ends_with_newline = True
        while True:
            chunk = self.stream.read(CHUNK_BYTES)
            self.bytes_read += len(chunk)
            if chunk:
                ends_with_newline = chunk.endswith(b"\n")
                buffer += chunk
                cut = buffer.rfind(b"\n") + 1
                if cut == 0:
                    if len(buffer) <= MAX_PARTIAL_LINE_BYTES:
                        continue
                    cut = len(buffer)  # one enormous "line" (binary data): scan it as it is and drop it
            else:
                cut = len(buffer)
            body, buffer = buffer[:cut], buffer[cut:]
            counted_to, line_number = 0, line_base
            for start in _candidate_starts(body):
                line_number += body.count(b"\n", counted_to, start)
                counted_to = start
                yield line_number, body[start:_line_end(body, start)]
            line_base += body.count(b"\n")
            if not chunk:
                break
        self.lines_read = line_base - 1 + (0 if ends_with_newline or self.bytes_read == 0 else 1)


def _line_end(body: bytes, start: int) -> int:
    """Where the line from `start` ends: the first \n or \r after it, else the end of `body`."""
    newline = body.find(b"\n", start)
    bound = len(body) if newline < 0 else newline
    carriage = body.find(b"\r", start, bound)
    return bound if carriage < 0 else carriage


def _candidate_starts(body: bytes) -> list[int]:
    """Start offsets of the lines (split at \\n and \\r) that contain a needle, in order."""
    starts = set()
    for needle in _NEEDLES:
        position = body.find(needle)
        while position >= 0:
            # each search stops at the line's own bounds: a log without \r must not be rescanned per hit
            newline = body.rfind(b"\n", 0, position)
            start = max(newline, body.rfind(b"\r", newline + 1, position)) + 1
            starts.add(start)
            following = body.find(b"\n", position)  # the rest of this line is already a candidate
            if following < 0:
                break
            position = body.find(needle, following)
    return sorted(starts)


def parse_stream(stream: BinaryIO, path: str = "<stream>") -> LogParse:
    """Parse an open binary stream of a vLLM log."""
    builder = _Builder()
    reader = _Reader(stream)
    for line_number, raw in reader:
        _handle_line(builder, line_number, raw.decode("utf-8", errors="replace"))
    builder.flush_command()
    startups = [s.freeze() for s in builder.startups]
    # A start-up with settings but no figures after the last one with figures (an excerpt that pastes the
    # config after the numbers) lends its settings to that one.
    while len(startups) > 1 and not _has_figures(startups[-1]):
        trailing = startups.pop()
        startups[-1] = _merge_settings(startups[-1], trailing)
    startups = [s for s in startups if _has_figures(s)]
    return LogParse(path=path, bytes_read=reader.bytes_read, lines_read=reader.lines_read,
                    startups=tuple(_reindex(s, i) for i, s in enumerate(startups)))


def _has_figures(startup: StartupLog) -> bool:
    return bool(startup.ranks or startup.engines or startup.failures)


def _merge_settings(into: StartupLog, settings: StartupLog) -> StartupLog:
    from dataclasses import fields, replace

    merged = {f.name: getattr(into.config, f.name) if getattr(into.config, f.name) is not None
              else getattr(settings.config, f.name) for f in fields(EngineConfig) if f.name != "sources"}
    sources = into.config.sources + tuple(s for s in settings.config.sources if s not in into.config.sources)
    return replace(into, config=EngineConfig(**merged, sources=sources),
                   vllm_version=into.vllm_version or settings.vllm_version,
                   engine_version=into.engine_version or settings.engine_version,
                   last_line=max(into.last_line, settings.last_line))


def _reindex(startup: StartupLog, index: int) -> StartupLog:
    from dataclasses import replace

    return startup if startup.index == index else replace(startup, index=index)


def parse_text(text: str) -> LogParse:
    """Parse a log held in a string (tests, small excerpts)."""
    import io

    return parse_stream(io.BytesIO(text.encode("utf-8")))


def parse_log(path: str | os.PathLike[str]) -> LogParse:
    """Parse a log file. Raises InputError when it is missing, a directory or unreadable."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise InputError(f"log file not found: {name}")
    if os.path.isdir(name):
        raise InputError(f"{name} is a directory, not a log file")
    try:
        with open(name, "rb") as stream:
            return parse_stream(stream, path=name)
    except PermissionError as error:
        raise InputError(f"cannot read {name}: permission denied") from error
    except OSError as error:
        raise InputError(f"cannot read {name}: {error.strerror or error}") from error
