"""Pipeline-parallel KV budgets: per-stage memory, vLLM's one uniform budget, proportional budgets, and
the partition that maximises the engine's KV capacity.

Knows: vLLM's default layer split (distributed/utils.py get_pp_indices), how every stage turns one
`--kv-cache-memory-bytes` into blocks from its own layers and how the engine then takes the minimum
(v1/core/kv_cache_utils.py get_kv_cache_configs; ../shared/reference/vllm-accounting.md section 6), and
which vLLM versions shrink the other stages' tensors to that minimum (0.12+) or keep them (0.10.2-0.11).
A stage's non-KV memory is its card's fixed terms (activation peak, non-torch, CUDA graphs, the
embedding on the first stage, final norm + lm_head on the last) plus the weights of the layers it holds;
moving layers moves only their weights, per layer either shared out of the stages' own (measured or
estimated) weights less the first/last extras (layer_weights_from_stages) or from parameter counts.
Block arithmetic comes from kvadvise.plan.kv.
Does not know: how the non-KV terms were obtained (the caller says: measured, estimated or given).
Pure: plain Python over frozen dataclasses; never imports torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from kvadvise.errors import InputError
from kvadvise.model.spec import ModelSpec
from kvadvise.plan.advice import (DeviceBudget, NonKvMemory, _version_key, advise, served_model_name,
                                  vllm_serve_command)
from kvadvise.plan.kv import KvLayout, KvSettings, capacity_from_blocks, kv_capacity, kv_layout

# ---------------------------------------------------------------- partitions


def default_partition(num_layers: int, pipeline_parallel_size: int) -> tuple[int, ...]:
    """vLLM's split when VLLM_PP_LAYER_PARTITION is unset: 32/3 -> (11, 11, 10); 62/4 -> (15, 16, 16, 15)."""
    if pipeline_parallel_size < 1:
        raise InputError(f"--pipeline-parallel-size must be >= 1, got {pipeline_parallel_size}")
    if pipeline_parallel_size > num_layers:
        raise InputError(f"{pipeline_parallel_size} pipeline stages but the model has only {num_layers} "
                         "layers: every stage needs at least one layer")
    # mirrors vLLM 0.11 distributed/utils.py get_pp_indices: layers // pp each, remainder to stages -2, -3, ...
    partition = [num_layers // pipeline_parallel_size] * pipeline_parallel_size
    for offset in range(2, num_layers % pipeline_parallel_size + 2):
        partition[-offset] += 1
    return tuple(partition)


def parse_partition(text: str) -> tuple[int, ...]:
    """`48,16` -> (48, 16); each a whole number (validated against the model by check_partition)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"--partition: cannot read {text!r} as comma-separated layer counts",
                         hint="write the layers of each stage, e.g. --partition 48,16") from None
    return values


def check_partition(partition: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Reject what vLLM would reject (sum != layers) and what makes no stage (a count below 1)."""
    partition = tuple(partition)
    if not partition:
        raise InputError("--partition: no stages given")
    if len(partition) > num_layers:
        raise InputError(f"--partition has {len(partition)} stages but the model has only {num_layers} layers: "
                         "every stage needs at least one layer")
    bad = [(i, n) for i, n in enumerate(partition) if n < 1]
    if bad:
        index, count = bad[0]
        raise InputError(f"--partition: stage {index} has {count} layers; every stage needs at least one layer")
    if sum(partition) != num_layers:
        # mirrors vLLM 0.11 distributed/utils.py get_pp_indices: sum(partitions) must match num_hidden_layers
        raise InputError(f"--partition {','.join(map(str, partition))} sums to {sum(partition)} layers but "
                         f"the model has {num_layers}")
    return partition


def stage_ranges(partition: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """[first, end) layer indices of each stage."""
    ranges, start = [], 0
    for count in partition:
        ranges.append((start, start + count))
        start += count
    return tuple(ranges)


def shrinks_to_minimum(vllm_version: str) -> bool:
    """True when vLLM shrinks every stage's KV tensors to the engine's block count (0.12+)."""
    # mirrors vLLM 0.12 v1/core/kv_cache_utils.py get_kv_cache_configs: tensor.size // num_blocks_old * min_num_blocks
    # (0.11 keeps the tensors: "We do not need to shrink the tensor size")
    return _version_key(vllm_version) >= (0, 12)


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class StageCard:
    """The card one stage runs on (per TP rank)."""

    name: Optional[str]
    total_bytes: int
    gpu_memory_utilization: float
    free_bytes_at_start: Optional[int] = None   # known when measured (a stage profile); None from a catalog
    source: str = "gpu-memory option"           # "catalog", "gpu-memory option", "stage profile", "cuda"
    family: Optional[str] = None                # catalog family ("hopper", ...): the cuBLAS workspace rule


@dataclass(frozen=True)
class StageNonKv:
    """A stage's non-KV terms for the layers the GIVEN partition puts on it (per TP rank)."""

    weights_bytes: int            # its layers + its extras (embedding first; final norm, lm_head last)
    activation_peak_bytes: int
    non_torch_bytes: int
    cuda_graph_bytes: int
    method: str                   # "measured", "estimated"
    source: Optional[str] = None  # e.g. the stage-profile file
    term_methods: Optional[dict] = None  # per term, when they differ: {"weights": "measured", ...}

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_peak_bytes + self.non_torch_bytes + self.cuda_graph_bytes


@dataclass(frozen=True)
class StageKv:
    """What the KV layout of a range of layers means for block arithmetic."""

    bytes_per_block: int          # page_size_bytes x group_size: one block across all of the stage's layers
    page_size_bytes: int
    group_size: int
    block_size: int
    kv_bytes_per_token: int


# ---------------------------------------------------------------- the search (pure arithmetic)

NOT_FEASIBLE = -1   # a stage whose weights do not fit: worse than any working split (0 blocks works, uselessly)


def blocks_for(budget_bytes: int, bytes_per_block: int) -> int:
    """num_blocks = available // page // group_size; -1 when the budget is negative (nothing fits)."""
    if budget_bytes < 0:
        return NOT_FEASIBLE
    # mirrors vLLM 0.11 v1/core/kv_cache_utils.py get_num_blocks: available_memory // page_size // num_layers
    return budget_bytes // bytes_per_block


def engine_blocks(fits: Sequence[int], units: Sequence[int], shrink: bool) -> int:
    """The engine's block count with ONE --kv-cache-memory-bytes on every rank, each stage's fit respected.

    0.12+ (shrink): a stage allocates only engine_blocks x its bytes per block, so the engine reaches
    min over stages of fit_s // unit_s with B = that x max unit. 0.10.2-0.11: every stage allocates (almost)
    all of B, so B <= min fit and the engine gets min_fit // max unit.
    """
    if any(f < 0 for f in fits):
        return NOT_FEASIBLE
    if shrink:
        return min(f // u for f, u in zip(fits, units))
    return min(fits) // max(units)


def uniform_budget_for(blocks: int, fits: Sequence[int], units: Sequence[int], shrink: bool) -> int:
    """The one --kv-cache-memory-bytes that gives `blocks` engine blocks and is safe on every stage."""
    if shrink:
        # the smallest budget whose min over stages of B // unit_s is `blocks`
        return blocks * max(units)
    return min(fits)


@dataclass(frozen=True)
class SplitSearch:
    """The partition search over abstract per-range data: stage s holding layers [a, b).

    fit_of must be cheap (it is called O(stages x layers^2) times); unit_of is cached, by layer count when
    units_by_count (every layer's KV is alike) else by range.
    """

    num_layers: int
    num_stages: int
    fit_of: Callable[[int, int, int], int]     # (stage, a, b) -> the stage's fit KV budget with those layers
    unit_of: Callable[[int, int], int]         # (a, b) -> bytes per block of those layers
    shrink: bool
    units_by_count: bool = False


def _cached_unit(search: SplitSearch) -> Callable[[int, int], int]:
    cache: dict = {}
    by_count = search.units_by_count

    def unit(a: int, b: int) -> int:
        key = b - a if by_count else (a, b)
        value = cache.get(key)
        if value is None:
            value = cache[key] = search.unit_of(a, b)
        return value

    return unit


def _maxmin_dp(search: SplitSearch, value: Callable[[int, int, int], Optional[int]]):
    """Exact DP: max over contiguous partitions (each stage >= 1 layer) of min over stages of value(s, a, b).

    value None means "not allowed". Returns (best, partition) or (None, None). O(stages x layers^2), with
    the candidates that cannot beat the best so far skipped before value() is asked.
    """
    n, length = search.num_stages, search.num_layers
    previous: list = [None] * (length + 1)
    previous[0] = float("inf")
    backs = []
    for s in range(n):
        current: list = [None] * (length + 1)
        back: list = [None] * (length + 1)
        for b in range(s + 1, length - (n - 1 - s) + 1):
            top, top_start = None, None
            for a in range(s, b):
                so_far = previous[a]
                if so_far is None or (top is not None and so_far <= top):
                    continue
                v = value(s, a, b)
                if v is None:
                    continue
                candidate = v if v < so_far else so_far
                if top is None or candidate > top:
                    top, top_start = candidate, a
            current[b], back[b] = top, top_start
        backs.append(back)
        previous = current
    if previous[length] is None:
        return None, None
    ends, b = [], length
    for s in range(n - 1, -1, -1):
        ends.append(b)
        b = backs[s][b]
    ends.reverse()
    partition, start = [], 0
    for end in ends:
        partition.append(end - start)
        start = end
    return previous[length], tuple(partition)


def best_partition(search: SplitSearch) -> tuple[int, Optional[tuple[int, ...]]]:
    """The largest engine block count over all partitions, and a partition reaching it (exact).

    0.12+ (shrink): max-min DP over per-stage blocks fit_s // unit_s. 0.10.2-0.11: the engine gets
    min fit // max unit, so enumerate the cap K on bytes per block (ascending), maximise the smallest fit
    among partitions whose stages all have unit <= K (max-min DP), and stop once even the unconstrained
    best fit divided by K cannot beat the best found.
    """
    fit, unit = search.fit_of, _cached_unit(search)
    if search.shrink:
        def per_stage(s: int, a: int, b: int) -> Optional[int]:
            per_block = unit(a, b)
            return blocks_for(fit(s, a, b), per_block) if per_block > 0 else None
        blocks, partition = _maxmin_dp(search, per_stage)
        return (NOT_FEASIBLE, None) if blocks is None else (blocks, partition)

    free_fit, free_partition = _maxmin_dp(search, fit)
    if free_fit is None or free_fit < 0:
        return NOT_FEASIBLE, free_partition
    length, n = search.num_layers, search.num_stages
    if search.units_by_count:
        caps = sorted({unit(0, count) for count in range(1, length - n + 2)})
    else:
        caps = sorted({unit(a, b) for a in range(length) for b in range(a + 1, length + 1)})
    best_blocks, best_split = NOT_FEASIBLE, None
    for cap in [c for c in caps if c > 0]:
        if best_split is not None and free_fit // cap <= best_blocks:
            break   # caps only grow: free_fit // cap cannot beat the best any more
        smallest_fit, partition = _maxmin_dp(
            search, lambda s, a, b, cap=cap: fit(s, a, b) if 0 < unit(a, b) <= cap else None)
        if smallest_fit is None or smallest_fit < 0:
            continue
        blocks = smallest_fit // cap
        if best_split is None or blocks > best_blocks:
            best_blocks, best_split = blocks, partition
    return best_blocks, best_split


def partition_blocks(search: SplitSearch, partition: Sequence[int]) -> int:
    """The engine block count of one partition (the objective best_partition maximises)."""
    fit, unit = search.fit_of, _cached_unit(search)
    fits, units = [], []
    for s, (a, b) in enumerate(stage_ranges(partition)):
        fits.append(fit(s, a, b))
        units.append(unit(a, b))
    return engine_blocks(fits, units, search.shrink)


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class StagePlan:
    index: int
    first_layer: int
    layers: int
    card_name: Optional[str]
    total_bytes: Optional[int]
    gpu_memory_utilization: Optional[float]
    free_bytes_at_start: Optional[int]
    weights_bytes: Optional[int]
    activation_peak_bytes: Optional[int]
    non_torch_bytes: Optional[int]
    cuda_graph_bytes: Optional[int]
    non_kv_bytes: Optional[int]
    fit_kv_cache_memory_bytes: Optional[int]
    full_kv_cache_memory_bytes: Optional[int]
    kv_bytes_per_token: int
    bytes_per_block: int
    block_size: int
    tokens_alone: Optional[int]          # what its fit budget would hold on its own
    uniform_num_blocks: Optional[int]    # blocks this stage computes from the uniform budget
    uniform_allocated_bytes: Optional[int]  # KV bytes it allocates under the version's rule
    idle_bytes_uniform: Optional[int]    # uniform budget holding no usable KV on this stage
    proportional_kv_cache_memory_bytes: Optional[int]
    fits_uniform: Optional[bool]         # its allocation under the uniform budget fits its fit budget
    methods: dict
    layer_weights_bytes: Optional[int] = None   # weights of its layers: what moves when layers move


@dataclass(frozen=True)
class EngineCapacity:
    kv_cache_memory_bytes: Optional[int]
    num_blocks: int
    tokens: int
    max_concurrency: float
    fits_one_request: bool           # one request of max_model_len fits (else vLLM refuses to start)
    largest_fitting_model_len: Optional[int] = None   # when it does not: the longest that fits (0: none)


@dataclass(frozen=True)
class Suggestion:
    partition: tuple[int, ...]
    capacity: EngineCapacity
    gain_tokens: Optional[int]       # None when the given plan does not fit: no gain against an infeasible plan
    gain_percent: Optional[float]
    already_optimal: bool
    layers_moved: int
    command: Optional[str]           # None when not even one token of a request fits
    stage_fit_kv_cache_memory_bytes: tuple[Optional[int], ...]
    makes_feasible: bool = False     # the given plan does not fit these cards; this one does


@dataclass(frozen=True)
class StageShortfall:
    """A stage the plan does not fit on its card: its KV allocation exceeds its fit budget."""

    stage: int
    kv_cache_bytes: int              # KV bytes it would allocate (0 without a given budget)
    fit_kv_cache_memory_bytes: int   # vLLM's fit: requested - non-KV - 150 MiB (negative: non-KV alone overflows)
    over_bytes: int                  # kv_cache_bytes - fit_kv_cache_memory_bytes (> 0)

    @property
    def non_kv_fits(self) -> bool:
        return self.fit_kv_cache_memory_bytes >= 0


@dataclass(frozen=True)
class PpPlan:
    model_id: str
    num_layers: int
    partition: tuple[int, ...]
    vllm_version: str
    shrink: bool
    mode: str                            # "memory" (cards known) or "budget" (only a given budget)
    stages: tuple[StagePlan, ...]
    uniform: EngineCapacity
    uniform_given: bool                  # the uniform budget was given by the user
    idle_kind: str                       # "reserved_unusable" (0.10.2-0.11) or "left_idle" (0.12+)
    proportional: EngineCapacity
    proportional_saved_bytes: Optional[int]  # sum over stages of uniform budget minus proportional budget, same capacity
    bottleneck_stage: int
    suggestion: Optional[Suggestion]
    command: Optional[str]               # the vllm serve line for the GIVEN partition (None when it cannot fit)
    max_model_len: int
    warnings: tuple[str, ...]
    layer_weights_method: str = "not_applicable"   # how the weights of moved layers were obtained
    layer_weights_source: Optional[str] = None
    # False: some stage does not fit its card (shortfalls say which, by how much); None: no cards, unchecked
    feasible: Optional[bool] = True
    shortfalls: tuple[StageShortfall, ...] = ()


class _Layouts:
    """kv_layout per range of layers; cached by layer count when every layer is alike.

    Hybrid models are laid out per exact range: kv_layout forms groups over the whole model and projects
    them onto the stage, so which layers a stage holds (not only how many of each kind) matters.
    """

    def __init__(self, spec: ModelSpec, settings: KvSettings) -> None:
        self.spec, self.settings = spec, settings
        self.cache: dict = {}
        self.homogeneous = len({dataclasses.replace(layer, index=0) for layer in spec.layers}) <= 1

    def layout(self, first: int, end: int) -> KvLayout:
        key = end - first if self.homogeneous else (first, end)
        if key not in self.cache:
            self.cache[key] = kv_layout(self.spec, self.settings, layers=list(range(first, end)))
        return self.cache[key]

    def stage_kv(self, first: int, end: int) -> StageKv:
        layout = self.layout(first, end)
        return StageKv(bytes_per_block=layout.page_size_bytes * layout.group_size,
                       page_size_bytes=layout.page_size_bytes, group_size=layout.group_size,
                       block_size=layout.block_size, kv_bytes_per_token=layout.bytes_per_token)

    def unit_function(self, check_ranges: Sequence[tuple[int, int]]) -> Callable[[int, int], int]:
        """Bytes per block of any range, fast: the whole model's page x the stage's largest group.

        That is how kv_layout projects the model's groups onto a stage (its docstring); the shortcut is
        checked against kv_layout on `check_ranges` and on sample ranges, and kv_layout is used per range
        whenever they disagree. Homogeneous models need no shortcut (layouts are cached by count).
        """
        if self.homogeneous:
            return lambda a, b: self.stage_kv(a, b).bytes_per_block
        length = self.spec.num_layers
        whole = self.layout(0, length)
        counts = []
        for group in whole.groups:
            members = set(group.layer_indices)
            prefix = [0]
            for index in range(length):
                prefix.append(prefix[-1] + (index in members))
            counts.append(prefix)
        page = whole.page_size_bytes

        def fast(a: int, b: int) -> int:
            return page * max((prefix[b] - prefix[a] for prefix in counts), default=0)

        samples = list(check_ranges) + [(0, length)]
        for width in {1, 2, 3, max(1, length // 3), max(1, length // 2)}:
            samples += [(a, a + width) for a in range(0, length - width + 1, max(1, width // 2))]
        if all(fast(a, b) == self.stage_kv(a, b).bytes_per_block for a, b in samples):
            return fast
        return lambda a, b: self.stage_kv(a, b).bytes_per_block


def _fit_bytes(card: StageCard, non_kv: StageNonKv, weights_bytes: int, vllm_version: str) -> tuple[int, Optional[int]]:
    """vLLM's suggestion-line fit (and full, when the free bytes are known) for this stage."""
    memory = NonKvMemory(weights_bytes, non_kv.activation_peak_bytes, non_kv.non_torch_bytes,
                         non_kv.cuda_graph_bytes)
    free = card.free_bytes_at_start if card.free_bytes_at_start is not None else card.total_bytes
    advice = advise(memory, DeviceBudget(card.total_bytes, free, card.gpu_memory_utilization), vllm_version)
    full = advice.full_kv_cache_memory_bytes if card.free_bytes_at_start is not None else None
    return advice.fit_kv_cache_memory_bytes, full


def plan_pp_split(spec: ModelSpec, settings: KvSettings, partition: Sequence[int], *,
                  cards: Optional[Sequence[StageCard]] = None,
                  non_kv: Optional[Sequence[StageNonKv]] = None,
                  layer_weights_bytes: Optional[Sequence[int]] = None,
                  kv_cache_memory_bytes: Optional[int] = None,
                  suggest: bool = True,
                  layer_weights_method: str = "estimated",
                  layer_weights_source: Optional[str] = "parameter counts") -> PpPlan:
    """Per-stage budgets, vLLM's uniform budget, proportional budgets, bottleneck and the best partition.

    cards + non_kv (one per stage) give each stage's memory; layer_weights_bytes (one per layer, per TP
    rank) is what moves with a layer when the suggestion moves it; layer_weights_method / _source say how
    those were obtained (see layer_weights_from_stages). Without cards, kv_cache_memory_bytes alone says
    what that budget buys (no memory check).
    """
    num_layers = spec.num_layers
    partition = check_partition(partition, num_layers)
    n = len(partition)
    version = settings.vllm_version
    shrink = shrinks_to_minimum(version)
    warnings: list[str] = []
    if cards is not None and len(cards) != n:
        raise InputError(f"{len(cards)} cards for {n} stages: give one card for all stages or one per stage")
    if (cards is None) != (non_kv is None):
        raise InputError("per-stage memory needs both the cards and the non-KV terms of every stage")
    if non_kv is not None and len(non_kv) != n:
        raise InputError(f"{len(non_kv)} stage memory reports for {n} stages")
    if cards is None and kv_cache_memory_bytes is None:
        raise InputError("no card and no budget: say which GPU each stage runs on",
                         hint="pass --gpu NAME (or --gpu-memory 16GiB,32GiB), --stage-profile, or "
                              "--kv-cache-memory-bytes N")
    if kv_cache_memory_bytes is not None and kv_cache_memory_bytes <= 0:
        raise InputError(f"--kv-cache-memory-bytes must be positive, got {kv_cache_memory_bytes}")
    mode = "memory" if cards is not None else "budget"
    if mode == "budget":
        warnings.append("no cards: the given budget is assumed to fit every stage; the suggestion keeps it on "
                        "every stage and checks no memory")

    layouts = _Layouts(spec, settings)
    ranges = stage_ranges(partition)
    kvs = [layouts.stage_kv(a, b) for a, b in ranges]
    units = [kv.bytes_per_block for kv in kvs]
    if any(u <= 0 for u in units):
        raise InputError("a stage holds no KV-cache layers; pp-split plans attention/state caches only")
    whole = layouts.layout(0, num_layers)

    weights = list(layer_weights_bytes) if layer_weights_bytes is not None else [0] * num_layers
    if len(weights) != num_layers:
        raise InputError(f"{len(weights)} layer weights for {num_layers} layers")
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + w)

    def range_weights(a: int, b: int) -> int:
        return prefix[b] - prefix[a]

    fits: list[Optional[int]] = [None] * n
    fulls: list[Optional[int]] = [None] * n
    extras: list[int] = [0] * n
    if mode == "memory":
        for s, (a, b) in enumerate(ranges):
            fits[s], fulls[s] = _fit_bytes(cards[s], non_kv[s], non_kv[s].weights_bytes, version)
            extras[s] = non_kv[s].weights_bytes - range_weights(a, b)
            if extras[s] < 0:
                warnings.append(f"stage {s}: its weights ({non_kv[s].weights_bytes} B) are below the estimated "
                                f"weights of its layers ({range_weights(a, b)} B); moved layers are estimated")

    # fit is linear in the weights (requested - non-KV - buffer): the stage's fit with its own layers,
    # plus the weights of those layers, minus the weights of the layers it would hold instead
    base = [fits[s] + range_weights(a, b) if fits[s] is not None else None for s, (a, b) in enumerate(ranges)]

    def fit_of(s: int, a: int, b: int) -> int:
        if mode == "budget":
            return kv_cache_memory_bytes
        return base[s] - (prefix[b] - prefix[a])

    search = SplitSearch(num_layers, n, fit_of, layouts.unit_function(ranges), shrink,
                         units_by_count=layouts.homogeneous)

    def capacity(blocks: int, budget: Optional[int]) -> EngineCapacity:
        # the scheduler's view: all of the model's groups with the engine's block count (vLLM's log figures)
        cap = capacity_from_blocks(whole, max(blocks, 0))
        return EngineCapacity(budget, cap.num_blocks, cap.tokens, cap.max_concurrency, cap.fits_one_request,
                              cap.largest_fitting_model_len)

    # uniform: what vLLM does with one budget on every rank
    if kv_cache_memory_bytes is not None:
        uniform_budget: Optional[int] = kv_cache_memory_bytes
        uniform_blocks = min(blocks_for(kv_cache_memory_bytes, u) for u in units)
    else:
        uniform_blocks = engine_blocks(fits, units, shrink)
        uniform_budget = uniform_budget_for(uniform_blocks, fits, units, shrink) if uniform_blocks >= 0 else None
    # what every stage computes from that budget, and the KV bytes it allocates under the version's rule
    stage_blocks = [blocks_for(uniform_budget, u) if uniform_budget is not None else None for u in units]
    allocated = [None if uniform_budget is None else (uniform_blocks * u if shrink else stage_blocks[s] * u)
                 for s, u in enumerate(units)]
    # feasible: every stage's non-KV memory and its KV allocation fit its card (vLLM's fit); unknown without cards
    shortfalls = []
    if mode == "memory":
        for s in range(n):
            kv = allocated[s] if allocated[s] is not None else 0
            if fits[s] < 0 or kv > fits[s]:
                shortfalls.append(StageShortfall(s, kv, fits[s], kv - fits[s]))
    feasible: Optional[bool] = None if mode == "budget" else not shortfalls
    usable = feasible is not False and uniform_budget is not None   # a plan vLLM can run (as far as we know)
    # an engine that cannot start holds nothing: no tokens are claimed for an infeasible plan
    uniform = capacity(uniform_blocks, uniform_budget) if usable else EngineCapacity(uniform_budget, 0, 0, 0.0, False)
    if usable and not uniform.fits_one_request:
        warnings.append(f"one request of {whole.max_model_len:,} tokens needs {whole.blocks_per_request:,} blocks "
                        f"but the engine gets {uniform.num_blocks:,}: vLLM would refuse to start; the vllm serve "
                        f"line sets --max-model-len {uniform.largest_fitting_model_len}, the longest that fits "
                        "(or see the suggested partition)")

    # proportional: each stage gets blocks x its bytes per block, for the best common capacity
    if mode == "memory":
        own = [blocks_for(f, u) for f, u in zip(fits, units)]
        proportional_blocks = max(min(own), 0)
        bottleneck = min(range(n), key=lambda s: (own[s], -partition[s]))
    else:
        proportional_blocks = max(uniform_blocks, 0)
        bottleneck = max(range(n), key=lambda s: (units[s], -s))
    proportional = capacity(proportional_blocks, None)
    saved = sum(uniform_budget - uniform_blocks * u for u in units) if usable else None

    stages = []
    for s, (a, b) in enumerate(ranges):
        fits_uniform = None
        if fits[s] is not None and allocated[s] is not None:
            fits_uniform = allocated[s] <= fits[s]
        tokens_alone = None
        if fits[s] is not None:
            tokens_alone = kv_capacity(layouts.layout(a, b), fits[s]).tokens if fits[s] > 0 else 0
        card = cards[s] if cards is not None else None
        memory = non_kv[s] if non_kv is not None else None
        methods = {"non_kv": memory.method if memory else "not_applicable"}
        for term in ("weights", "activation_peak", "non_torch", "cuda_graph"):
            methods[term] = ((memory.term_methods or {}).get(term, memory.method) if memory
                             else "not_applicable")
        methods["card"] = card.source if card else "not_applicable"
        moved_known = memory is not None and layer_weights_bytes is not None
        methods["moved_layer_weights"] = layer_weights_method if moved_known else "not_applicable"
        stages.append(StagePlan(
            index=s, first_layer=a, layers=b - a,
            card_name=card.name if card else None,
            total_bytes=card.total_bytes if card else None,
            gpu_memory_utilization=card.gpu_memory_utilization if card else None,
            free_bytes_at_start=card.free_bytes_at_start if card else None,
            weights_bytes=memory.weights_bytes if memory else None,
            activation_peak_bytes=memory.activation_peak_bytes if memory else None,
            non_torch_bytes=memory.non_torch_bytes if memory else None,
            cuda_graph_bytes=memory.cuda_graph_bytes if memory else None,
            non_kv_bytes=memory.total_bytes if memory else None,
            fit_kv_cache_memory_bytes=fits[s], full_kv_cache_memory_bytes=fulls[s],
            kv_bytes_per_token=kvs[s].kv_bytes_per_token, bytes_per_block=units[s],
            block_size=kvs[s].block_size, tokens_alone=tokens_alone,
            uniform_num_blocks=stage_blocks[s], uniform_allocated_bytes=allocated[s],
            idle_bytes_uniform=uniform_budget - uniform_blocks * units[s] if usable else None,
            proportional_kv_cache_memory_bytes=proportional_blocks * units[s],
            fits_uniform=fits_uniform, methods=methods,
            layer_weights_bytes=range_weights(a, b) if memory is not None and layer_weights_bytes is not None
            else None))

    utilization = None
    if cards is not None:
        utilization = min(card.gpu_memory_utilization for card in cards)

    # what vLLM can serve: a hub id or directory as given; a config file by its hub id, else MODEL (a warning)
    served_name, served_warning = served_model_name(spec.model_id, spec.raw_config)

    def serve_line(split: Sequence[int], budget: int, engine: EngineCapacity) -> Optional[str]:
        # a plan that cannot hold one request of the model length: vLLM refuses to start with it, so the line
        # carries the longest length that fits (vLLM 0.11 kv_cache_utils.check_enough_kv_cache_memory)
        max_model_len = settings.max_model_len
        if not engine.fits_one_request:
            if not engine.largest_fitting_model_len:
                return None
            max_model_len = engine.largest_fitting_model_len
        env = {"VLLM_PP_LAYER_PARTITION": ",".join(map(str, split))} if n > 1 else {}
        return vllm_serve_command(served_name, budget, gpu_memory_utilization=utilization,
                                  tensor_parallel_size=settings.tensor_parallel_size,
                                  pipeline_parallel_size=n, max_model_len=max_model_len,
                                  kv_cache_dtype=settings.kv_cache_dtype, block_size=settings.block_size,
                                  env=env)

    suggestion = None
    if suggest:
        given_blocks = partition_blocks(search, partition)
        best_blocks, best_split = best_partition(search)
        if best_split is not None and best_blocks >= 0:
            already = given_blocks >= best_blocks
            split = partition if already else best_split
            split_ranges = stage_ranges(split)
            split_fits = [fit_of(s, a, b) for s, (a, b) in enumerate(split_ranges)]
            split_units = [layouts.stage_kv(a, b).bytes_per_block for a, b in split_ranges]
            blocks = engine_blocks(split_fits, split_units, shrink) if mode == "memory" else best_blocks
            budget = (kv_cache_memory_bytes if mode == "budget"
                      else uniform_budget_for(blocks, split_fits, split_units, shrink))
            suggested = capacity(blocks, budget)
            gain = percent = None
            if feasible is not False:   # a gain is measured against a plan that runs, never an infeasible one
                # like against like: with cards, the given partition at ITS largest safe budget (not at a
                # budget the user gave, which would mix the split's gain with the budget's); else both at
                # the one budget given
                baseline = capacity(given_blocks, None).tokens if mode == "memory" else uniform.tokens
                gain = suggested.tokens - baseline
                percent = round(100.0 * gain / baseline, 2) if baseline > 0 else None
            moved = sum(abs(x - y) for x, y in zip(_ends(split), _ends(partition)))
            suggestion = Suggestion(
                partition=tuple(split), capacity=suggested, gain_tokens=gain, gain_percent=percent,
                already_optimal=already, layers_moved=moved, command=serve_line(split, budget, suggested),
                stage_fit_kv_cache_memory_bytes=tuple(split_fits) if mode == "memory" else (None,) * n,
                makes_feasible=feasible is False)
            # (an already-optimal split that repeats the uniform plan's own warning is not warned twice)
            if not suggested.fits_one_request and not (already and usable and not uniform.fits_one_request):
                warnings.append(f"the suggested plan holds {suggested.tokens:,} tokens: one request of "
                                f"{whole.max_model_len:,} tokens does not fit, vLLM would refuse to start; its "
                                f"vllm serve line sets --max-model-len {suggested.largest_fitting_model_len}, "
                                "the longest that fits")
        else:
            warnings.append("no partition fits: every split leaves some stage without memory for its weights")

    if served_warning and (usable or suggestion is not None):
        warnings.append(served_warning)
    idle_kind = "left_idle" if shrink else "reserved_unusable"
    return PpPlan(
        model_id=spec.model_id, num_layers=num_layers, partition=partition, vllm_version=version,
        shrink=shrink, mode=mode, stages=tuple(stages), uniform=uniform,
        uniform_given=kv_cache_memory_bytes is not None, idle_kind=idle_kind,
        proportional=proportional, proportional_saved_bytes=saved, bottleneck_stage=bottleneck,
        suggestion=suggestion, command=serve_line(partition, uniform_budget, uniform) if usable else None,
        max_model_len=whole.max_model_len, warnings=tuple(warnings), feasible=feasible,
        shortfalls=tuple(shortfalls),
        layer_weights_method=layer_weights_method if (non_kv is not None and layer_weights_bytes is not None)
        else "not_applicable",
        layer_weights_source=layer_weights_source if (non_kv is not None and layer_weights_bytes is not None)
        else None)


def _ends(partition: Sequence[int]) -> list[int]:
    """Stage boundaries (the last is always the layer count): moved layers = sum of boundary shifts."""
    ends, total = [], 0
    for count in partition[:-1]:
        total += count
        ends.append(total)
    return ends


# ---------------------------------------------------------------- analytic non-KV estimate (from the config)
#
# Used by `pp-split --parameter-counts` (and when the estimate engine cannot size a stage). Every figure
# below is an ESTIMATE from the config alone, reported with method "estimated"; the weights are parameter
# counts x bytes per parameter, the activation is the estimate engine's analytic formula at vLLM's default
# profile batch (plan/dummy.py), non-torch and CUDA-graph memory are coarse, documented rules of thumb.

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1}
ESTIMATED_NON_TORCH_BYTES = 256 * (1 << 20)     # NCCL / cuBLAS workspaces growth after start-up (rule of thumb)
ESTIMATED_CUDA_GRAPH_BYTES = 512 * (1 << 20)    # graph pool of a mid-size model (logs show 0.2-2.4 GiB)


def _linear_bytes_per_param(spec: ModelSpec) -> float:
    """Bytes of one linear-layer weight as the checkpoint stores it (scales included roughly)."""
    dtype_bytes = _DTYPE_BYTES.get(spec.dtype, 2)
    quant = spec.quantization
    if quant is None:
        return float(dtype_bytes)
    bits = quant.weight_bits
    method = (quant.method or "").lower()
    if bits is None:
        if "fp8" in method or method in ("modelopt", "fbgemm_fp8"):
            bits = 8
        elif method in ("mxfp4", "awq", "gptq", "bitsandbytes", "nvfp4"):
            bits = 4
    if bits is None or bits >= 16:
        return float(dtype_bytes)
    block = (quant.raw or {}).get("weight_block_size")
    if bits == 8 and isinstance(block, (list, tuple)) and len(block) == 2 and all(block):
        return 1 + 4 / (block[0] * block[1])      # one float32 scale per block (fp8 block quantization)
    if bits == 8:
        return 1.0                                # per-tensor / per-channel scales: negligible
    group = quant.group_size if quant.group_size and quant.group_size > 0 else 128
    return bits / 8 + 2 / group                   # one 16-bit scale per group


def _attention_params(spec: ModelSpec, layer, tp: int) -> int:
    from kvadvise.model.spec import LayerKind

    cfg = spec.text_config or spec.raw_config or {}
    hidden = spec.hidden_size
    heads = max(1, spec.num_attention_heads // tp)
    if layer.kind == LayerKind.NONE:
        return 0
    if layer.kind == LayerKind.MLA:
        nope = int(cfg.get("qk_nope_head_dim") or 128)
        rope = int(cfg.get("qk_rope_head_dim") or 64)
        v_dim = int(cfg.get("v_head_dim") or 128)
        kv_lora = int(cfg.get("kv_lora_rank") or 512)
        q_lora = cfg.get("q_lora_rank")
        q = (hidden * int(q_lora) + int(q_lora) * heads * (nope + rope)) if q_lora else hidden * heads * (nope + rope)
        return q + hidden * (kv_lora + rope) + kv_lora * heads * (nope + v_dim) + heads * v_dim * hidden
    if layer.kind == LayerKind.MAMBA and layer.mamba is not None:
        m = layer.mamba
        if m.mixer == "gated_delta_net":
            k_dim = (m.num_k_heads or 0) * (m.head_k_dim or 0)
            v_dim = (m.num_v_heads or 0) * (m.head_v_dim or 0)
            return (hidden * (2 * k_dim + 2 * v_dim + 2 * (m.num_v_heads or 0)) + v_dim * hidden) // tp
        inner = m.intermediate_size or ((m.num_heads or 0) * (m.head_dim or 0))
        groups_state = 2 * (m.n_groups or 1) * (m.state_size or 0)
        return (hidden * (2 * inner + groups_state + (m.num_heads or 0)) + inner * hidden) // tp
    head = layer.head_size or spec.head_size
    kv_heads = max(1, (layer.num_kv_heads or spec.num_kv_heads) // tp)
    return hidden * heads * head * 2 + hidden * kv_heads * head * 2


def _is_moe_layer(spec: ModelSpec, index: int) -> bool:
    if not spec.num_experts:
        return False
    cfg = spec.text_config or spec.raw_config or {}
    if index < int(cfg.get("first_k_dense_replace") or 0):
        return False
    if index in set(cfg.get("mlp_only_layers") or ()):
        return False
    step = int(cfg.get("decoder_sparse_step") or cfg.get("moe_layer_freq") or 1)
    return step <= 1 or (index + 1) % step == 0


def _mlp_params(spec: ModelSpec, index: int, tp: int) -> tuple[int, int]:
    """(linear params, 16-bit router params) of one layer's MLP, per TP rank."""
    cfg = spec.text_config or spec.raw_config or {}
    hidden = spec.hidden_size
    if _is_moe_layer(spec, index):
        moe = spec.moe_intermediate_size or spec.intermediate_size or 0
        params = spec.num_experts * 3 * hidden * moe
        shared = int(cfg.get("n_shared_experts") or 0) * moe + int(cfg.get("shared_expert_intermediate_size") or 0)
        params += 3 * hidden * shared
        return params // tp, hidden * spec.num_experts
    return 3 * hidden * (spec.intermediate_size or 4 * hidden) // tp, 0


def estimate_layer_weights_bytes(spec: ModelSpec, tensor_parallel_size: int = 1) -> tuple[int, ...]:
    """Estimated weight bytes of each decoder layer on one TP rank (attention + MLP + norms)."""
    linear = _linear_bytes_per_param(spec)
    dtype_bytes = _DTYPE_BYTES.get(spec.dtype, 2)
    result = []
    for layer in spec.layers:
        mlp, router = _mlp_params(spec, layer.index, tensor_parallel_size)
        params = _attention_params(spec, layer, tensor_parallel_size) + mlp
        result.append(int(params * linear) + (router + 2 * spec.hidden_size) * dtype_bytes)
    return tuple(result)


def _padded_vocab(vocab: int, tp: int) -> int:
    # mirrors vLLM 0.11 model_executor/layers/vocab_parallel_embedding.py pad_vocab_size (DEFAULT_VOCAB_PADDING_SIZE 64)
    return -(-vocab // 64) * 64 // tp


def stage_extra_weights_bytes(spec: ModelSpec, num_stages: int, tensor_parallel_size: int = 1) -> tuple[int, ...]:
    """Weights that stay on a stage whatever its layers: the embedding on the first; final norm and lm_head
    on the last (its own copy on a later stage, even when tied; one shared table with a single stage).

    Config arithmetic in the model dtype (embeddings are not quantized): vocabulary padded to 64 rows,
    split over the TP ranks.
    """
    dtype_bytes = _DTYPE_BYTES.get(spec.dtype, 2)
    # mirrors vLLM 0.11 models/llama.py: embed_tokens on the first rank (and on the last when tied), lm_head
    # on the last rank tied to it
    embedding = _padded_vocab(spec.vocab_size, tensor_parallel_size) * spec.hidden_size * dtype_bytes
    extras = [0] * num_stages
    extras[0] += embedding
    extras[-1] += spec.hidden_size * dtype_bytes                     # final norm
    if not (spec.tie_word_embeddings and num_stages == 1):
        extras[-1] += embedding                                      # lm_head
    return tuple(extras)


def layer_weights_from_stages(estimated_layer_bytes: Sequence[int], partition: Sequence[int],
                              stage_weights_bytes: Sequence[int],
                              stage_extra_bytes: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-layer weights taken from each stage's measured or estimated weights, not from parameter counts.

    A stage's layers weigh (weights_s - extras_s) together; that is shared among them in proportion to
    their parameter-count estimate (equal shares when every layer is alike), to the byte: the shares of a
    stage sum to exactly weights_s - extras_s. A stage where that is not positive keeps the parameter-count
    figures; the second value lists those stages.
    """
    result: list[int] = []
    kept: list[int] = []
    for s, (a, b) in enumerate(stage_ranges(partition)):
        estimated = [int(x) for x in estimated_layer_bytes[a:b]]
        target = stage_weights_bytes[s] - stage_extra_bytes[s]
        total = sum(estimated)
        if target <= 0 or total <= 0:
            result += estimated
            kept.append(s)
            continue
        # cumulative rounding: every share is within one byte of its exact value and they sum to target
        running, previous = 0, 0
        for value in estimated:
            running += value
            share_end = target * running // total
            result.append(share_end - previous)
            previous = share_end
    return tuple(result), tuple(kept)


def estimate_stage_non_kv(spec: ModelSpec, partition: Sequence[int], cards: Sequence[StageCard],
                          settings: KvSettings, *, max_num_batched_tokens: Optional[int] = None,
                          max_num_seqs: Optional[int] = None,
                          model_runner: str = "auto") -> tuple[tuple[StageNonKv, ...], tuple[int, ...]]:
    """Estimated non-KV terms of every stage, and the estimated weights of every layer.

    The activation peak is the estimate engine's own analytic formula (estimate/activation.py
    analytic_activation_bytes: forward on every stage, the sampler on the last) at vLLM's profile batch for
    the stage's card (plan/dummy.py), plus torch's cuBLAS workspace for the card's family.
    """
    # plain arithmetic, no torch: the same formula the estimate engine falls back to, not a third one
    from kvadvise.estimate.activation import analytic_activation_bytes
    from kvadvise.plan.dummy import cublas_workspace_bytes_for_family, plan_dummy_run, vllm_default_batch
    from kvadvise.profile.sampler import sampler_rule   # plain arithmetic: imports no torch
    from kvadvise.plan.vllm_buffers import model_runner_v2_state_bytes

    rule = sampler_rule(settings.vllm_version, model_runner)[0]

    tp = settings.tensor_parallel_size
    layer_weights = estimate_layer_weights_bytes(spec, tp)
    n = len(partition)
    extras = stage_extra_weights_bytes(spec, n, tp)
    result = []
    for s, (a, b) in enumerate(stage_ranges(partition)):
        weights = sum(layer_weights[a:b]) + extras[s]
        card = cards[s]
        tokens_default, seqs_default = vllm_default_batch(card.total_bytes, card.name, settings.vllm_version)
        run = plan_dummy_run(max_num_batched_tokens or tokens_default, max_num_seqs or seqs_default)
        # vLLM's first matmul allocates the cuBLAS workspace inside its profile run (unknown family: the largest)
        workspace, _known = cublas_workspace_bytes_for_family(card.family)
        activation = analytic_activation_bytes(spec, run, dtype=spec.dtype, tensor_parallel_size=tp,
                                               run_sampler=s == n - 1, sampler_rule=rule) + workspace
        # Model Runner V2 (0.33): its request, input and sampler state, counted by vLLM with non-torch memory
        runner_state = (sum(model_runner_v2_state_bytes(max_num_seqs or seqs_default, run.num_tokens,
                                                        spec.vocab_size, last_stage=s == n - 1).values())
                        if rule == "0.33" else 0)
        result.append(StageNonKv(weights_bytes=weights, activation_peak_bytes=activation,
                                 non_torch_bytes=ESTIMATED_NON_TORCH_BYTES + runner_state,
                                 cuda_graph_bytes=ESTIMATED_CUDA_GRAPH_BYTES, method="estimated"))
    return tuple(result), layer_weights
