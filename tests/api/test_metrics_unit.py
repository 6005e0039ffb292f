"""The Prometheus metrics module: helper functions, text rendering and the /metrics router."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from quantum_mesh.observability import metrics


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    payload, _ = metrics.render()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(payload.decode())
        for s in family.samples
    }


def test_render_lists_every_metric_after_calls() -> None:
    metrics.job_transition("circuit", "COMPLETED")
    metrics.set_jobs_by_state({("circuit", "QUEUED"): 2})
    metrics.fragment_finished(0.03, ok=True)
    metrics.fragment_finished(1.5, ok=False)
    metrics.retry("node_timeout")
    metrics.mesh_invoke("execute_fragment", 0.004, ok=True)
    metrics.set_node_freshness("12D3KooWTestPeer", 0.7, fresh=True)
    metrics.advert_dropped("bad_signature")
    metrics.unit_cost("qaoa_block", overhead_s=0.012, job_compute_s=0.04)

    payload, content_type = metrics.render()
    text = payload.decode()
    assert content_type.startswith("text/plain")
    for name in metrics.METRIC_NAMES:
        assert f"# HELP {name}" in text, name
    assert 'qmesh_jobs{kind="circuit",status="QUEUED"} 2.0' in text
    assert 'qmesh_node_fresh{peer_id="12D3KooWTestPeer"} 1.0' in text
    assert 'qmesh_unit_overhead_seconds{method="qaoa_block"} 0.012' in text


def test_counters_increase_by_one_per_call() -> None:
    key = ("qmesh_job_transitions_total", (("kind", "sqd"), ("status", "FAILED")))
    before = _samples().get(key, 0.0)
    metrics.job_transition("sqd", "FAILED")
    metrics.job_transition("sqd", "FAILED")
    assert _samples()[key] == before + 2

    ok = ("qmesh_mesh_invokes_total", (("method", "ping"), ("outcome", "error")))
    before = _samples().get(ok, 0.0)
    metrics.mesh_invoke("ping", 0.5, ok=False)
    assert _samples()[ok] == before + 1


def test_fragment_histogram_counts_observations() -> None:
    key = ("qmesh_fragment_duration_seconds_count", (("outcome", "ok"),))
    before = _samples().get(key, 0.0)
    metrics.fragment_finished(0.2, ok=True)
    assert _samples()[key] == before + 1


def test_jobs_gauge_is_replaced_not_accumulated() -> None:
    metrics.set_jobs_by_state({("qaoa_knapsack", "EXECUTING"): 3, ("qaoa_knapsack", "QUEUED"): 1})
    metrics.set_jobs_by_state({("qaoa_knapsack", "QUEUED"): 5})
    samples = _samples()
    assert samples[("qmesh_jobs", (("kind", "qaoa_knapsack"), ("status", "QUEUED")))] == 5
    assert samples[("qmesh_jobs", (("kind", "qaoa_knapsack"), ("status", "EXECUTING")))] == 0


def test_node_freshness_and_forget() -> None:
    metrics.set_node_freshness("12D3KooWStale", 12.5, fresh=False)
    samples = _samples()
    assert samples[("qmesh_node_fresh", (("peer_id", "12D3KooWStale"),))] == 0
    assert samples[("qmesh_node_advert_age_seconds", (("peer_id", "12D3KooWStale"),))] == 12.5
    metrics.forget_node("12D3KooWStale")
    metrics.forget_node("12D3KooWStale")  # idempotent
    assert ("qmesh_node_fresh", (("peer_id", "12D3KooWStale"),)) not in _samples()


async def test_metrics_router_serves_prometheus_text() -> None:
    app = FastAPI()
    app.include_router(metrics.metrics_router)
    metrics.retry("fallback_node")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'qmesh_retries_total{reason="fallback_node"}' in response.text
