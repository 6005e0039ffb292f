"""Workflow kinds: validation (before a job exists, so bad params are a 422) and processors
that run each workload over the mesh through the dispatcher."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from quantum_mesh.control.dispatch import MeshDispatcher
from quantum_mesh.control.jobs import JobManager
from quantum_mesh.control.offloop import LoopBridge, run_async_driver, run_sync_driver
from quantum_mesh.control.states import JobStatus
from quantum_mesh.errors import InvalidInput, QMeshError
from quantum_mesh.quantum.qaoa import beam
from quantum_mesh.quantum.qaoa.classical import validate_knapsack, validate_portfolio

Validator = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
Runner = Callable[["WorkflowContext", dict[str, Any]], Awaitable[dict[str, Any]]]

VALIDATORS: dict[str, Validator] = {}
RUNNERS: dict[str, Runner] = {}
PORTFOLIO_KIND = "portfolio"
# Fire-and-forget progress writes are kept referenced until they finish.
_background: set[asyncio.Future[None]] = set()
CHECKPOINT_TIMEOUT_S = 30.0


class JobCancelled(QMeshError):
    code = "cancelled"


class WorkflowContext:
    """What a workflow runner may use: the dispatcher and progress reporting."""

    def __init__(
        self,
        *,
        job_id: str,
        jobs: JobManager,
        dispatcher: MeshDispatcher,
        max_nodes: int | None = None,
        local: bool = False,
        report_progress: bool = True,
    ) -> None:
        self.job_id = job_id
        self.jobs = jobs
        self.dispatcher = dispatcher
        #: Benchmarks restrict a run to the first ``max_nodes`` nodes, or run it ``local``ly
        #: (all work in this process, one item after another) as the baseline.
        self.max_nodes = max_nodes
        self.local = local
        self.report_progress = report_progress
        self._loop = asyncio.get_running_loop()

    def check_cancelled(self) -> None:
        """Raise in a driver thread once the job was cancelled, so no further work is sent."""
        if self.job_id in self.jobs.cancelled:
            raise JobCancelled(f"Job {self.job_id} was cancelled")

    def checkpoint_threadsafe(self, state: dict[str, Any]) -> None:
        """Persist a driver's resumable state from its thread, waiting for the commit so the
        next block is only sent once the previous one is durable (benchmarks keep none)."""
        if self.report_progress:
            asyncio.run_coroutine_threadsafe(
                self.jobs.save_checkpoint(self.job_id, state), self._loop
            ).result(timeout=CHECKPOINT_TIMEOUT_S)

    def progress_threadsafe(self, progress: dict[str, Any]) -> None:
        """Report progress from a driver thread (persisted, then published)."""
        if self.report_progress:
            asyncio.run_coroutine_threadsafe(
                self.jobs.report_progress(self.job_id, progress), self._loop
            )

    def mesh_dispatch(self, bridge: LoopBridge, method: str, service_type: str) -> beam.Dispatch:
        if self.local:
            return _local_dispatch(method)

        async def dispatch(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            self.check_cancelled()
            return await bridge.acall(
                self.dispatcher.dispatch(
                    method, jobs, service_type=service_type, max_nodes=self.max_nodes
                )
            )

        return dispatch


def _local_dispatch(method: str) -> beam.Dispatch:
    """The baseline: the node handlers called in this thread, one job after another."""
    from quantum_mesh.node.context import NodeContext
    from quantum_mesh.node.handlers import resolve

    handler = resolve(method)
    node = NodeContext(peer_id="local", name="local")

    async def dispatch(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**handler(job, node), "node_id": "local"} for job in jobs]

    return dispatch


def workflow(kind: str) -> Callable[[Runner], Runner]:
    def register(fn: Runner) -> Runner:
        RUNNERS[kind] = fn
        return fn

    return register


def validator(kind: str) -> Callable[[Validator], Validator]:
    def register(fn: Validator) -> Validator:
        VALIDATORS[kind] = fn
        return fn

    return register


async def validate_workflow(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    check = VALIDATORS.get(kind)
    if check is None or kind == PORTFOLIO_KIND:
        available = sorted(k for k in VALIDATORS if k != PORTFOLIO_KIND)
        raise InvalidInput(
            f"Unknown workflow kind '{kind}'; available: {available}",
            details={"kind": kind, "available": available},
        )
    return await check(params)


def _seed(params: dict[str, Any]) -> int:
    seed = params.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise InvalidInput("seed must be an integer in [0, 2**32)", details={"seed": seed})
    return seed


# --- QAOA knapsack ---------------------------------------------------------------------------
@validator("qaoa_knapsack")
async def _validate_knapsack(params: dict[str, Any]) -> dict[str, Any]:
    for key in ("values", "weights", "capacity"):
        if key not in params:
            raise InvalidInput(f"params.{key} is required", details={"field": key})
    await asyncio.to_thread(
        validate_knapsack, params["values"], params["weights"], params["capacity"]
    )
    settings = beam.KnapsackSettings.from_params(params)
    return {**params, "seed": _seed(params), "settings": settings.as_dict()}


@workflow("qaoa_knapsack")
async def _run_knapsack(ctx: WorkflowContext, params: dict[str, Any]) -> dict[str, Any]:
    settings = beam.KnapsackSettings.from_params(params["settings"])
    # After a coordinator restart the run continues from its last finished block.
    resume = await ctx.jobs.last_checkpoint(ctx.job_id) if ctx.report_progress else None

    def on_progress(p: dict[str, Any]) -> None:
        ctx.progress_threadsafe(
            {
                "done": p["block_index"] + 1,
                "total": p["blocks_total"],
                "unit": "blocks",
                "best_value": p["best_value"],
                "optimum_value": p["optimum_value"],
            }
        )

    async def driver(bridge: LoopBridge) -> dict[str, Any]:
        return await beam.solve_knapsack(
            params["values"],
            params["weights"],
            params["capacity"],
            dispatch=ctx.mesh_dispatch(bridge, beam.METHOD_BLOCK, "qaoa_block"),
            settings=settings,
            seed=params["seed"],
            on_progress=on_progress,
            checkpoint=ctx.checkpoint_threadsafe,
            resume=resume,
            schedule_dispatch=ctx.mesh_dispatch(bridge, beam.METHOD_SCHEDULES, "qaoa_block"),
        )

    return await run_async_driver(driver)


# --- distributed (gamma, beta) search for one QUBO -------------------------------------------
@validator("qaoa_parameter_search")
async def _validate_param_search(params: dict[str, Any]) -> dict[str, Any]:
    qubo = params.get("qubo")
    if (
        not isinstance(qubo, list)
        or not qubo
        or not all(isinstance(row, list) and len(row) == len(qubo) for row in qubo)
    ):
        raise InvalidInput("params.qubo must be a square matrix (list of lists)")
    if len(qubo) > 22:
        raise InvalidInput(f"params.qubo has {len(qubo)} variables; at most 22 are supported")
    return {
        "qubo": qubo,
        "offset": float(params.get("offset", 0.0)),
        "n_schedules": int(params.get("n_schedules", 64)),
        "p": int(params.get("p", 1)),
        "jobs": int(params.get("jobs", 4)),
        "refine_rounds": int(params.get("refine_rounds", 1)),
        "seed": _seed(params),
    }


@workflow("qaoa_parameter_search")
async def _run_param_search(ctx: WorkflowContext, params: dict[str, Any]) -> dict[str, Any]:
    async def driver(bridge: LoopBridge) -> dict[str, Any]:
        return await beam.search_parameters(
            {"qubo": {"matrix": params["qubo"], "offset": params["offset"]}},
            dispatch=ctx.mesh_dispatch(bridge, beam.METHOD_SCHEDULES, "qaoa_block"),
            n_schedules=params["n_schedules"],
            seed=params["seed"],
            p=params["p"],
            jobs=params["jobs"],
            refine_rounds=params["refine_rounds"],
        )

    return await run_async_driver(driver)


# --- portfolio (the /finance API) ----------------------------------------------------------
@validator(PORTFOLIO_KIND)
async def _validate_portfolio(params: dict[str, Any]) -> dict[str, Any]:
    assets = params.get("assets")
    mu = params.get("expected_returns")
    if not isinstance(assets, list) or not all(isinstance(a, str) for a in assets):
        raise InvalidInput("assets must be a list of names")
    if not isinstance(mu, list) or len(mu) != len(assets):
        raise InvalidInput("expected_returns must have one entry per asset")
    if len(set(assets)) != len(assets):
        raise InvalidInput("asset names must be unique")
    await asyncio.to_thread(
        validate_portfolio,
        mu,
        params.get("covariance"),  # type: ignore[arg-type]  # validated right here
        params.get("budget"),  # type: ignore[arg-type]
        params.get("risk_aversion", 0.5),
    )
    return {
        **params,
        "risk_aversion": float(params.get("risk_aversion", 0.5)),
        "seed": _seed(params),
    }


@workflow(PORTFOLIO_KIND)
async def _run_portfolio(ctx: WorkflowContext, params: dict[str, Any]) -> dict[str, Any]:
    async def driver(bridge: LoopBridge) -> dict[str, Any]:
        return await beam.solve_portfolio(
            params["expected_returns"],
            params["covariance"],
            params["budget"],
            params["risk_aversion"],
            dispatch=ctx.mesh_dispatch(bridge, beam.METHOD_BLOCK, "qaoa_block"),
            seed=params["seed"],
            assets=params["assets"],
        )

    result = await run_async_driver(driver)
    result["selected_indices"] = result["selected"]
    result["selected"] = result.pop("selected_assets")
    return result


# --- SQD ---------------------------------------------------------------------------------------
@validator("sqd")
async def _validate_sqd(params: dict[str, Any]) -> dict[str, Any]:
    from quantum_mesh.quantum.sqd.params import parse_sqd_params

    # Builds the molecule (mean field + active space) so an invalid molecule, basis or
    # active space is a 422 before any job exists.
    _problem, settings = await asyncio.to_thread(parse_sqd_params, params)
    return {**params, "seed": settings.seed}


@workflow("sqd")
async def _run_sqd(ctx: WorkflowContext, params: dict[str, Any]) -> dict[str, Any]:
    from quantum_mesh.quantum.sqd.loop import SQD_BATCH_METHOD, run_sqd, solve_batches_locally
    from quantum_mesh.quantum.sqd.params import parse_sqd_params

    latest: dict[str, Any] = {"done": 0, "unit": "iterations"}

    def on_progress(p: dict[str, Any]) -> None:
        latest.update(
            done=p["iteration"],
            total=p["max_iterations"],
            batches_done=p.get("batches_done"),
            energy=p.get("energy"),
            best_energy=p.get("best_energy"),
        )
        ctx.progress_threadsafe(dict(latest))

    def on_batch(done: int, total: int) -> None:
        # Called on the event loop as each batch of the current iteration comes back.
        if ctx.report_progress:
            progress = {**latest, "iteration_batches_done": done, "iteration_batches": total}
            task = asyncio.ensure_future(ctx.jobs.report_progress(ctx.job_id, progress))
            _background.add(task)
            task.add_done_callback(_background.discard)

    def driver(bridge: LoopBridge) -> dict[str, Any]:
        problem, settings = parse_sqd_params(params)
        latest["total"] = settings.max_iterations

        def solve_batches(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            ctx.check_cancelled()
            if ctx.local:
                return solve_batches_locally(jobs)
            return bridge.call(
                ctx.dispatcher.dispatch(
                    SQD_BATCH_METHOD,
                    jobs,
                    service_type="sqd_batch",
                    max_nodes=ctx.max_nodes,
                    on_done=on_batch,
                )
            )

        return run_sqd(
            problem, settings=settings, solve_batches=solve_batches, on_progress=on_progress
        )

    return await run_sync_driver(driver)


# --- wiring ----------------------------------------------------------------------------------
def register_workflows(jobs: JobManager, dispatcher: MeshDispatcher) -> None:
    """Attach every workflow processor (and the benchmark runner) to the job manager."""
    from quantum_mesh.control.benchmarks import BENCHMARK_KIND, run_benchmark

    for kind, runner in RUNNERS.items():
        jobs.register_processor(kind, _processor(jobs, dispatcher, runner))
    jobs.register_processor(BENCHMARK_KIND, _processor(jobs, dispatcher, run_benchmark))


def _processor(
    jobs: JobManager, dispatcher: MeshDispatcher, runner: Runner
) -> Callable[[str], Awaitable[None]]:
    async def process(job_id: str) -> None:
        job = await jobs.get(job_id)
        if job.status == JobStatus.QUEUED:
            await jobs.transition(job_id, JobStatus.COMPILING)
        job = await jobs.get(job_id)
        if job.status in (JobStatus.COMPILING, JobStatus.RESERVING):
            await jobs.transition(job_id, JobStatus.EXECUTING)
        ctx = WorkflowContext(job_id=job_id, jobs=jobs, dispatcher=dispatcher)
        result = await runner(ctx, job.request["params"])
        # Progress reports travel from driver threads; close the bar whatever arrived last.
        last = (await jobs.get(job_id)).progress or {}
        final = (
            {**last, "done": last["total"]} if "total" in last else {**last, "done": 1, "total": 1}
        )
        await jobs.transition(job_id, JobStatus.COMPLETED, result=result, progress=final)

    return process
