"""A discrete-event MODEL of a larger mesh, fitted to measured benchmark runs (SimPy).

What one machine cannot show — 10 to 1,000 nodes — is predicted here, and labelled a model
wherever it appears. A run of a workload is a sequence of *rounds* (knapsack: one per block;
SQD: one per iteration); a round releases its units of work at once and ends when the last
one is back (the drivers wait for a whole round). Between rounds the coordinator does its
own classical work. Each unit costs:

* ``dispatch_s`` of the coordinator's time, one unit after another (reservation, invoke,
  acceptance, records: the coordinator is one resource);
* ``latency_s`` on the network, paid in parallel;
* its compute on one worker slot of a node.

The workload's shape (units per round, compute per unit, classical time) comes from the
measured runs' ``profile``; ``dispatch_s`` is fitted so the model reproduces the measured
1-node wall time, and the fit is then checked against the measured 2- and 3-node runs
(:func:`validate`), each with its own measured compute per unit (nodes sharing one host's
cores compute more slowly side by side). Predictions beyond that use the 1-node compute:
nodes on machines of their own. The coordinator cost is modelled as serial, which is what
the measurements on one host fit; bandwidth is not modelled (units are small messages).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import simpy

from quantum_mesh.errors import InvalidInput

LABEL = "model (SimPy discrete-event simulation fitted to measured runs)"
#: Node counts the model predicts by default.
DEFAULT_SCALE = (1, 2, 3, 10, 30, 100, 300, 1000)
#: Network latency per unit when the caller has no measurement (a loopback mesh call).
DEFAULT_LATENCY_S = 0.002
#: Relative error within which a prediction counts as reproducing a measurement.
TOLERANCE = 0.25


@dataclass(frozen=True)
class Shape:
    """What a run of the workload is made of, from a measured run."""

    rounds: tuple[int, ...]
    unit_s: float
    classical_s: float

    @property
    def units(self) -> int:
        return sum(self.rounds)

    def centralized_s(self) -> float:
        """Every unit one after another in the coordinator, no mesh."""
        return self.classical_s + self.units * self.unit_s


@dataclass(frozen=True)
class Costs:
    dispatch_s: float
    latency_s: float = DEFAULT_LATENCY_S
    workers_per_node: int = 1


@dataclass(frozen=True)
class Prediction:
    nodes: int
    wall_s: float
    speedup: float
    mesh_share: float


def simulate(shape: Shape, costs: Costs, nodes: int) -> float:
    """Wall seconds of one distributed run on ``nodes`` nodes (a SimPy simulation)."""
    if nodes < 1:
        raise InvalidInput("nodes must be >= 1", details={"field": "nodes"})
    env = simpy.Environment()
    coordinator = simpy.Resource(env, capacity=1)
    slots = simpy.Resource(env, capacity=nodes * costs.workers_per_node)
    between = shape.classical_s / max(1, len(shape.rounds))

    def unit() -> Any:
        with coordinator.request() as turn:
            yield turn
            yield env.timeout(costs.dispatch_s)
        yield env.timeout(costs.latency_s / 2)
        with slots.request() as slot:
            yield slot
            yield env.timeout(shape.unit_s)
        yield env.timeout(costs.latency_s / 2)

    def run() -> Any:
        for count in shape.rounds:
            yield env.timeout(between)
            yield env.all_of([env.process(unit()) for _ in range(count)])

    env.process(run())
    env.run()
    return float(env.now)


def predict(
    shape: Shape, costs: Costs, node_counts: Iterable[int], *, reference_s: float | None = None
) -> list[Prediction]:
    """Wall time, speedup over centralized (``reference_s``, else the shape's own
    centralized time) and mesh share for each node count."""
    free = Costs(dispatch_s=0.0, latency_s=0.0, workers_per_node=costs.workers_per_node)
    reference = shape.centralized_s() if reference_s is None else reference_s
    out = []
    for n in node_counts:
        wall = simulate(shape, costs, n)
        ideal = simulate(shape, free, n)
        out.append(
            Prediction(
                nodes=n,
                wall_s=round(wall, 6),
                speedup=round(reference / wall, 4) if wall else math.inf,
                mesh_share=round(max(0.0, wall - ideal) / wall, 4) if wall else 0.0,
            )
        )
    return out


def fit(shape: Shape, measured_wall_s: float, *, nodes: int = 1, latency_s: float) -> Costs:
    """The per-unit coordinator cost that makes the model's ``nodes``-node run last
    ``measured_wall_s`` (bisection: the simulated wall time grows with it)."""
    low, high = 0.0, max(measured_wall_s, 1e-6)
    if simulate(shape, Costs(0.0, latency_s), nodes) >= measured_wall_s:
        return Costs(0.0, latency_s)
    for _ in range(40):
        mid = (low + high) / 2
        if simulate(shape, Costs(mid, latency_s), nodes) < measured_wall_s:
            low = mid
        else:
            high = mid
    return Costs((low + high) / 2, latency_s)


def shape_of(profiles: Sequence[Mapping[str, Any]]) -> Shape:
    """One shape from the profiles of several measured runs (medians)."""
    if not profiles:
        raise InvalidInput("no measured run carries a profile to model")
    rounds = max((tuple(p["rounds"]) for p in profiles), key=len)
    return Shape(
        rounds=tuple(int(r) for r in rounds),
        unit_s=statistics.median(float(p["unit_s"]) for p in profiles),
        classical_s=statistics.median(float(p["classical_s"]) for p in profiles),
    )


def validate(
    rows: Sequence[Mapping[str, Any]],
    *,
    scenario: str = "baseline",
    latency_s: float = DEFAULT_LATENCY_S,
    scale: Iterable[int] = DEFAULT_SCALE,
    what_if_dispatch_s: float = DEFAULT_LATENCY_S,
) -> dict[str, Any] | None:
    """Fit the model to a benchmark's rows and compare it with what was measured.

    The shape comes from the distributed rows' profiles, the coordinator cost from the
    1-node (or smallest) distributed runs; each measured node count is then predicted and
    compared (median wall time, speedup over the measured centralized median). None when
    the rows have no distributed profile to fit."""
    base = [r for r in rows if r.get("scenario", "baseline") == scenario]
    distributed = [r for r in base if r["mode"] == "distributed" and r.get("profile")]
    centralized = [r["wall_s"] for r in base if r["mode"] == "centralized"]
    if not distributed:
        return None
    scale = list(scale)
    by_nodes: dict[int, list[Mapping[str, Any]]] = {}
    for r in distributed:
        by_nodes.setdefault(int(r["nodes"]), []).append(r)
    measured = {n: statistics.median(float(r["wall_s"]) for r in rs) for n, rs in by_nodes.items()}
    # Each node count's own measured compute per unit: nodes that share one host's cores
    # compute more slowly side by side, and that is measured, not modelled.
    shapes = {n: shape_of([r["profile"] for r in rs]) for n, rs in sorted(by_nodes.items())}
    fitted_on = min(measured)
    shape = shapes[fitted_on]
    costs = fit(shape, measured[fitted_on], nodes=fitted_on, latency_s=latency_s)
    reference = statistics.median(centralized) if centralized else shape.centralized_s()
    checks = []
    for n, at_n in shapes.items():
        (p,) = predict(at_n, costs, [n])
        speedup = reference / measured[p.nodes]
        predicted = reference / p.wall_s
        checks.append(
            {
                "nodes": p.nodes,
                "measured_wall_s": round(measured[p.nodes], 4),
                "predicted_wall_s": round(p.wall_s, 4),
                "measured_speedup": round(speedup, 4),
                "predicted_speedup": round(predicted, 4),
                "relative_error": round(abs(predicted - speedup) / speedup, 4),
            }
        )
    return {
        "label": LABEL,
        "scenario": scenario,
        "shape": {**asdict(shape), "rounds": list(shape.rounds), "units": shape.units},
        "costs": asdict(costs),
        "fitted_on_nodes": fitted_on,
        "tolerance": TOLERANCE,
        "validation": checks,
        "within_tolerance": all(c["relative_error"] <= TOLERANCE for c in checks),
        "predictions": [asdict(p) for p in predict(shape, costs, scale, reference_s=reference)],
        # What-if: the same runs with the coordinator's per-unit cost down to one bare mesh
        # call (what bench/mesh_invoke.py measures), i.e. what a leaner coordinator buys.
        "what_if_dispatch_s": what_if_dispatch_s,
        "predictions_what_if": [
            asdict(p)
            for p in predict(
                shape, Costs(what_if_dispatch_s, latency_s), scale, reference_s=reference
            )
        ],
    }
