"""Master-side QAOA drivers: knapsack beam search over blocks, portfolio selection and
distributed angle search. Transport-agnostic and synchronous; no I/O except through
``dispatch``. The drivers are plain functions meant to run in a worker thread.

``dispatch(payloads)`` is a blocking call: it sends every payload dict to some node (in
parallel where it can) and returns the result dicts in input order, each carrying
``node_id`` (the coordinator's dispatch adds it). Retrying failed deliveries and waiting for
capacity is the dispatcher's business, not the drivers'. For :func:`solve_knapsack` and
:func:`solve_portfolio` the node method is ``qaoa_block`` (:data:`METHOD_BLOCK`); for
:func:`search_parameters` it is ``qaoa_schedules`` (:data:`METHOD_SCHEDULES`).

Each block job is dispatched once, and exactly one result is accepted for it: a result
counts only if its ``job_id``, ``block_index``, ``beam_entry`` and ``job_version`` match a
pending job, so duplicated copies and stale results (an older ``job_version``, a foreign
job) are counted and ignored and never change the answer. A job left without an accepted
result fails the run (:class:`ExecutionFailed`).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any

import numpy as np

from quantum_mesh.errors import ExecutionFailed, InvalidInput
from quantum_mesh.quantum.qaoa.angles import BETA_RANGE, GAMMA_RANGE, MAX_P, OPTIMIZERS
from quantum_mesh.quantum.qaoa.blocks import ORDERS, BlockJob, decompose
from quantum_mesh.quantum.qaoa.classical import (
    knapsack_dp,
    knapsack_greedy,
    knapsack_swap_repair,
    portfolio_brute_force,
    portfolio_objective,
    validate_knapsack,
    validate_portfolio,
)
from quantum_mesh.quantum.qaoa.problems import future_profile, lp_curve

METHOD_BLOCK = "qaoa_block"
METHOD_SCHEDULES = "qaoa_schedules"
#: Blocking: every payload to some node; the result dicts in input order, with ``node_id``.
Dispatch = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
Progress = Callable[[dict[str, Any]], None]


#: ``grid`` and ``cobyla`` choose each block's angles inside the node that solves it;
#: ``distributed`` first evaluates a batch of (gamma, beta) schedules for the block on several
#: nodes at once (``qaoa_schedules``), refines the best, then solves every beam entry of the
#: block with those fixed angles.
KNAPSACK_OPTIMIZERS = (*OPTIMIZERS, "distributed")
#: Classical improvement of the search's answer: none, or add/1-swap/2-swap local search.
REPAIRS = ("none", "swap")
DEFAULT_BACKTRACKS = 4
MAX_BACKTRACKS = 32
#: The widest beam an adaptive search uses.
MAX_ADAPTIVE_WIDTH = 32


@dataclass(frozen=True)
class KnapsackSettings:
    """Tuning of :func:`solve_knapsack` (validated on creation).

    ``compound_size``: beam-entry jobs of one block grouped into one dispatched payload
    (``{"jobs": [...]}``), to amortise transport on small blocks. 0 (the default) sends one
    payload per job and leaves grouping to the dispatcher, which sizes groups from measured
    per-call overhead and compute (``control/sizing.py``).

    ``max_attempts``: deprecated and ignored. It bounded the driver's re-send rounds, which
    are gone (the dispatcher retries); it is still accepted and range-checked so existing
    request bodies and run tags stay valid.

    ``beam_adaptive``: the beam's width follows the slack (:func:`adaptive_width`).
    ``backtracks``: how many times a search may step back to pruned alternatives when a
    block leaves no feasible extension (a dead end), instead of failing.
    ``repair``: ``"swap"`` runs a classical local search (add, 1-swap, 2-swap) on the
    search's answer; the result then reports the value before and after it.
    """

    block_size: int = 12
    beam_width: int = 8
    p: int = 1
    optimizer: str = "grid"
    grid_size: int = 8
    maxiter: int = 60
    shots: int = 512
    top_k: int = 8
    order: str = "density"
    compound_size: int = 0
    max_attempts: int = 3
    branches: int = 1
    beam_adaptive: bool = False
    backtracks: int = DEFAULT_BACKTRACKS
    repair: str = "none"

    def __post_init__(self) -> None:
        _check_types(self)
        checks = [
            ("block_size", 1 <= self.block_size <= 20, "block_size must be in [1, 20]"),
            ("beam_width", 1 <= self.beam_width <= 32, "beam_width must be in [1, 32]"),
            ("p", 1 <= self.p <= MAX_P, f"p must be in [1, {MAX_P}]"),
            (
                "optimizer",
                self.optimizer in KNAPSACK_OPTIMIZERS,
                f"optimizer must be one of {KNAPSACK_OPTIMIZERS}",
            ),
            ("grid_size", 2 <= self.grid_size <= 32, "grid_size must be in [2, 32]"),
            ("maxiter", 1 <= self.maxiter <= 2000, "maxiter must be in [1, 2000]"),
            ("shots", 1 <= self.shots <= 1 << 16, "shots must be in [1, 65536]"),
            ("top_k", 1 <= self.top_k <= 64, "top_k must be in [1, 64]"),
            ("order", self.order in ORDERS, f"order must be one of {ORDERS}"),
            (
                "compound_size",
                0 <= self.compound_size <= 64,
                "compound_size must be in [0, 64] (0: sized automatically)",
            ),
            ("max_attempts", 1 <= self.max_attempts <= 10, "max_attempts must be in [1, 10]"),
            ("branches", 1 <= self.branches <= 8, "branches must be in [1, 8]"),
            (
                "backtracks",
                0 <= self.backtracks <= MAX_BACKTRACKS,
                f"backtracks must be in [0, {MAX_BACKTRACKS}]",
            ),
            ("repair", self.repair in REPAIRS, f"repair must be one of {REPAIRS}"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise InvalidInput(
                    f"{message}. Instead, got {_short(getattr(self, name))}.",
                    details={"field": name},
                )

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def tag_dict(self) -> dict[str, Any]:
        """What identifies a run: every setting, less the later ones left at their default
        (so a run checkpointed before they existed resumes under the same tag)."""
        later = {"beam_adaptive": False, "backtracks": DEFAULT_BACKTRACKS, "repair": "none"}
        return {k: v for k, v in self.as_dict().items() if k not in later or later[k] != v}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> KnapsackSettings:
        """Settings from workflow params (known keys only; others are ignored)."""
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in params.items() if k in names})
        except TypeError as error:
            raise InvalidInput(f"Bad knapsack settings: {error}") from error


@dataclass(frozen=True)
class PortfolioSettings:
    """Tuning of :func:`solve_portfolio`. ``encoding``: ``"xy"`` (default) or ``"penalty"``.

    ``max_attempts``: deprecated and ignored (see :class:`KnapsackSettings`).
    """

    p: int = 2
    optimizer: str = "cobyla"
    grid_size: int = 8
    maxiter: int = 80
    shots: int = 1024
    top_k: int = 4
    encoding: str = "xy"
    max_attempts: int = 3

    def __post_init__(self) -> None:
        _check_types(self)
        checks = [
            ("p", 1 <= self.p <= MAX_P, f"p must be in [1, {MAX_P}]"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            ("grid_size", 2 <= self.grid_size <= 32, "grid_size must be in [2, 32]"),
            ("maxiter", 1 <= self.maxiter <= 2000, "maxiter must be in [1, 2000]"),
            ("shots", 1 <= self.shots <= 1 << 16, "shots must be in [1, 65536]"),
            ("top_k", 1 <= self.top_k <= 64, "top_k must be in [1, 64]"),
            ("encoding", self.encoding in ("xy", "penalty"), "encoding must be 'xy' or 'penalty'"),
            ("max_attempts", 1 <= self.max_attempts <= 10, "max_attempts must be in [1, 10]"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise InvalidInput(f"{message}.", details={"field": name})


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def _check_types(settings: Any) -> None:
    """Each field has its default's type: an integer (not a bool, not 1.5) or a string."""
    for f in fields(settings):
        value, default = getattr(settings, f.name), f.default
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
            kind = "an integer"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            raise InvalidInput(
                f"{f.name} must be {kind}. Instead, got {_short(value)}.",
                details={"field": f.name},
            )


@dataclass(frozen=True)
class _Entry:
    selected: tuple[int, ...]
    value: int
    weight: int
    score: float


@dataclass
class _Ledger:
    """What the dispatch rounds of a run did. ``resent`` is always 0 (the driver no longer
    re-sends; the dispatcher retries); it stays for the shape of ``timing``."""

    dispatch_s: float = 0.0
    critical_s: float = 0.0
    duplicates: int = 0
    stale: int = 0
    resent: int = 0
    rounds: int = 0


def _run_tag(*parts: Any) -> str:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:10]


def _seed_for(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, *keys]).generate_state(1)[0])


def _run_jobs(
    jobs: list[BlockJob], *, dispatch: Dispatch, group: int, ledger: _Ledger
) -> dict[str, dict[str, Any]]:
    """Dispatch the block jobs once (``group`` jobs per payload) and accept exactly one
    result per job (keyed by job_id).

    A result is accepted only if its ``(job_id, block_index, beam_entry)`` names a pending
    job and its ``job_version`` is that job's version; other results are counted as stale,
    later copies of an accepted one as duplicates, and both are ignored.

    Raises:
        ExecutionFailed: some job has no accepted result.
    """
    pending = {job.job_id: job for job in jobs}
    accepted: dict[str, dict[str, Any]] = {}
    payloads: list[dict[str, Any]] = []
    for start in range(0, len(jobs), group):
        chunk = [job.to_dict() for job in jobs[start : start + group]]
        payloads.append(chunk[0] if group == 1 else {"jobs": chunk})
    started = time.perf_counter()
    raw = dispatch(payloads)
    ledger.dispatch_s += time.perf_counter() - started
    ledger.rounds += 1
    per_node: dict[str, float] = {}
    for result in _flatten(raw):
        job = pending.get(str(result.get("job_id")))
        if job is None or result.get("block_index") != job.block_index:
            ledger.stale += 1
            continue
        if result.get("beam_entry", 0) != job.beam_entry:
            ledger.stale += 1
            continue
        if result.get("job_version") != job.job_version:
            ledger.stale += 1
            continue
        if job.job_id in accepted:
            ledger.duplicates += 1
            continue
        accepted[job.job_id] = result
        node = str(result.get("node_id"))
        seconds = float(result.get("diagnostics", {}).get("seconds", 0.0))
        per_node[node] = per_node.get(node, 0.0) + seconds
    ledger.critical_s += max(per_node.values(), default=0.0)
    missing = sorted(set(pending) - set(accepted))
    if missing:
        raise ExecutionFailed(
            f"No result for {len(missing)} block job(s).",
            details={"job_ids": missing},
        )
    return accepted


def _flatten(raw: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in raw:
        if not isinstance(item, Mapping):
            continue
        if "results" in item and isinstance(item["results"], list):
            out.extend({**sub, "node_id": item.get("node_id")} for sub in item["results"])
        elif "job_id" in item:
            out.append(dict(item))
    return out


def _timing(started: float, ledger: _Ledger, qaoa_s: float, classical_s: float) -> dict[str, Any]:
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "qaoa_s": qaoa_s,
        "dispatch_s": ledger.dispatch_s,
        "mesh_s": max(0.0, ledger.dispatch_s - ledger.critical_s),
        "classical_s": classical_s,
        "master_s": max(0.0, wall - ledger.dispatch_s),
        "dispatch_rounds": ledger.rounds,
        "duplicates_ignored": ledger.duplicates,
        "stale_ignored": ledger.stale,
        "jobs_resent": ledger.resent,
    }


def _block_entry(result: Mapping[str, Any]) -> dict[str, Any]:
    diag = result.get("diagnostics", {})
    return {
        "block_index": result["block_index"],
        "beam_entry": result.get("beam_entry", 0),
        "node_id": result.get("node_id"),
        # Executions the dispatcher needed for this job's unit (1 unless it was retried).
        "attempts": result.get("attempts", 1),
        "job_id": result["job_id"],
        "job_version": result["job_version"],
        "seconds": float(diag.get("seconds", 0.0)),
        "qubits": diag.get("qubits"),
        "evaluations": diag.get("evaluations"),
        "energy": diag.get("energy"),
        "ground_state_probability": diag.get("ground_state_probability"),
        "candidates": len(result.get("candidates", [])),
    }


def _with_distributed_angles(
    jobs: list[BlockJob],
    *,
    settings: KnapsackSettings,
    seed: int,
    dispatch: Dispatch,
    ledger: _Ledger,
) -> list[BlockJob]:
    """Pick the block's angles by a distributed schedule search on its leading beam entry,
    then fix them for every entry of the block (angles act on the normalised cost, so they
    carry over between entries whose contexts differ)."""
    started = time.perf_counter()
    found = search_parameters(
        jobs[0].to_dict(),
        dispatch=dispatch,
        n_schedules=settings.grid_size**2,
        seed=seed,
        p=settings.p,
        jobs=max(2, min(8, settings.beam_width)),
        refine_rounds=1,
    )
    ledger.dispatch_s += time.perf_counter() - started
    fixed = {
        "p": settings.p,
        "gammas": found["best_gammas"],
        "betas": found["best_betas"],
        "shots": settings.shots,
    }
    return [replace(job, qaoa=fixed) for job in jobs]


def solve_knapsack(
    values: list[int],
    weights: list[int],
    capacity: int,
    *,
    dispatch: Dispatch,
    settings: KnapsackSettings,
    seed: int,
    on_progress: Progress | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
    schedule_dispatch: Dispatch | None = None,
) -> dict[str, Any]:
    """0/1 knapsack by QAOA on blocks with a beam of ``settings.beam_width`` partial solutions.

    ``checkpoint`` receives, after every block, a JSON-safe snapshot (the beam, the next block,
    the per-block log and the QAOA seconds so far); passing the last one back as ``resume``
    continues the same run (same instance, settings and seed) from the next block, so a
    coordinator restart does not redo finished blocks. A snapshot from another run is ignored.

    Items are split into blocks (:func:`decompose`). For each block, one job per beam entry
    (its remaining capacity, chosen value/weight, and the LP profile of the later items as
    context) goes out in one ``dispatch`` call; every returned candidate extends its entry,
    and the extensions are ranked by value so far plus the LP value of the later items in
    the capacity left, keeping the best ``beam_width`` distinct selections.

    With ``settings.branches`` > 1 the same beam search runs once per block order
    (:func:`branch_orders`: the configured order, then by weight, by value, by density, and
    seeded shuffles), the branches at once, so that their block jobs spread over the nodes;
    the best branch's answer is returned and ``branches`` lists each one. Strongly correlated
    instances (every value/weight ratio alike) are where one order alone misses the optimum.
    A checkpoint then holds finished branches (resumed ones are not searched again).

    Returns:
        ``selected``, ``total_value``, ``total_weight``, ``capacity``, ``optimum_value``,
        ``optimum_selected``, ``greedy_value``, ``ratio_to_optimum``, ``ratio_to_greedy``,
        ``used_greedy_fallback``, ``blocks`` (one per block job executed), ``timing``,
        ``settings``, ``seed``; with branches also ``branches`` (``branch``, ``order``,
        ``total_value``, ``blocks``) and ``best_branch``.

    Raises:
        InvalidInput: bad instance or settings. ExecutionFailed: a block job without an
            accepted result, or a block with no feasible candidate.
    """
    started = time.perf_counter()
    vals, wts, cap = validate_knapsack(values, weights, capacity)
    t0 = time.perf_counter()
    optimum = knapsack_dp(values, weights, capacity)
    greedy = knapsack_greedy(values, weights, capacity)
    classical_s = time.perf_counter() - t0
    if settings.optimizer == "distributed" and schedule_dispatch is None:
        raise InvalidInput("optimizer 'distributed' needs a schedule dispatch (qaoa_schedules).")
    tag = _run_tag("knapsack", vals.tolist(), wts.tolist(), cap, seed, settings.tag_dict())
    search = partial(
        _search_blocks,
        vals,
        wts,
        cap,
        settings=settings,
        seed=seed,
        dispatch=dispatch,
        schedule_dispatch=schedule_dispatch,
        optimum_value=optimum.value,
    )
    orders = branch_orders(settings, seed)
    if len(orders) == 1:
        order, shuffle_seed = orders[0]
        found = search(
            order=order,
            shuffle_seed=shuffle_seed,
            tag=tag,
            on_progress=on_progress,
            checkpoint=checkpoint,
            resume=resume,
        )
        branches: list[_Found] = [found]
    else:
        branches = _search_branches(search, orders, tag, on_progress, checkpoint, resume)
    best_index = max(range(len(branches)), key=lambda i: (branches[i].best.value, -i))
    found = branches[best_index]
    best = found.best
    selected: list[int] = list(best.selected)
    total_v, total_w = best.value, best.weight
    repair: dict[str, Any] | None = None
    if settings.repair == "swap":
        t0 = time.perf_counter()
        repaired, moves = knapsack_swap_repair(values, weights, capacity, selected)
        classical_s += time.perf_counter() - t0
        repair = {
            "kind": "swap",
            "value_before": total_v,
            "value_after": repaired.value,
            "moves": moves,
        }
        selected, total_v, total_w = repaired.selected, repaired.value, repaired.weight
    fallback = total_v < greedy.value
    if fallback:
        selected, total_v, total_w = greedy.selected, greedy.value, greedy.weight
    # Branches ran side by side: the slowest one's dispatch time is the run's critical path.
    ledger = max((b.ledger for b in branches), key=lambda led: led.dispatch_s)
    result = {
        "selected": selected,
        "total_value": total_v,
        "total_weight": total_w,
        "capacity": int(capacity),
        "optimum_value": optimum.value,
        "optimum_selected": optimum.selected,
        "greedy_value": greedy.value,
        "qaoa_value": best.value,
        "ratio_to_optimum": total_v / optimum.value if optimum.value else 1.0,
        "ratio_to_greedy": total_v / greedy.value if greedy.value else 1.0,
        "used_greedy_fallback": fallback,
        "blocks": [entry for b in branches for entry in b.block_log],
        "block_items": found.blocks,
        "timing": _timing(started, ledger, sum(b.qaoa_s for b in branches), classical_s),
        "settings": settings.as_dict(),
        "seed": seed,
        "beam_widths": found.widths,
        "backtracks": found.backtracked,
    }
    if repair is not None:
        # The QAOA search's own answer stays visible beside what the classical repair added.
        result["value_before_repair"] = repair["value_before"]
        result["value_after_repair"] = repair["value_after"]
        result["repair"] = repair
    if len(branches) > 1:
        result["best_branch"] = best_index
        result["branches"] = [
            {
                "branch": i,
                "order": b.order,
                "total_value": b.best.value,
                "ratio_to_optimum": b.best.value / optimum.value if optimum.value else 1.0,
                "blocks": len(b.block_log),
            }
            for i, b in enumerate(branches)
        ]
    return result


#: Orders of the extra branches, after the configured one (shuffles follow these).
BRANCH_ORDERS = ("weight", "value", "density", "index")
MAX_BRANCHES = 8


def branch_orders(settings: KnapsackSettings, seed: int) -> list[tuple[str, int]]:
    """``(order, shuffle_seed)`` of each branch: the configured order first, then the
    other fixed orders, then seeded shuffles, ``settings.branches`` in all."""
    orders = [settings.order, *(o for o in BRANCH_ORDERS if o != settings.order)]
    picked = [(o, 0) for o in orders if o != "shuffle"][: settings.branches]
    shuffle = 0
    while len(picked) < settings.branches:
        shuffle += 1
        picked.append(("shuffle", _seed_for(seed, 1 << 21, shuffle)))
    if settings.order == "shuffle":
        picked[0] = ("shuffle", _seed_for(seed, 1 << 21, 0))
    return picked


@dataclass
class _Found:
    """One branch's search: its best entry, what its blocks did, and its order."""

    best: _Entry
    block_log: list[dict[str, Any]]
    qaoa_s: float
    ledger: _Ledger
    blocks: list[list[int]]
    order: str
    widths: list[int] = field(default_factory=list)
    backtracked: list[dict[str, Any]] = field(default_factory=list)


def _search_branches(
    search: Callable[..., _Found],
    orders: list[tuple[str, int]],
    tag: str,
    on_progress: Progress | None,
    checkpoint: Callable[[dict[str, Any]], None] | None,
    resume: Mapping[str, Any] | None,
) -> list[_Found]:
    """Every branch at once (driver threads: each waits on the mesh most of the time)."""
    done: dict[int, _Found] = {}
    if resume is not None and resume.get("tag") == tag:
        for key, saved in dict(resume.get("branches_done", {})).items():
            done[int(key)] = _Found(
                best=_Entry(**{**saved["best"], "selected": tuple(saved["best"]["selected"])}),
                block_log=list(saved["block_log"]),
                qaoa_s=float(saved["qaoa_s"]),
                ledger=_Ledger(),
                blocks=[list(b) for b in saved["blocks"]],
                order=str(saved["order"]),
                widths=[int(w) for w in saved.get("widths", [])],
                backtracked=[dict(x) for x in saved.get("backtracked", [])],
            )
    lock = threading.Lock()
    blocks_done = [0] * len(orders)
    blocks_total = [0] * len(orders)

    def progress(index: int, p: dict[str, Any]) -> None:
        if on_progress is None:
            return
        with lock:
            blocks_done[index] = p["block_index"] + 1
            blocks_total[index] = p["blocks_total"]
            total = max(sum(blocks_total), 1) if all(blocks_total) else 0
            merged = {**p, "block_index": sum(blocks_done) - 1, "blocks_total": total}
        if total:
            on_progress(merged)

    def run(index: int) -> None:
        order, shuffle_seed = orders[index]
        found = search(
            order=order,
            shuffle_seed=shuffle_seed,
            tag=f"{tag}-o{index}",
            on_progress=partial(progress, index),
            checkpoint=None,
            resume=None,
        )
        with lock:
            done[index] = found
            snapshot = {"tag": tag, "branches_done": {str(i): _saved(f) for i, f in done.items()}}
        if checkpoint is not None:
            checkpoint(snapshot)

    todo = [i for i in range(len(orders)) if i not in done]
    with ThreadPoolExecutor(max(1, len(todo)), thread_name_prefix="qmesh-branch") as pool:
        errors = [f.exception() for f in [pool.submit(run, i) for i in todo]]
    failed = next((e for e in errors if e is not None), None)
    if failed is not None:
        raise failed
    return [done[i] for i in range(len(orders))]


def _saved(found: _Found) -> dict[str, Any]:
    return {
        "best": {
            "selected": list(found.best.selected),
            "value": found.best.value,
            "weight": found.best.weight,
            "score": found.best.score,
        },
        "block_log": [{k: v for k, v in e.items() if k != "candidates"} for e in found.block_log],
        "qaoa_s": found.qaoa_s,
        "blocks": found.blocks,
        "order": found.order,
        "widths": found.widths,
        "backtracked": found.backtracked,
    }


def _search_blocks(
    vals: Any,
    wts: Any,
    cap: int,
    *,
    settings: KnapsackSettings,
    seed: int,
    dispatch: Dispatch,
    schedule_dispatch: Dispatch | None,
    optimum_value: int,
    order: str,
    shuffle_seed: int,
    tag: str,
    on_progress: Progress | None,
    checkpoint: Callable[[dict[str, Any]], None] | None,
    resume: Mapping[str, Any] | None,
) -> _Found:
    """The beam search over one block order."""
    blocks = decompose(
        vals.tolist(),
        wts.tolist(),
        block_size=settings.block_size,
        order=order,  # type: ignore[arg-type]  # validated by KnapsackSettings
        shuffle_seed=shuffle_seed,
    )
    qaoa = {
        "p": settings.p,
        "optimizer": settings.optimizer,
        "grid_size": settings.grid_size,
        "maxiter": settings.maxiter,
        "shots": settings.shots,
    }
    ledger = _Ledger()
    beam = [_Entry(selected=(), value=0, weight=0, score=0.0)]
    # Per finished block, the ranked extensions that missed the beam: where a dead end
    # steps back to.
    reserves: dict[int, list[_Entry]] = {}
    backtracked: list[dict[str, Any]] = []
    widths: list[int] = []
    block_log: list[dict[str, Any]] = []
    qaoa_s = 0.0
    b = 0
    if resume is not None and resume.get("tag") == tag:
        b = int(resume["next_block"])
        beam = [_entry(e) for e in resume["beam"]]
        reserves = {int(k): [_entry(e) for e in v] for k, v in resume.get("reserves", {}).items()}
        backtracked = [dict(x) for x in resume.get("backtracked", [])]
        widths = [int(w) for w in resume.get("widths", [])]
        block_log = [dict(entry) for entry in resume["block_log"]]
        qaoa_s = float(resume["qaoa_s"])
    while b < len(blocks):
        items = blocks[b]
        later = [i for block in blocks[b + 1 :] for i in block]
        profile = future_profile(vals[later].tolist(), wts[later].tolist()) if later else None
        attempt = f"-r{len(backtracked)}" if backtracked else ""
        jobs = [
            BlockJob(
                job_id=f"qk-{tag}-b{b}-e{e}{attempt}",
                block_index=b,
                item_indices=list(items),
                values=[float(v) for v in vals[items]],
                weights=[float(w) for w in wts[items]],
                context={
                    "remaining_capacity": cap - entry.weight,
                    "chosen_value": entry.value,
                    "chosen_weight": entry.weight,
                    "penalty": None,
                    "future": profile,
                },
                qaoa=qaoa,
                random_seed=_seed_for(seed, b, e),
                job_version=1,
                top_k=settings.top_k,
                beam_entry=e,
            )
            for e, entry in enumerate(beam)
        ]
        if settings.optimizer == "distributed":
            assert schedule_dispatch is not None
            jobs = _with_distributed_angles(
                jobs,
                settings=settings,
                seed=_seed_for(seed, b, 1 << 20),
                dispatch=schedule_dispatch,
                ledger=ledger,
            )
        group = max(1, settings.compound_size)
        results = _run_jobs(jobs, dispatch=dispatch, group=group, ledger=ledger)
        extended: dict[tuple[int, ...], _Entry] = {}
        future_value = lp_curve(profile)
        for job in jobs:
            result = results[job.job_id]
            block_log.append(_block_entry(result))
            qaoa_s += float(result.get("diagnostics", {}).get("seconds", 0.0))
            entry = beam[job.beam_entry]
            for cand in result.get("candidates", []):
                bits = cand.get("bits", [])
                if len(bits) != len(items):
                    continue
                chosen = [items[j] for j, bit in enumerate(bits) if bit]
                weight = entry.weight + int(wts[chosen].sum())
                if weight > cap:
                    continue
                value = entry.value + int(vals[chosen].sum())
                key = tuple(sorted((*entry.selected, *chosen)))
                score = value + future_value(float(cap - weight))
                if key not in extended:
                    extended[key] = _Entry(key, value, weight, score)
        if not extended:
            back = _step_back(reserves, b, len(backtracked), settings)
            if back is None:
                raise ExecutionFailed(
                    f"Block {b}: no feasible candidate came back"
                    + (f" (after {len(backtracked)} backtracks)." if backtracked else "."),
                    details={"block_index": b, "backtracks": len(backtracked)},
                )
            b_back, beam = back
            backtracked.append({"dead_end": b, "resumed_at": b_back, "entries": len(beam)})
            widths = widths[:b_back]
            b = b_back
            continue
        ranked = sorted(extended.values(), key=lambda x: (-x.score, -x.value, x.weight, x.selected))
        later_weight = int(wts[later].sum()) if later else 0
        width = adaptive_width(settings, ranked, cap, later_weight)
        beam, reserves[b] = ranked[:width], ranked[width : width + settings.beam_width]
        widths.append(width)
        if checkpoint is not None:
            checkpoint(
                {
                    "tag": tag,
                    "next_block": b + 1,
                    "beam": [_saved_entry(x) for x in beam],
                    "reserves": {str(k): [_saved_entry(x) for x in v] for k, v in reserves.items()},
                    "backtracked": backtracked,
                    "widths": widths,
                    # Candidates are the bulk of the log and only informative: not kept here.
                    "block_log": [
                        {k: v for k, v in e.items() if k != "candidates"} for e in block_log
                    ],
                    "qaoa_s": qaoa_s,
                }
            )
        if on_progress is not None:
            on_progress(
                {
                    "block_index": b,
                    "blocks_total": len(blocks),
                    "best_value": max(x.value for x in beam),
                    "beam_values": [x.value for x in beam],
                    "beam_width": width,
                    "backtracks": len(backtracked),
                    "optimum_value": optimum_value,
                }
            )
        b += 1
    best = max(beam, key=lambda x: (x.value, -x.weight, tuple(-i for i in x.selected)))
    return _Found(best, block_log, qaoa_s, ledger, blocks, order, widths, backtracked)


def adaptive_width(
    settings: KnapsackSettings, ranked: Sequence[_Entry], cap: int, later_weight: int
) -> int:
    """The beam's width for the next block.

    Fixed at ``beam_width`` unless ``beam_adaptive``. Adaptive, it follows the slack: the
    capacity the beam's entries have left over the weight of every later item. Where all of
    it still fits (slack >= 1) taking everything is best and one entry is enough; where
    the capacity binds, the choices that decide the answer are made, and the beam widens,
    up to twice ``beam_width`` at half the weight fitting or less (at most
    ``MAX_ADAPTIVE_WIDTH``)."""
    if not settings.beam_adaptive or later_weight <= 0 or not ranked:
        return settings.beam_width
    head = ranked[: settings.beam_width]
    slack = min(cap - e.weight for e in head) / later_weight
    if slack >= 1.0:
        return 1
    factor = 1.0 + min(1.0, 2.0 * (1.0 - slack))
    return max(1, min(MAX_ADAPTIVE_WIDTH, math.ceil(settings.beam_width * factor)))


def _step_back(
    reserves: dict[int, list[_Entry]], dead_end: int, done: int, settings: KnapsackSettings
) -> tuple[int, list[_Entry]] | None:
    """Where a dead end at block ``dead_end`` resumes: the latest earlier block with pruned
    alternatives left, which become the beam again (taken from the reserve); later reserves
    descend from the abandoned path and are dropped. None: no backtrack left."""
    if done >= settings.backtracks:
        return None
    for k in sorted((k for k in reserves if k < dead_end), reverse=True):
        if reserves[k]:
            beam = reserves[k][: settings.beam_width]
            reserves[k] = reserves[k][settings.beam_width :]
            for later in [j for j in reserves if j > k]:
                del reserves[later]
            return k + 1, beam
    return None


def _entry(saved: Mapping[str, Any]) -> _Entry:
    return _Entry(
        tuple(saved["selected"]), int(saved["value"]), int(saved["weight"]), float(saved["score"])
    )


def _saved_entry(entry: _Entry) -> dict[str, Any]:
    return {
        "selected": list(entry.selected),
        "value": entry.value,
        "weight": entry.weight,
        "score": entry.score,
    }


def solve_portfolio(
    expected_returns: list[float],
    covariance: list[list[float]],
    budget: int,
    risk_aversion: float,
    *,
    dispatch: Dispatch,
    seed: int,
    settings: PortfolioSettings | None = None,
    assets: list[str] | None = None,
) -> dict[str, Any]:
    """Pick exactly ``budget`` assets maximising ``mu^T x - q x^T Sigma x`` with one QAOA job.

    Returns ``selected`` (indices), ``selected_assets`` (names when given), ``objective``,
    ``optimum_objective`` and ``optimum_selected`` (brute force), ``gap``, ``is_optimal``,
    ``node_id``, ``blocks``, ``diagnostics``, ``timing``.
    """
    started = time.perf_counter()
    settings = settings or PortfolioSettings()
    mu, sigma, k, q = validate_portfolio(expected_returns, covariance, budget, risk_aversion)
    if assets is not None and len(assets) != mu.size:
        raise InvalidInput(f"assets must name {mu.size} assets. Instead, got {len(assets)}.")
    t0 = time.perf_counter()
    optimum = portfolio_brute_force(mu.tolist(), sigma.tolist(), k, q)
    classical_s = time.perf_counter() - t0
    tag = _run_tag("portfolio", mu.tolist(), sigma.tolist(), k, q, seed)
    job = BlockJob(
        job_id=f"qp-{tag}",
        block_index=0,
        item_indices=list(range(mu.size)),
        values=mu.tolist(),
        weights=[1.0] * mu.size,
        context={
            "covariance": sigma.tolist(),
            "budget": k,
            "risk_aversion": q,
            "encoding": settings.encoding,
        },
        qaoa={
            "p": settings.p,
            "optimizer": settings.optimizer,
            "grid_size": settings.grid_size,
            "maxiter": settings.maxiter,
            "shots": settings.shots,
        },
        random_seed=_seed_for(seed, 0, 0),
        top_k=settings.top_k,
        problem="portfolio",
    )
    ledger = _Ledger()
    result = _run_jobs([job], dispatch=dispatch, group=1, ledger=ledger)[job.job_id]
    best_sel: list[int] = []
    best_obj = -np.inf
    for cand in result.get("candidates", []):
        chosen = [j for j, bit in enumerate(cand.get("bits", [])) if bit]
        if len(chosen) != k or len(cand.get("bits", [])) != mu.size:
            continue
        obj = portfolio_objective(mu, sigma, chosen, q)
        if obj > best_obj:
            best_sel, best_obj = chosen, obj
    if not best_sel:
        raise ExecutionFailed("The portfolio job returned no selection of the right size.")
    diag = result.get("diagnostics", {})
    return {
        "selected": best_sel,
        "selected_assets": [assets[i] for i in best_sel] if assets else None,
        "objective": best_obj,
        "optimum_objective": optimum.objective,
        "optimum_selected": optimum.selected,
        # Other selections as good as the optimum: a different answer may still be optimal.
        "optimum_ties": [[assets[i] for i in tie] if assets else list(tie) for tie in optimum.ties],
        "gap": optimum.objective - best_obj,
        "is_optimal": bool(optimum.objective - best_obj <= 1e-9 * max(1.0, abs(best_obj))),
        "node_id": result.get("node_id"),
        "blocks": [_block_entry(result)],
        "diagnostics": diag,
        "encoding": settings.encoding,
        "timing": _timing(started, ledger, float(diag.get("seconds", 0.0)), classical_s),
        "seed": seed,
    }


def search_parameters(
    problem: Mapping[str, Any],
    *,
    dispatch: Dispatch,
    n_schedules: int,
    seed: int,
    p: int = 1,
    jobs: int = 4,
    refine_rounds: int = 1,
) -> dict[str, Any]:
    """Distributed angle search: random schedules split over ``jobs`` payloads, then
    ``refine_rounds`` rounds of perturbations around the best (half as many, narrower).

    ``problem``: a ``BlockJob.to_dict()`` or ``{"qubo": {"matrix": ..., "offset"?}}``; the
    payloads go to ``qaoa_schedules``. Returns ``best_schedule``, ``best_gammas``,
    ``best_betas``, ``best_energy``, ``evaluations``, ``rounds`` (per round: best energy and
    the jobs with ``node_id``, ``seconds``), ``timing``.
    """
    if not 1 <= n_schedules <= 20_000:
        raise InvalidInput(f"n_schedules must be in [1, 20000]. Instead, got {n_schedules}.")
    if not 1 <= jobs <= 64 or not 0 <= refine_rounds <= 5 or not 1 <= p <= MAX_P:
        raise InvalidInput(f"Need 1 <= jobs <= 64, 0 <= refine_rounds <= 5, 1 <= p <= {MAX_P}.")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    low = np.array([GAMMA_RANGE[0]] * p + [BETA_RANGE[0]] * p)
    high = np.array([GAMMA_RANGE[1]] * p + [BETA_RANGE[1]] * p)
    batch = rng.uniform(low, high, size=(n_schedules, 2 * p))
    best_energy, best_schedule = np.inf, batch[0].tolist()
    rounds: list[dict[str, Any]] = []
    evaluations, dispatch_s, width = 0, 0.0, 0.25
    for r in range(refine_rounds + 1):
        if r:
            count = max(1, n_schedules // (2**r))
            noise = rng.normal(scale=width * (high - low) / (2**r), size=(count, 2 * p))
            batch = np.clip(np.asarray(best_schedule) + noise, low, high)
        chunks = [c for c in np.array_split(batch, min(jobs, len(batch))) if len(c)]
        payloads = [
            {**problem, "schedules": c.tolist(), "batch_id": f"r{r}-j{j}"}
            for j, c in enumerate(chunks)
        ]
        t0 = time.perf_counter()
        raw = dispatch(payloads)
        dispatch_s += time.perf_counter() - t0
        seen: dict[str, dict[str, Any]] = {}
        wanted = {str(pl["batch_id"]): pl for pl in payloads}
        for res in raw:
            bid = str(res.get("batch_id")) if isinstance(res, Mapping) else ""
            if bid in wanted and bid not in seen:
                seen[bid] = dict(res)
        if not seen:
            raise ExecutionFailed(f"Angle search round {r}: no batch came back.")
        for res in seen.values():
            evaluations += int(res.get("evaluations", 0))
            if float(res["best_energy"]) < best_energy:
                best_energy = float(res["best_energy"])
                best_schedule = [float(x) for x in res["best_schedule"]]
        rounds.append(
            {
                "round": r,
                "schedules": len(batch),
                "best_energy": best_energy,
                "missing_batches": sorted(set(wanted) - set(seen)),
                "jobs": [
                    {
                        "batch_id": bid,
                        "node_id": res.get("node_id"),
                        "seconds": res.get("seconds"),
                        "evaluations": res.get("evaluations"),
                    }
                    for bid, res in seen.items()
                ],
            }
        )
    return {
        "best_schedule": best_schedule,
        "best_gammas": best_schedule[:p],
        "best_betas": best_schedule[p:],
        "best_energy": best_energy,
        "evaluations": evaluations,
        "rounds": rounds,
        "timing": {"wall_s": time.perf_counter() - started, "dispatch_s": dispatch_s},
        "seed": seed,
    }
