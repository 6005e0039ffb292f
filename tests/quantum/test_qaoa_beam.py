"""Beam search over QAOA blocks, portfolio selection and distributed angle search, with an
in-process blocking dispatch that calls the QAOA worker functions directly (a local stand-in for
transport: fake node ids "n0", "n1" round-robin)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from quantum_mesh.errors import ExecutionFailed, InvalidInput
from quantum_mesh.quantum.qaoa import beam, classical, engine, worker
from quantum_mesh.quantum.qaoa.solver import qubo_problem

#: A QAOA worker function: ``(params, *, peer_id, noise_level) -> result``.
Handler = Callable[..., dict[str, Any]]


def local_dispatch(handler: Handler, *, nodes: int = 2) -> beam.Dispatch:
    peers = [f"n{i}" for i in range(nodes)]
    counter = [0]

    def dispatch(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for payload in payloads:
            peer = peers[counter[0] % nodes]
            counter[0] += 1
            result = handler(copy.deepcopy(payload), peer_id=peer, noise_level=0.0)
            out.append({**result, "node_id": peer})
        return out

    return dispatch


def recording_dispatch(sent: list[Any], key: str) -> beam.Dispatch:
    """A local dispatch that records ``payload[key]`` of every payload it is given."""
    inner = local_dispatch(worker.solve_block)

    def dispatch(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sent.extend(p[key] for p in payloads)
        return inner(payloads)

    return dispatch


def knapsack_instance(seed: int, n: int = 60) -> tuple[list[int], list[int], int]:
    rng = np.random.default_rng(seed)
    weights = rng.integers(10, 100, n)
    values = (weights * rng.uniform(0.6, 1.6, n) + rng.integers(0, 20, n)).astype(int)
    return values.tolist(), weights.tolist(), int(weights.sum() * 0.4)


def _answer(result: dict[str, Any]) -> tuple[Any, ...]:
    return (result["selected"], result["total_value"], result["total_weight"])


@pytest.fixture(scope="module")
def baseline() -> dict[str, Any]:
    values, weights, capacity = knapsack_instance(0)
    return beam.solve_knapsack(
        values,
        weights,
        capacity,
        dispatch=local_dispatch(worker.solve_block),
        settings=beam.KnapsackSettings(),
        seed=0,
    )


def test_sixty_items_feasible_beats_greedy_and_near_optimum(baseline: dict[str, Any]) -> None:
    values, weights, capacity = knapsack_instance(0)
    result = baseline
    assert result["total_weight"] == sum(weights[i] for i in result["selected"]) <= capacity
    assert result["total_value"] == sum(values[i] for i in result["selected"])
    assert result["optimum_value"] == classical.knapsack_dp(values, weights, capacity).value
    assert not result["used_greedy_fallback"]
    assert result["total_value"] >= result["greedy_value"]
    assert result["ratio_to_optimum"] >= 0.97
    blocks_total = len(result["block_items"])
    assert {b["block_index"] for b in result["blocks"]} == set(range(blocks_total))
    assert {b["node_id"] for b in result["blocks"]} == {"n0", "n1"}
    assert result["timing"]["qaoa_s"] > 0
    assert sorted(i for block in result["block_items"] for i in block) == list(range(60))


def _zeroed(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The result's candidates with every bit cleared (a different, worse answer)."""
    return [{**c, "bits": [0] * len(c["bits"])} for c in result["candidates"]]


def test_duplicated_and_stale_results_do_not_change_answer(baseline: dict[str, Any]) -> None:
    values, weights, capacity = knapsack_instance(0)
    inner = local_dispatch(worker.solve_block)
    sent: list[str] = []

    def unreliable(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sent.extend(p["job_id"] for p in payloads)
        out: list[dict[str, Any]] = []
        for r in inner(payloads):
            zeroed = _zeroed(r)
            stale = {**r, "job_version": r["job_version"] - 1, "candidates": zeroed}
            newer = {**r, "job_version": r["job_version"] + 1, "candidates": zeroed}
            foreign = {**r, "job_id": "someone-else", "candidates": zeroed}
            other_entry = {**r, "beam_entry": r["beam_entry"] + 1, "candidates": zeroed}
            # Stale copies come before the real result, a differing duplicate after it.
            late_copy = {**copy.deepcopy(r), "candidates": zeroed}
            out += [stale, newer, foreign, other_entry, r, late_copy, copy.deepcopy(r)]
        return out

    progress: list[dict[str, Any]] = []
    result = beam.solve_knapsack(
        values,
        weights,
        capacity,
        dispatch=unreliable,
        settings=beam.KnapsackSettings(),
        seed=0,
        on_progress=progress.append,
    )
    assert _answer(result) == _answer(baseline)
    timing = result["timing"]
    jobs = len(result["blocks"])
    assert timing["duplicates_ignored"] == 2 * jobs
    assert timing["stale_ignored"] == 4 * jobs
    assert timing["jobs_resent"] == 0
    # Each job was dispatched exactly once, one dispatch call per block.
    assert sorted(sent) == sorted(b["job_id"] for b in result["blocks"])
    assert len(set(sent)) == len(sent)
    assert timing["dispatch_rounds"] == len(result["block_items"])
    assert all(b["job_version"] == 1 for b in result["blocks"])
    assert len(progress) == len(result["block_items"])


def test_a_job_without_an_accepted_result_fails_the_run() -> None:
    values, weights, capacity = knapsack_instance(0)
    inner = local_dispatch(worker.solve_block)
    calls = [0]
    lost: list[str] = []

    def lossy(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calls[0] += 1
        results = inner(payloads)
        if calls[0] == 2:  # the second block: one result lost, another only stale
            lost.extend(r["job_id"] for r in results[:2])
            return [
                {**results[1], "job_version": results[1]["job_version"] - 1},
                *results[2:],
            ]
        return results

    with pytest.raises(ExecutionFailed) as info:
        beam.solve_knapsack(
            values,
            weights,
            capacity,
            dispatch=lossy,
            settings=beam.KnapsackSettings(),
            seed=0,
        )
    assert info.value.details["job_ids"] == sorted(lost)
    assert calls[0] == 2  # nothing was re-sent

    with pytest.raises(ExecutionFailed):
        beam.solve_portfolio(
            [0.1, 0.2, 0.15, 0.05],
            np.eye(4).tolist(),
            2,
            0.5,
            dispatch=lambda payloads: [],
            seed=0,
        )


def test_max_attempts_is_still_accepted_but_ignored(baseline: dict[str, Any]) -> None:
    values, weights, capacity = knapsack_instance(0)
    settings = beam.KnapsackSettings.from_params({"max_attempts": 1, "unknown": True})
    assert settings.max_attempts == 1
    with pytest.raises(InvalidInput):
        beam.KnapsackSettings.from_params({"max_attempts": 0})
    result = beam.solve_knapsack(
        values,
        weights,
        capacity,
        dispatch=local_dispatch(worker.solve_block),
        settings=settings,
        seed=0,
    )
    assert _answer(result) == _answer(baseline)


def test_compound_jobs_give_the_same_answer(baseline: dict[str, Any]) -> None:
    values, weights, capacity = knapsack_instance(0)
    result = beam.solve_knapsack(
        values,
        weights,
        capacity,
        dispatch=local_dispatch(worker.solve_block),
        settings=beam.KnapsackSettings(compound_size=4),
        seed=0,
    )
    assert _answer(result) == _answer(baseline)
    assert result["timing"]["dispatch_rounds"] == len(result["block_items"])


def test_portfolio_ten_assets_reaches_brute_force_optimum() -> None:
    rng = np.random.default_rng(3)
    n, k, q = 10, 4, 0.5
    mu = rng.uniform(0.02, 0.2, n)
    a = rng.normal(size=(n, n)) * 0.1
    sigma = a @ a.T / n + np.diag(rng.uniform(0.001, 0.01, n))
    names = [f"A{i}" for i in range(n)]
    result = beam.solve_portfolio(
        mu.tolist(),
        sigma.tolist(),
        k,
        q,
        dispatch=local_dispatch(worker.solve_block),
        seed=1,
        assets=names,
    )
    optimum = classical.portfolio_brute_force(mu.tolist(), sigma.tolist(), k, q)
    assert result["selected"] == optimum.selected
    assert result["objective"] == pytest.approx(optimum.objective, abs=1e-12)
    assert result["is_optimal"]
    assert result["selected_assets"] == [names[i] for i in optimum.selected]
    # the XY mixer keeps all weight on the budget; QAOA concentrates on the optimum
    assert result["diagnostics"]["feasible_probability"] == pytest.approx(1.0, abs=1e-9)
    assert result["diagnostics"]["ground_state_probability"] > 1 / 210


def test_search_parameters_over_several_jobs() -> None:
    rng = np.random.default_rng(5)
    matrix = rng.normal(size=(8, 8))
    problem = {"qubo": {"matrix": matrix.tolist(), "offset": 1.0}}
    result = beam.search_parameters(
        problem,
        dispatch=local_dispatch(worker.evaluate_schedules),
        n_schedules=64,
        seed=2,
        p=2,
        jobs=4,
    )
    assert len(result["rounds"]) == 2
    assert {j["node_id"] for j in result["rounds"][0]["jobs"]} == {"n0", "n1"}
    assert result["evaluations"] == 64 + 32
    assert result["rounds"][1]["best_energy"] <= result["rounds"][0]["best_energy"]
    # independent check: the reported energy is the engine's for that schedule
    built = qubo_problem(matrix.tolist(), offset=1.0)
    state = engine.evolve(
        built.normalised, gammas=result["best_gammas"], betas=result["best_betas"]
    )
    assert result["best_energy"] == pytest.approx(
        float(engine.probabilities(state) @ built.energies), abs=1e-9
    )
    assert result["best_energy"] < float(built.energies.mean())


def test_resuming_from_a_checkpoint_skips_finished_blocks(baseline: dict[str, Any]) -> None:
    values, weights, capacity = knapsack_instance(0)
    snapshots: list[dict[str, Any]] = []
    full = beam.solve_knapsack(
        values,
        weights,
        capacity,
        dispatch=local_dispatch(worker.solve_block),
        settings=beam.KnapsackSettings(),
        seed=0,
        checkpoint=snapshots.append,
    )
    assert _answer(full) == _answer(baseline)
    assert [s["next_block"] for s in snapshots] == list(range(1, len(full["block_items"]) + 1))
    resume_at = snapshots[1]  # as if the coordinator died after block 1
    sent_blocks: list[int] = []
    counting = recording_dispatch(sent_blocks, "block_index")

    resumed = beam.solve_knapsack(
        values,
        weights,
        capacity,
        dispatch=counting,
        settings=beam.KnapsackSettings(),
        seed=0,
        resume=copy.deepcopy(resume_at),
    )
    assert _answer(resumed) == _answer(full)
    assert min(sent_blocks) == 2  # blocks 0 and 1 were not sent again
    # A snapshot of another run (other seed) is ignored: everything is solved afresh.
    sent_blocks.clear()
    beam.solve_knapsack(
        values,
        weights,
        capacity,
        dispatch=counting,
        settings=beam.KnapsackSettings(),
        seed=1,
        resume=copy.deepcopy(resume_at),
    )
    assert min(sent_blocks) == 0


def test_distributed_angle_search_per_block() -> None:
    values, weights, capacity = knapsack_instance(3)
    schedule_payloads: list[dict[str, Any]] = []
    inner = local_dispatch(worker.evaluate_schedules, nodes=3)

    def schedules(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        schedule_payloads.extend(payloads)
        return inner(payloads)

    settings = beam.KnapsackSettings(optimizer="distributed")
    result = beam.solve_knapsack(
        values,
        weights,
        capacity,
        dispatch=local_dispatch(worker.solve_block),
        schedule_dispatch=schedules,
        settings=settings,
        seed=3,
    )
    assert result["total_weight"] <= capacity
    assert result["total_value"] >= result["greedy_value"]
    assert result["total_value"] >= 0.97 * result["optimum_value"]
    blocks = len(result["block_items"])
    # Each block's schedules were split over several payloads (several nodes at once).
    assert len(schedule_payloads) >= 2 * blocks
    assert all(b["candidates"] for b in result["blocks"])
    with pytest.raises(InvalidInput):
        beam.solve_knapsack(
            values,
            weights,
            capacity,
            dispatch=local_dispatch(worker.solve_block),
            settings=settings,
            seed=3,
        )


def correlated_instance(seed: int, n: int) -> tuple[list[int], list[int], int]:
    """Strongly correlated: value = weight + 10, capacity 30 % of the total weight. Every
    value/weight ratio is alike, so the density order says little."""
    weights = np.random.default_rng(seed).integers(10, 101, size=n)
    return (weights + 10).tolist(), weights.tolist(), int(weights.sum() * 0.3)


def test_branches_over_block_orders_reach_the_optimum_on_correlated_items() -> None:
    values, weights, capacity = correlated_instance(2, 60)
    one = beam.solve_knapsack(
        values, weights, capacity,
        dispatch=local_dispatch(worker.solve_block),
        settings=beam.KnapsackSettings(), seed=2,
    )  # fmt: skip
    four = beam.solve_knapsack(
        values, weights, capacity,
        dispatch=local_dispatch(worker.solve_block),
        settings=beam.KnapsackSettings(branches=4), seed=2,
    )  # fmt: skip
    assert one["ratio_to_optimum"] < 0.99  # the density order alone falls short here
    assert four["ratio_to_optimum"] >= 0.99 and four["total_value"] > four["greedy_value"]
    assert sum(weights[i] for i in four["selected"]) == four["total_weight"] <= capacity
    assert [b["order"] for b in four["branches"]] == ["density", "weight", "value", "index"]
    assert four["branches"][0]["total_value"] == one["qaoa_value"]  # branch 0 is the 1-order run
    best = four["branches"][four["best_branch"]]
    assert (
        best["total_value"] == four["qaoa_value"] == max(b["total_value"] for b in four["branches"])
    )
    assert len(four["blocks"]) == sum(b["blocks"] for b in four["branches"])


def test_resuming_branches_skips_the_finished_ones() -> None:
    values, weights, capacity = correlated_instance(5, 24)
    settings = beam.KnapsackSettings(branches=3, block_size=8)
    snapshots: list[dict[str, Any]] = []
    full = beam.solve_knapsack(
        values, weights, capacity,
        dispatch=local_dispatch(worker.solve_block),
        settings=settings, seed=5, checkpoint=snapshots.append,
    )  # fmt: skip
    assert [len(s["branches_done"]) for s in snapshots] == [1, 2, 3]
    sent: list[str] = []
    counting = recording_dispatch(sent, "job_id")

    resumed = beam.solve_knapsack(
        values, weights, capacity,
        dispatch=counting, settings=settings, seed=5, resume=copy.deepcopy(snapshots[1]),
    )  # fmt: skip
    assert _answer(resumed) == _answer(full)
    assert resumed["branches"] == full["branches"]
    finished = {f"-o{i}-" for i in map(int, snapshots[1]["branches_done"])}
    assert sent and not any(tag in job for job in sent for tag in finished)


def test_branch_orders_are_distinct_and_start_with_the_configured_one() -> None:
    orders = beam.branch_orders(beam.KnapsackSettings(order="weight", branches=6), seed=1)
    assert [o for o, _ in orders] == ["weight", "value", "density", "index", "shuffle", "shuffle"]
    assert orders[4][1] != orders[5][1]
    with pytest.raises(InvalidInput, match="branches"):
        beam.KnapsackSettings(branches=9)


def test_swap_repair_only_improves_and_stays_feasible() -> None:
    for seed in range(4):
        values, weights, capacity = correlated_instance(seed, 40)
        start = classical.knapsack_greedy(values, weights, capacity)
        repaired, moves = classical.knapsack_swap_repair(values, weights, capacity, start.selected)
        assert repaired.weight == sum(weights[i] for i in repaired.selected) <= capacity
        assert repaired.value == sum(values[i] for i in repaired.selected)
        assert all(m["gain"] > 0 for m in moves)
        assert repaired.value - start.value == sum(m["gain"] for m in moves)
        assert repaired.value <= classical.knapsack_dp(values, weights, capacity).value
    # From nothing, the adds alone fill the knapsack.
    filled, moves = classical.knapsack_swap_repair([5, 4, 3], [4, 3, 2], 5, [])
    assert filled.value == 7 and {m["kind"] for m in moves} <= {"add", "swap", "swap2"}
    with pytest.raises(InvalidInput):
        classical.knapsack_swap_repair([5, 4], [4, 3], 5, [0, 1])


def test_repair_option_reports_the_value_before_and_after() -> None:
    values, weights, capacity = correlated_instance(2, 60)
    result = beam.solve_knapsack(
        values, weights, capacity,
        dispatch=local_dispatch(worker.solve_block),
        settings=beam.KnapsackSettings(repair="swap"), seed=2,
    )  # fmt: skip
    assert result["value_before_repair"] == result["qaoa_value"]
    assert result["value_after_repair"] >= result["value_before_repair"]
    assert result["total_value"] == max(result["value_after_repair"], result["greedy_value"])
    assert sum(weights[i] for i in result["selected"]) == result["total_weight"] <= capacity
    gains = sum(m["gain"] for m in result["repair"]["moves"])
    assert result["value_after_repair"] - result["value_before_repair"] == gains


def starving_dispatch(block: int, times: int) -> tuple[beam.Dispatch, list[int]]:
    """A local dispatch whose results for ``block`` come back with no candidate the first
    ``times`` rounds (a dead end); returns it and the block index of every round."""
    inner = local_dispatch(worker.solve_block)
    rounds: list[int] = []

    def dispatch(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        index = payloads[0]["block_index"]
        rounds.append(index)
        results = inner(payloads)
        if index == block and rounds.count(block) <= times:
            return [{**r, "candidates": []} for r in results]
        return results

    return dispatch, rounds


def test_a_dead_end_backtracks_to_pruned_alternatives() -> None:
    values, weights, capacity = knapsack_instance(4, n=48)
    settings = beam.KnapsackSettings(beam_width=4)
    dispatch, rounds = starving_dispatch(block=2, times=2)
    result = beam.solve_knapsack(
        values, weights, capacity, dispatch=dispatch, settings=settings, seed=4
    )
    # The first dead end takes block 1's alternatives; the second, with those used up,
    # steps back to block 0's.
    assert [(b["dead_end"], b["resumed_at"]) for b in result["backtracks"]] == [(2, 2), (2, 1)]
    assert rounds[:6] == [0, 1, 2, 2, 1, 2]
    assert sum(weights[i] for i in result["selected"]) == result["total_weight"] <= capacity
    assert result["total_value"] >= result["greedy_value"]

    dispatch, _ = starving_dispatch(block=2, times=1)
    with pytest.raises(ExecutionFailed, match="no feasible candidate"):
        beam.solve_knapsack(
            values, weights, capacity, dispatch=dispatch,
            settings=beam.KnapsackSettings(beam_width=4, backtracks=0), seed=4,
        )  # fmt: skip


def test_adaptive_beam_width_follows_the_slack() -> None:
    entry = beam._Entry(selected=(), value=0, weight=60, score=0.0)
    fixed = beam.KnapsackSettings(beam_width=8)
    adaptive = beam.KnapsackSettings(beam_width=8, beam_adaptive=True)
    assert beam.adaptive_width(fixed, [entry], 100, 1000) == 8
    assert beam.adaptive_width(adaptive, [entry], 100, 40) == 1  # everything left fits
    assert beam.adaptive_width(adaptive, [entry], 100, 50) == 12  # 80 % fits: 1.4 times
    assert beam.adaptive_width(adaptive, [entry], 100, 1000) == 16  # tight: twice as wide
    values, weights, capacity = correlated_instance(3, 48)
    result = beam.solve_knapsack(
        values, weights, capacity,
        dispatch=local_dispatch(worker.solve_block),
        settings=adaptive, seed=3,
    )  # fmt: skip
    widths = result["beam_widths"]
    assert len(widths) == len(result["block_items"]) and max(widths) > 8
    assert sum(weights[i] for i in result["selected"]) == result["total_weight"] <= capacity


def test_new_search_settings_are_validated_and_keep_old_run_tags() -> None:
    with pytest.raises(InvalidInput) as bad:
        beam.KnapsackSettings(repair="greedy")
    assert bad.value.details["field"] == "repair"
    with pytest.raises(InvalidInput) as bad:
        beam.KnapsackSettings(backtracks=99)
    assert bad.value.details["field"] == "backtracks"
    with pytest.raises(InvalidInput):
        beam.KnapsackSettings.from_params({"beam_adaptive": "yes"})
    defaults = beam.KnapsackSettings().tag_dict()
    assert not {"beam_adaptive", "backtracks", "repair"} & set(defaults)
    assert beam.KnapsackSettings(repair="swap").tag_dict()["repair"] == "swap"
