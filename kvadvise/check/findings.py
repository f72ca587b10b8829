"""Recompute a vLLM start-up's budgets from what it printed, and name its accounting faults.

Knows: vLLM's suggestion-line arithmetic (through kvadvise.plan.advice.advise, so there is one copy of
it), the V0 budget arithmetic, what a KV budget buys (kvadvise.plan.kv), and the known faults: CUDA-graph
memory counted twice in the suggestion, negative or zero budgets, graph estimates far from the actual
pool, ranks or stages with different budgets, memory other processes held at start, KV tokens that
disagree with the model's config, and the start-up errors vLLM printed.
Every logged GiB figure is an interval (its rounding, see parser.Size), and every comparison is made
against the interval the figures allow, nothing looser.
Does not know how to print anything (report/check.py). Pure: no torch, no device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from kvadvise.report.common import gib
from kvadvise.check.parser import LogParse, RankLog, Size, StartupLog
from kvadvise.errors import InputError
from kvadvise.plan.advice import REDUNDANCY_BUFFER_BYTES, DeviceBudget, NonKvMemory, advise

if TYPE_CHECKING:
    from kvadvise.model.spec import ModelSpec

SEVERITIES = ("info", "warning", "error")
GRAPH_ESTIMATE_RATIO = 1.5           # estimate vs actual beyond this is a finding (issue 6)
OTHER_PROCESS_MIN_BYTES = 1 << 30    # memory held before start-up beyond this (or 1% of the card) is a finding


@dataclass(frozen=True)
class ByteRange:
    """An inclusive range of byte counts: what a rounded log figure (or arithmetic on several) allows."""

    low: int
    high: int

    @classmethod
    def of(cls, size: Size) -> "ByteRange":
        return cls(size.low_bytes, size.high_bytes)

    @classmethod
    def exact(cls, value: int) -> "ByteRange":
        return cls(value, value)

    def __add__(self, other: "ByteRange") -> "ByteRange":
        return ByteRange(self.low + other.low, self.high + other.high)

    def __sub__(self, other: "ByteRange") -> "ByteRange":
        return ByteRange(self.low - other.high, self.high - other.low)

    def contains(self, value: int) -> bool:
        return self.low <= value <= self.high

    def overlaps(self, other: "ByteRange") -> bool:
        return self.low <= other.high and other.low <= self.high

    @property
    def middle(self) -> int:
        return (self.low + self.high) // 2


@dataclass(frozen=True)
class Finding:
    """One fault or fact worth a line: a code, a severity (info, warning, error) and a one-line message."""

    code: str
    severity: str
    message: str
    rank: Optional[str] = None


@dataclass(frozen=True)
class RankCheck:
    """One rank's figures, recomputed."""

    rank: RankLog
    terms_source: Optional[str]               # "suggestion line", "V0 memory profile", or None
    budget: Optional[ByteRange]               # the KV budget the rank logged (available / in use)
    suggested_fit_bytes: Optional[int]        # as vLLM printed
    suggested_full_bytes: Optional[int]
    recomputed_fit_bytes: Optional[int]       # vLLM's formula on the printed terms (their centres)
    recomputed_full_bytes: Optional[int]
    recomputed_fit: Optional[ByteRange]       # ... over the printed terms' rounding intervals
    recomputed_full: Optional[ByteRange]
    corrected_fit: Optional[ByteRange] = None   # when the graph memory was counted twice
    corrected_full: Optional[ByteRange] = None

    @property
    def best_fit(self) -> Optional[ByteRange]:
        return self.corrected_fit or self.recomputed_fit

    @property
    def recommended_bytes(self) -> Optional[int]:
        """The budget to pass for this rank: vLLM's exact figure when it agrees, else the safe end of ours."""
        if self.corrected_fit is not None:
            return self.corrected_fit.low
        if self.suggested_fit_bytes is not None and self.recomputed_fit is not None \
                and self.recomputed_fit.contains(self.suggested_fit_bytes):
            return self.suggested_fit_bytes
        return self.recomputed_fit.low if self.recomputed_fit is not None else None

    @property
    def best_full(self) -> Optional[ByteRange]:
        return self.corrected_full or self.recomputed_full


@dataclass(frozen=True)
class KvComparison:
    """What kvadvise's KV arithmetic says the logged budget buys, next to what vLLM printed."""

    model_id: str
    vllm_rules: str
    budget: ByteRange                 # the engine's per-rank budget (the minimum over ranks)
    max_model_len: int
    num_blocks: tuple[int, int]       # at the budget's low and high end
    tokens: tuple[int, int]
    max_concurrency: tuple[float, float]
    logged_blocks: Optional[int]
    logged_tokens: Optional[int]
    logged_max_concurrency: Optional[float]
    agrees: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckResult:
    """Everything `kvadvise check` reports about one start-up."""

    parse: LogParse
    startup: StartupLog
    vllm_rules: str
    ranks: tuple[RankCheck, ...]
    suggested_fit_bytes: Optional[int]        # the smallest over ranks (vLLM takes one value for all)
    suggested_full_bytes: Optional[int]
    recomputed_fit: Optional[ByteRange]       # the smallest over ranks, corrected where a fault was found
    recomputed_full: Optional[ByteRange]
    recomputed_fit_bytes: Optional[int]
    recomputed_full_bytes: Optional[int]
    bottleneck_rank: Optional[str]
    recommended_kv_cache_memory_bytes: Optional[int]   # one value for every rank (the smallest)
    kv: Optional[KvComparison]
    findings: tuple[Finding, ...]
    notes: tuple[str, ...] = ()

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)


# ------------------------------------------------------------------------------------------------
# helpers


def _version_key(version: Optional[str]) -> Optional[tuple[int, ...]]:
    if not version:
        return None
    parts = []
    for piece in version.lstrip("v").split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():
            break
    return tuple(parts) if parts else None


def rules_for(startup: StartupLog, override: Optional[str] = None) -> tuple[str, Optional[str]]:
    """The kvadvise rule set ("0.10.2", "0.11", "0.12", "0.33") nearest to the vLLM that wrote the log,
    and a note when it had to be guessed (the log does not print its version)."""
    if override:
        return override, None
    key = _version_key(startup.vllm_version)
    if key is not None:
        if key < (0, 11):
            return "0.10.2", None  # V0 and 0.10.x logs: the nearest rules we mirror (plain models size the same)
        if key < (0, 12):
            return "0.11", None
        if key < (0, 13):
            return "0.12", None
        if key[:2] == (0, 33):
            return "0.33", None
        return "0.33", _nearest_rules_note(startup.vllm_version, key)
    if any(r.suggestion and r.suggestion.consumed is not None for r in startup.ranks):
        rules, why = "0.33", "the newer suggestion wording"
    elif (startup.engine_version == "V0" or any(r.requested is not None or r.total is not None for r in startup.ranks)
          or (startup.engine_value("gpu_blocks") is not None and startup.engine_value("kv_tokens") is None)):
        rules, why = "0.10.2", "a V0 engine's lines"
    elif any(r.suggestion for r in startup.ranks):
        rules, why = "0.10.2", "the 0.10.2 suggestion wording"
    else:
        rules, why = "0.11", "V1 engine lines"
    return rules, (f"the log does not print vLLM's version: vLLM {rules} rules assumed from {why} "
                   f"(pass --vllm-version to choose)")


def _nearest_rules_note(version: str, key: tuple[int, ...]) -> str:
    """Why a log from a vLLM between 0.12 and 0.33 (or after 0.33) is checked with the 0.33 rules, and what
    may differ (vLLM changes between 0.12 and 0.33, from ../shared/reference/vllm-accounting.md and plan/kv.py)."""
    if key[:2] > (0, 33):
        return (f"vLLM {version} is newer than the rules kvadvise mirrors: checked with the vLLM 0.33 rules "
                f"(pass --vllm-version to choose); rules changed after 0.33 are not known")
    differ = ["the hybrid group ratio (1.25 in 0.12, 1.5 since PR #36684)",
              "the default Mamba cache mode ('align' with prefix caching since PR #50991)"]
    if key[:2] < (0, 21):
        differ.append("the CUDA-graph estimate in the KV budget (subtracted only since 0.21)")
    if key[:2] < (0, 28):
        differ.append("the 16384-token default batch on >= 160 GiB GPUs (since 0.28)")
    return (f"vLLM {version} is not a release kvadvise mirrors: checked with the vLLM 0.33 rules, the nearest "
            f"(pass --vllm-version 0.12 to compare); rules that changed between 0.12 and 0.33 may differ for "
            f"this release: {'; '.join(differ)}")


def tensor_parallel_size(startup: StartupLog) -> tuple[Optional[int], Optional[str]]:
    """The TP size the log states, else the number of TP ranks seen (a lower bound), with a note."""
    if startup.config.tensor_parallel_size is not None:
        return startup.config.tensor_parallel_size, None
    seen = [r.tensor_parallel_rank for r in startup.ranks if r.tensor_parallel_rank is not None]
    if seen and max(seen) >= 1:
        size = max(seen) + 1
        return size, f"tensor-parallel size not printed: {size} taken from the highest worker rank seen (TP{size - 1})"
    return None, None


def _unseen_ranks_clause(startup: StartupLog, checks: list["RankCheck"], kv: KvComparison) -> str:
    """Why a log can show fewer tokens than its printed budget buys: not every rank printed its budget, and
    vLLM sizes every rank's cache by the smallest (mirrors vLLM 0.11 v1/core/kv_cache_utils.py: num_blocks is the
    minimum over the workers)."""
    tp, _ = tensor_parallel_size(startup)
    printed = sum(1 for c in checks if c.budget is not None)
    below = ((kv.logged_tokens is not None and kv.logged_tokens < kv.tokens[0])
             or (kv.logged_blocks is not None and kv.logged_blocks < kv.num_blocks[0]))
    if not below or tp is None or printed >= tp:
        return ""
    return (f"; only {printed} of {tp} ranks printed a budget, and vLLM sizes every rank's cache by the smallest: "
            f"an unseen rank with less memory left gives fewer tokens, so this is expected, not a fault")


def _gib_text(value: int | float) -> str:
    return gib(round(value))  # message text only: byte-to-GiB conversion lives in report/


def _range_text(span: ByteRange) -> str:
    return f"{span.low:,}..{span.high:,}"


def _advice_range(weights: ByteRange, activation: ByteRange, non_torch: ByteRange, graph: ByteRange,
                  total: ByteRange, free: Optional[ByteRange], utilization: float,
                  rules: str) -> tuple[ByteRange, Optional[ByteRange], int, Optional[int]]:
    """vLLM's fit and full over every term's interval, and at the centres (one formula: plan/advice.advise)."""

    def one(w: int, a: int, n: int, g: int, t: int, f: Optional[int]) -> tuple[int, Optional[int]]:
        # advise() wants a free figure; where the log has none its `full` is discarded
        result = advise(NonKvMemory(w, a, n, g), DeviceBudget(t, f if f is not None else t, utilization), rules)
        return result.fit_kv_cache_memory_bytes, (result.full_kv_cache_memory_bytes if f is not None else None)

    low_fit, low_full = one(weights.high, activation.high, non_torch.high, graph.high, total.low,
                            free.low if free else None)
    high_fit, high_full = one(weights.low, activation.low, non_torch.low, graph.low, total.high,
                              free.high if free else None)
    mid_fit, mid_full = one(weights.middle, activation.middle, non_torch.middle, graph.middle, total.middle,
                            free.middle if free else None)
    full = ByteRange(low_full, high_full) if low_full is not None and high_full is not None else None
    return ByteRange(low_fit, high_fit), full, mid_fit, mid_full


ZERO = ByteRange(0, 0)


def _range(size: Optional[Size]) -> Optional[ByteRange]:
    return ByteRange.of(size) if size is not None else None


# ------------------------------------------------------------------------------------------------
# per rank


def _check_rank(rank: RankLog, startup: StartupLog, rules: str, findings: list[Finding],
                shared_estimate: Optional[RankLog] = None) -> RankCheck:
    suggestion = rank.suggestion
    budget = _range(rank.available_kv)
    if budget is None and suggestion and suggestion.kv_in_use is not None:
        budget = ByteRange.of(suggestion.kv_in_use)
    recomputed_fit = recomputed_full = corrected_fit = corrected_full = None
    fit_mid = full_mid = None
    source = None
    if suggestion is not None:
        source = "suggestion line"
        # the newer wording prints weights + non-torch as one "consumed" term
        weights = _range(suggestion.weights) or _range(suggestion.consumed)
        non_torch = _range(suggestion.non_torch)
        if non_torch is None and suggestion.weights is None and suggestion.consumed is not None:
            non_torch = ZERO
        activation, graph = _range(suggestion.activation_peak), _range(suggestion.cuda_graph)
        total, free = _range(suggestion.total), _range(suggestion.free_at_start)
        utilization = suggestion.gpu_memory_utilization
        if None not in (weights, non_torch, activation, graph, total, free, utilization):
            recomputed_fit, recomputed_full, fit_mid, full_mid = _advice_range(
                weights, non_torch=non_torch, activation=activation, graph=graph, total=total, free=free,
                utilization=utilization, rules=rules)
            corrected_fit, corrected_full = _suggestion_findings(rank, recomputed_fit, recomputed_full, graph,
                                                                findings)
            estimate_fault = _estimate_counted_twice(rank, weights, non_torch, activation, graph, total, free,
                                                     utilization, rules, findings, shared_estimate)
            if estimate_fault is not None:
                corrected_fit, corrected_full = estimate_fault
    elif rank.requested is not None or rank.total is not None:
        source = "V0 memory profile"
        _v0_budget_arithmetic(rank, findings)
        graph = _range(rank.cuda_graph)
        if graph is None and startup.config.enforce_eager:
            graph = ZERO
        weights, activation, non_torch = _range(rank.weights), _range(rank.activation_peak), _range(rank.non_torch)
        total = _range(rank.total)
        if None not in (weights, activation, non_torch, graph, total, rank.gpu_memory_utilization):
            recomputed_fit, _, fit_mid, _ = _advice_range(weights, activation, non_torch, graph, total, None,
                                                         rank.gpu_memory_utilization, rules)

    _budget_sign_findings(rank, budget, recomputed_fit, findings)
    _graph_estimate_finding(rank, findings)
    return RankCheck(rank=rank, terms_source=source, budget=budget,
                     suggested_fit_bytes=suggestion.fit_bytes if suggestion else None,
                     suggested_full_bytes=suggestion.full_bytes if suggestion else None,
                     recomputed_fit_bytes=fit_mid, recomputed_full_bytes=full_mid,
                     recomputed_fit=recomputed_fit, recomputed_full=recomputed_full,
                     corrected_fit=corrected_fit, corrected_full=corrected_full)


def _suggestion_findings(rank: RankLog, fit: ByteRange, full: Optional[ByteRange], graph: ByteRange,
                         findings: list[Finding]) -> tuple[Optional[ByteRange], Optional[ByteRange]]:
    """Printed suggestion vs the formula on its own printed terms: agreement, graphs twice, or a mismatch."""
    suggestion = rank.suggestion
    corrected: dict[str, Optional[ByteRange]] = {"fit": None, "full": None}
    for name, printed, expected in (("fit", suggestion.fit_bytes, fit), ("full", suggestion.full_bytes, full)):
        if printed is None or expected is None or expected.contains(printed):
            continue
        twice = expected - graph
        # mirrors the regressed vLLM 0.3x compile_or_warm_up_model: non_kv counts the graph term twice
        if twice.contains(printed) and graph.low > 0:
            corrected[name] = expected
            findings.append(Finding(
                "graph_counted_twice", "error",
                f"{rank.label}: vLLM's '{name}' suggestion {printed:,} B subtracts the "
                f"{suggestion.cuda_graph} of CUDA graphs twice; its own figures give {_range_text(expected)} B",
                rank.label))
        else:
            findings.append(Finding(
                "suggestion_mismatch", "error",
                f"{rank.label}: vLLM's '{name}' suggestion {printed:,} B is outside {_range_text(expected)} B, "
                f"what its printed figures give with its formula (off by {_gib_text(printed - expected.middle)})",
                rank.label))
    return corrected["fit"], corrected["full"]


def _estimate_counted_twice(rank: RankLog, weights: ByteRange, non_torch: ByteRange, activation: ByteRange,
                            graph: ByteRange, total: ByteRange, free: ByteRange, utilization: float, rules: str,
                            findings: list[Finding],
                            shared_estimate: Optional[RankLog] = None) -> Optional[tuple[ByteRange, ByteRange]]:
    """The 0.2x/0.3x regression: the peak-activation term already holds the CUDA-graph estimate.

    vLLM then sizes the KV cache as requested - consumed - activation (the estimate subtracted once, inside
    the activation) and the suggestion subtracts the actual graph pool on top. The KV memory in use tells
    which it was: requested - consumed - activation (estimate inside) or that minus the estimate (apart).
    A rank that did not print its own estimate borrows the one another rank of the start-up printed (TP
    ranks profile the same graphs); the message says so.
    """
    suggestion = rank.suggestion
    source = rank
    if rank.cuda_graph_estimate is None and shared_estimate is not None:
        source = shared_estimate
    estimate_size = source.cuda_graph_estimate
    estimate = _range(estimate_size)
    in_use = _range(suggestion.kv_in_use) or _range(rank.available_kv)
    if estimate is None or in_use is None or estimate.low <= 0 or activation.high < estimate.low:
        return None
    requested = _range(suggestion.requested)
    if requested is None:
        return None
    consumed = weights + non_torch
    # mirrors vLLM 0.3x v1/worker/gpu_worker.py (issue #57936): available = requested - consumed - peak, where
    # peak = torch_peak_increase + cudagraph_memory_estimate_applied; fixed (#37426): the estimate kept apart
    inside = requested - consumed - activation
    apart = inside - estimate
    if not inside.overlaps(in_use) or apart.overlaps(in_use):
        return None
    transient = ByteRange(max(activation.low - estimate.high, 0), max(activation.high - estimate.low, 0))
    fit, full, _, _ = _advice_range(weights, transient, non_torch, graph, total, free, utilization, rules)
    assumed = "" if source.graph_profiling_enabled else " (assuming the estimate was applied, as the KV size shows)"
    borrowed = f" that {source.label} printed" if source is not rank else ""
    printed = f", not {suggestion.fit_bytes:,}" if suggestion.fit_bytes is not None else ""
    findings.append(Finding(
        "graph_counted_twice", "error",
        f"{rank.label}: the {suggestion.activation_peak} peak activation already holds the {estimate_size} "
        f"CUDA-graph estimate{borrowed}{assumed}, and the suggestion subtracts the {suggestion.cuda_graph} graph "
        f"pool on top: graph memory counted twice; with the estimate taken out of the activation (the actual "
        f"pool counted once), 'fit' should be {_range_text(fit)} B{printed}", rank.label))
    return fit, full


def _v0_budget_arithmetic(rank: RankLog, findings: list[Finding]) -> None:
    """V0: KV = requested - (weights + non-torch + activation); say so when the printed figures disagree."""
    parts = [_range(rank.requested), _range(rank.weights), _range(rank.non_torch), _range(rank.activation_peak),
             _range(rank.available_kv)]
    if None in parts:
        return
    requested, weights, non_torch, activation, available = parts
    # mirrors vLLM 0.7 worker/worker.py determine_num_available_blocks (the "the rest of the memory" line)
    expected = requested - weights - non_torch - activation
    if not expected.overlaps(available):
        findings.append(Finding(
            "budget_arithmetic_mismatch", "warning",
            f"{rank.label}: KV budget {rank.available_kv} is not requested {rank.requested} minus weights, "
            f"non-torch and activation ({_gib_text(expected.middle)})", rank.label))


def _budget_sign_findings(rank: RankLog, budget: Optional[ByteRange], fit: Optional[ByteRange],
                          findings: list[Finding]) -> None:
    suggestion = rank.suggestion
    if rank.available_kv is not None and rank.available_kv.gib <= 0:
        findings.append(Finding(
            "negative_budget", "error",
            f"{rank.label}: the KV budget is {rank.available_kv}: weights, activation and non-torch memory "
            f"take all of the requested memory; raise --gpu-memory-utilization or lower the load",
            rank.label))
        return
    if suggestion is not None and suggestion.fit_bytes is not None and suggestion.fit_bytes <= 0:
        findings.append(Finding(
            "negative_budget", "error",
            f"{rank.label}: vLLM suggests --kv-cache-memory={suggestion.fit_bytes:,} to fit the requested "
            f"memory: nothing is left for the KV cache", rank.label))
        return
    if suggestion is None and fit is not None and fit.high <= 0:
        findings.append(Finding(
            "negative_budget", "error",
            f"{rank.label}: after weights, activation, non-torch and CUDA-graph memory nothing of the "
            f"requested memory is left for the KV cache ({_gib_text(fit.middle)})", rank.label))


def _graph_estimate_finding(rank: RankLog, findings: list[Finding]) -> None:
    estimate = rank.cuda_graph_estimate
    actual = rank.cuda_graph_pool or (rank.suggestion.cuda_graph if rank.suggestion else None) or rank.cuda_graph
    if estimate is None or actual is None:
        return
    estimate_range, actual_range = ByteRange.of(estimate), ByteRange.of(actual)
    if actual_range.high <= 0:
        if estimate_range.low > 0:
            findings.append(Finding(
                "graph_estimate_off", "warning",
                f"{rank.label}: the CUDA graphs took {actual} but {estimate} was estimated and kept from the "
                f"KV cache", rank.label))
        return
    if estimate_range.high <= 0:
        return
    if estimate_range.low > GRAPH_ESTIMATE_RATIO * actual_range.high:
        findings.append(Finding(
            "graph_estimate_off", "warning",
            f"{rank.label}: CUDA-graph estimate {estimate} is {estimate.gib / actual.gib:.1f}x the {actual} the "
            f"graphs took: the KV cache was shrunk by {_gib_text(estimate_range.middle - actual_range.middle)} "
            f"for nothing (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS)", rank.label))
    elif actual_range.low > GRAPH_ESTIMATE_RATIO * estimate_range.high:
        findings.append(Finding(
            "graph_estimate_off", "warning",
            f"{rank.label}: the CUDA graphs took {actual}, {actual.gib / estimate.gib:.1f}x the {estimate} "
            f"estimate: the budget under-counts them and the card can go past the requested utilization",
            rank.label))


def _other_process_finding(ranks: list[RankLog], findings: list[Finding]) -> None:
    """Memory in use at vLLM's start-up snapshot beyond 1 GiB (or 1% of the card) plus the non-torch term."""
    flagged = []
    for rank in ranks:
        suggestion = rank.suggestion
        if suggestion is None or suggestion.total is None or suggestion.free_at_start is None:
            continue
        total, free = ByteRange.of(suggestion.total), ByteRange.of(suggestion.free_at_start)
        used = total - free
        non_torch = _range(suggestion.non_torch) or ZERO
        if used.low > non_torch.high + max(OTHER_PROCESS_MIN_BYTES, total.high // 100):
            flagged.append((rank, used))
    if not flagged:
        return
    first, used = flagged[0]
    where = ", ".join(f"{rank.label} {_gib_text(span.middle)}" for rank, span in flagged)
    findings.append(Finding(
        "other_process_memory", "warning",
        f"memory was already in use when vLLM took its start-up snapshot ({where} of "
        f"{first.suggestion.total}): other processes, a leftover engine, or large communication buffers; "
        f"'fit' assumes total x utilization is free, 'full' does not", first.label))


# ------------------------------------------------------------------------------------------------
# across ranks, engine-level figures


def _rank_budget_findings(checks: list[RankCheck], findings: list[Finding]) -> None:
    """Ranks of one engine (one data-parallel rank) whose KV budgets differ beyond rounding.

    mirrors vLLM 0.11 v1/engine/core.py _initialize_kv_caches: every worker reports its own budget and the
    engine sizes all of them to the smallest (num_blocks = min over workers).
    """
    engines: dict[Optional[int], list[RankCheck]] = {}
    for check in checks:
        if check.budget is not None:
            engines.setdefault(check.rank.data_parallel_rank, []).append(check)
    for with_budget in engines.values():
        if len(with_budget) < 2:
            continue
        smallest = min(with_budget, key=lambda c: c.budget.middle)
        largest = max(with_budget, key=lambda c: c.budget.middle)
        if largest.budget.low <= smallest.budget.high:
            continue
        stages = {c.rank.pipeline_parallel_rank for c in with_budget} - {None}
        if len(stages) > 1:
            message = (f"pipeline stages log different KV budgets: {smallest.rank.label} has "
                       f"{_gib_text(smallest.budget.middle)}, {largest.rank.label} "
                       f"{_gib_text(largest.budget.middle)}; capacity is the minimum over stages of budget / "
                       f"(layers x bytes per token), and one --kv-cache-memory-bytes applies to every stage "
                       f"(see `kvadvise pp-split`)")
        else:
            message = (f"ranks log different KV budgets: {smallest.rank.label} is the bottleneck with "
                       f"{_gib_text(smallest.budget.middle)} (up to {_gib_text(largest.budget.middle)} on "
                       f"{largest.rank.label}); vLLM sizes every rank to the smallest, so the difference sits "
                       f"unused")
        findings.append(Finding("rank_budgets_differ", "warning", message, smallest.rank.label))


def _engine_findings(startup: StartupLog, rank_findings: list[Finding], findings: list[Finding]) -> None:
    has_negative = any(f.code == "negative_budget" for f in rank_findings)
    blocks = startup.engine_value("gpu_blocks")
    if blocks == 0 and not has_negative:
        findings.append(Finding("negative_budget", "error", "vLLM allocated 0 GPU blocks: no KV cache at all"))
        has_negative = True
    for failure in startup.failures:
        if failure.code == "no_kv_memory" and not has_negative:
            findings.append(Finding("negative_budget", "error",
                                    f"line {failure.line_number}: vLLM found no memory for the KV cache blocks"))
            has_negative = True
        elif failure.code == "engine_failed":
            findings.append(Finding("engine_failed", "error",
                                    f"line {failure.line_number}: the engine failed to start"))
    error = startup.engine_value("max_len_error")
    if error is not None:
        if error.kv_needed is not None and error.kv_available is not None:
            estimate = (f"; vLLM estimates max_model_len {error.estimated_max_model_len:,} fits"
                        if error.estimated_max_model_len else "")
            message = (f"max_model_len {error.max_model_len:,} needs {error.kv_needed} of KV cache for one "
                       f"request, only {error.kv_available} is available{estimate}")
        else:
            message = (f"max_model_len {error.max_model_len:,} is more than the {error.kv_tokens:,} tokens the KV "
                       f"cache holds")
        findings.append(Finding("max_model_len_too_long", "error", message))
    concurrency = startup.engine_value("max_concurrency")
    length = startup.engine_value("max_concurrency_len")
    if error is None and concurrency is not None and 0 < concurrency < 1 and not has_negative:
        findings.append(Finding("max_model_len_too_long", "error",
                                f"maximum concurrency {concurrency:.2f}x: one request of {length:,} tokens does "
                                f"not fit in the KV cache"))


# ------------------------------------------------------------------------------------------------
# KV tokens from the config


def compare_kv(startup: StartupLog, spec: "ModelSpec", budget: ByteRange, rules: str) -> KvComparison:
    """Blocks, tokens and concurrency kvadvise computes for the logged budget, against vLLM's figures."""
    from kvadvise.plan.kv import KvSettings, kv_capacity, kv_layout

    config = startup.config
    notes: list[str] = []
    tp, tp_note = tensor_parallel_size(startup)
    if tp_note:
        notes.append(tp_note)
    settings = KvSettings(tensor_parallel_size=tp or 1,
                          kv_cache_dtype=config.kv_cache_dtype or "auto", block_size=config.block_size,
                          max_model_len=startup.max_model_len, max_num_batched_tokens=config.max_num_batched_tokens,
                          vllm_version=rules)
    if tp is None:
        notes.append("tensor-parallel size not in the log: 1 assumed")
    v0 = is_v0_engine(startup)
    if v0:
        spec, v0_note = v0_cache_view(spec)
        if v0_note:
            notes.append(v0_note)
    layout = kv_layout(spec, settings)
    notes.extend(layout.assumptions)
    low, high = kv_capacity(layout, max(budget.low, 0)), kv_capacity(layout, max(budget.high, 0))
    concurrency = (low.max_concurrency, high.max_concurrency)
    if v0:
        # mirrors vLLM 0.7 executor/executor_base.py: num_gpu_blocks * block_size / max_model_len
        concurrency = tuple(c.num_blocks * layout.block_size / layout.max_model_len for c in (low, high))
    logged_blocks = startup.engine_value("gpu_blocks")
    logged_tokens = startup.engine_value("kv_tokens")
    logged_concurrency = startup.engine_value("max_concurrency")
    agrees = True
    if logged_blocks is not None and not low.num_blocks <= logged_blocks <= high.num_blocks:
        agrees = False
    if logged_tokens is not None and not low.tokens <= logged_tokens <= high.tokens:
        agrees = False
    if logged_concurrency is not None and startup.engine_value("max_concurrency_len") == layout.max_model_len:
        # vLLM prints concurrency with 2 decimals
        if not concurrency[0] - 0.005 <= logged_concurrency <= concurrency[1] + 0.005:
            agrees = False
    return KvComparison(model_id=spec.model_id, vllm_rules=rules, budget=budget, max_model_len=layout.max_model_len,
                        num_blocks=(low.num_blocks, high.num_blocks), tokens=(low.tokens, high.tokens),
                        max_concurrency=concurrency, logged_blocks=logged_blocks,
                        logged_tokens=logged_tokens, logged_max_concurrency=logged_concurrency, agrees=agrees,
                        notes=tuple(notes))


def is_v0_engine(startup: StartupLog) -> bool:
    """A V0 engine wrote the log: it says so, or it names a release before 0.8 (V1 became the default in 0.8)."""
    if startup.engine_version is not None:
        return startup.engine_version == "V0"
    key = _version_key(startup.vllm_version)
    return key is not None and key < (0, 8)


def v0_cache_view(spec: "ModelSpec") -> tuple["ModelSpec", Optional[str]]:
    """The model as V0's CacheEngine sizes a block: one page per attention layer, each holding the whole
    context (no sliding-window or chunked saving, no hybrid grouping); Mamba state lives outside the blocks.

    mirrors vLLM 0.7 worker/cache_engine.py get_cache_block_size: num_attention_layers x block x (K + V)."""
    from dataclasses import replace

    from kvadvise.model.spec import LayerKind

    changed = {LayerKind.SLIDING: 0, LayerKind.CHUNKED: 0, LayerKind.MAMBA: 0}
    layers = []
    for layer in spec.layers:
        if layer.kind in (LayerKind.SLIDING, LayerKind.CHUNKED):
            changed[layer.kind] += 1
            layer = replace(layer, kind=LayerKind.FULL, sliding_window=None, attention_chunk_size=None)
        elif layer.kind == LayerKind.MAMBA:
            changed[layer.kind] += 1
            layer = replace(layer, kind=LayerKind.NONE, mamba=None)
        layers.append(layer)
    if not any(changed.values()):
        return spec, None
    parts = [f"{count} {kind.value} layer(s)" for kind, count in changed.items() if count]
    return (replace(spec, layers=tuple(layers)),
            f"V0 engine: {', '.join(parts)} sized as V0's CacheEngine does (attention layers hold the whole "
            f"context; Mamba state outside the KV blocks)")


def engine_budget(checks: list[RankCheck]) -> Optional[ByteRange]:
    """The engine's per-rank KV budget: the smallest any rank logged (vLLM takes the minimum over ranks)."""
    budgets = [c.budget for c in checks if c.budget is not None]
    if not budgets:
        return None
    return ByteRange(min(b.low for b in budgets), min(b.high for b in budgets))


# ------------------------------------------------------------------------------------------------
# the entry point


def check_startup(parse: LogParse, *, spec: Optional["ModelSpec"] = None, vllm_version: Optional[str] = None,
                  startup_index: int = -1) -> CheckResult:
    """Recompute one start-up of a parsed log (the last by default) and list its findings."""
    if not parse.startups:
        raise InputError(f"{parse.path}: no vLLM start-up lines found ({parse.lines_read:,} lines read)",
                         hint="pass the log of `vllm serve` (or LLM(...)) from start-up to the first request")
    try:
        startup = parse.startups[startup_index]
    except IndexError:
        raise InputError(f"{parse.path} holds {len(parse.startups)} start-up(s); there is no start-up "
                         f"{startup_index}") from None
    rules, rules_note = rules_for(startup, vllm_version)
    findings: list[Finding] = []
    notes: list[str] = [rules_note] if rules_note else []
    if len(parse.startups) > 1:
        which = "the last" if startup_index == -1 else f"number {startup.index + 1}"
        notes.append(f"the log holds {len(parse.startups)} start-ups; {which} (lines {startup.first_line}-"
                     f"{startup.last_line}) is checked")
    shared_estimate = next((r for r in startup.ranks if r.cuda_graph_estimate is not None), None)
    checks = [_check_rank(rank, startup, rules, findings, shared_estimate) for rank in startup.ranks]
    _other_process_finding([c.rank for c in checks], findings)
    _rank_budget_findings(checks, findings)
    rank_findings = list(findings)
    _engine_findings(startup, rank_findings, findings)

    kv = None
    budget = engine_budget(checks)
    if spec is not None:
        if budget is None:
            notes.append("no KV budget in the log: tokens not recomputed")
        elif (startup.config.pipeline_parallel_size or 1) > 1:
            notes.append("pipeline parallel: tokens not recomputed (use `kvadvise pp-split`)")
        else:
            try:
                kv = compare_kv(startup, spec, budget, rules)
            except InputError as error:
                notes.append(f"KV layout for {spec.model_id} not computed: {error.message}")
            if kv is not None and not kv.agrees:
                printed = ", ".join(
                    text for text in (
                        f"{kv.logged_tokens:,} tokens" if kv.logged_tokens is not None else "",
                        f"{kv.logged_blocks:,} blocks" if kv.logged_blocks is not None else "",
                        f"{kv.logged_max_concurrency:.2f}x" if kv.logged_max_concurrency is not None else "") if text)
                findings.append(Finding(
                    "kv_tokens_mismatch", "warning",
                    f"vLLM printed {printed} but {spec.model_id}'s config gives {kv.tokens[0]:,}..{kv.tokens[1]:,} "
                    f"tokens ({kv.num_blocks[0]:,}..{kv.num_blocks[1]:,} blocks) for the {_gib_text(budget.middle)} "
                    f"budget under vLLM {rules} rules{_unseen_ranks_clause(startup, checks, kv)}"))

    if kv is not None and kv.max_concurrency[1] < 1:
        findings = [_with_kv_cause(finding, kv) for finding in findings]

    fits = [(c.best_fit, c) for c in checks if c.best_fit is not None]
    fulls = [c.best_full for c in checks if c.best_full is not None]
    recomputed_fit = recomputed_full = None
    recomputed_fit_bytes = recomputed_full_bytes = None
    bottleneck = None
    if fits:
        lowest = min(fits, key=lambda item: item[0].middle)
        recomputed_fit = ByteRange(min(f.low for f, _ in fits), min(f.high for f, _ in fits))
        if any(f.low > lowest[0].high for f, _ in fits):
            bottleneck = lowest[1].rank.label
        recomputed_fit_bytes = min(
            (c.recomputed_fit_bytes if c.corrected_fit is None else c.corrected_fit.middle)
            for _, c in fits if (c.recomputed_fit_bytes is not None or c.corrected_fit is not None))
    if fulls:
        recomputed_full = ByteRange(min(f.low for f in fulls), min(f.high for f in fulls))
        recomputed_full_bytes = min(
            (c.recomputed_full_bytes if c.corrected_full is None else c.corrected_full.middle)
            for c in checks if c.best_full is not None)
    recommended = [c.recommended_bytes for c in checks if c.recommended_bytes is not None]
    printed_fits = [c.suggested_fit_bytes for c in checks if c.suggested_fit_bytes is not None]
    printed_fulls = [c.suggested_full_bytes for c in checks if c.suggested_full_bytes is not None]
    if any(c.terms_source == "V0 memory profile" and c.recomputed_fit is not None for c in checks):
        notes.append(f"V0 log: 'fit' recomputed with the 0.10.2+ suggestion formula (requested - weights - "
                     f"activation - non-torch - CUDA graphs - {REDUNDANCY_BUFFER_BYTES // (1 << 20)} MiB); "
                     f"'full' needs the free memory at start, which V0 does not print")
    return CheckResult(
        parse=parse, startup=startup, vllm_rules=rules, ranks=tuple(checks),
        suggested_fit_bytes=min(printed_fits) if printed_fits else None,
        suggested_full_bytes=min(printed_fulls) if printed_fulls else None,
        recomputed_fit=recomputed_fit, recomputed_full=recomputed_full,
        recomputed_fit_bytes=recomputed_fit_bytes, recomputed_full_bytes=recomputed_full_bytes,
        bottleneck_rank=bottleneck, kv=kv,
        recommended_kv_cache_memory_bytes=min(recommended) if recommended else None, findings=tuple(_dedupe(findings)), notes=tuple(notes))


def _with_kv_cause(finding: Finding, kv: KvComparison) -> Finding:
    """An engine_failed finding that names the cause kvadvise computed: not one request of max_model_len fits."""
    if finding.code != "engine_failed":
        return finding
    low, high = kv.max_concurrency
    concurrency = f"{low:.2f}x" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}x..{high:.2f}x"
    tokens = f"{kv.tokens[0]:,}" if kv.tokens[0] == kv.tokens[1] else f"{kv.tokens[0]:,}..{kv.tokens[1]:,}"
    # mirrors vLLM 0.11 v1/core/kv_cache_utils.py check_enough_kv_cache_memory: start-up fails with "To serve
    # at least one request with the models's max seq len ..., ... KV cache is needed, which is larger than the
    # available KV cache memory" when one request of max_model_len does not fit
    return Finding(finding.code, finding.severity,
                   f"{finding.message}: the KV cache holds {tokens} tokens ({concurrency} < 1 at "
                   f"max_model_len {kv.max_model_len:,} under vLLM {kv.vllm_rules} rules), not enough for one "
                   f"request (vLLM's \"larger than the available KV cache memory\"); lower --max-model-len or "
                   f"raise the budget", finding.rank)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen, kept = set(), []
    for finding in findings:
        key = (finding.code, finding.rank, finding.message)
        if key not in seen:
            seen.add(key)
            kept.append(finding)
    order = {name: index for index, name in enumerate(reversed(SEVERITIES))}
    return sorted(kept, key=lambda f: order[f.severity])
