"""The CLI's side of the HTTP API: where the coordinator is, what its answers mean to a
person, and a short summary of a finished job.

Every failure a user can cause or meet (coordinator not running, missing or weak API key, an
unknown job, bad input) becomes a ``ClientError`` with one actionable line; the CLI prints it
without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

DEFAULT_PORT = 8000
#: Counts shown in a circuit summary.
TOP_STATES = 4
REQUEST_TIMEOUT_S = 30.0


class ClientError(Exception):
    """One line for the user."""


def default_api() -> str:
    """``QMESH_API``, else ``http://<QMESH_HOST>:<QMESH_PORT>`` (a wildcard host means this
    machine), else ``http://127.0.0.1:8000``; ``.env`` is read like the coordinator reads it."""
    explicit = os.environ.get("QMESH_API")
    if explicit:
        return explicit.rstrip("/")
    from quantum_mesh.config import Settings

    settings = Settings()
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


@contextmanager
def session(api: str, api_key: str | None) -> Iterator[httpx.Client]:
    # httpx logs every request at INFO: noise on a person's terminal.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=api, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
        yield client


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """The JSON body of a 2xx answer.

    Raises:
        ClientError: the coordinator cannot be reached or answered 4xx/5xx.
    """
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TimeoutException as error:
        raise ClientError(f"the coordinator at {client.base_url} did not answer in time") from error
    except httpx.TransportError as error:
        raise ClientError(
            f"cannot reach the coordinator at {client.base_url}: is it running? Start it with "
            "`bash scripts/run.sh`, or point --api (QMESH_API, or QMESH_HOST/QMESH_PORT) at it."
        ) from error
    if response.status_code < 400:
        body = response.json()
        return body if isinstance(body, dict) else {"items": body}
    raise ClientError(explain(response.status_code, _error_of(response)))


def download(client: httpx.Client, path: str) -> bytes:
    """The body of a 2xx answer as bytes (a zip, an artifact).

    Raises:
        ClientError: the coordinator cannot be reached or answered 4xx/5xx.
    """
    try:
        response = client.get(path)
    except httpx.TimeoutException as error:
        raise ClientError(f"the coordinator at {client.base_url} did not answer in time") from error
    except httpx.TransportError as error:
        raise ClientError(
            f"cannot reach the coordinator at {client.base_url}: is it running?"
        ) from error
    if response.status_code < 400:
        return response.content
    raise ClientError(explain(response.status_code, _error_of(response)))


def _error_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"message": response.text[:200]}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {"message": str(body)[:200]}


def explain(status: int, error: dict[str, Any]) -> str:
    """One line for an error answer (the API's error envelope, docs/api.md)."""
    message = str(error.get("message") or "").strip()
    code = error.get("code")
    if status == 401:
        return "the coordinator needs an API key: pass --api-key or set QMESH_API_KEY"
    if status == 403:
        return f"this API key may not do that ({message or 'forbidden'})"
    if status == 404:
        return message or "not found"
    if status == 429:
        retry = (error.get("details") or {}).get("retry_after_s")
        wait = f"; retry in {retry} s" if retry is not None else ""
        return f"the coordinator is busy ({message or code}){wait}"
    if status >= 500:
        return f"the coordinator failed ({status} {code or ''}): {message}".strip()
    fields = _fields(error.get("details"))
    where = f" [{', '.join(fields)}]" if fields else ""
    return f"refused ({status} {code}): {message}{where}"


def _fields(details: Any) -> list[str]:
    """Field names a validation error points at (``details.errors[].loc`` or ``field``)."""
    if not isinstance(details, dict):
        return []
    names: list[str] = []
    if isinstance(details.get("field"), str):
        names.append(details["field"])
    for item in details.get("errors", []) if isinstance(details.get("errors"), list) else []:
        loc = item.get("loc") if isinstance(item, dict) else None
        if isinstance(loc, list):
            names.append(".".join(str(p) for p in loc if p != "body"))
    return names[:5]


def summary(job: dict[str, Any]) -> list[str]:
    """A few lines saying how a finished job went, whatever its kind."""
    job_id = job.get("job_id") or job.get("run_id") or "?"
    lines = [f"{job_id}  {job.get('kind', '?')}  {job.get('status', '?')}"]
    error = job.get("error")
    if isinstance(error, dict):
        lines.append(f"error: {error.get('code')}: {error.get('message')}")
    quantum = job.get("quantum_result")
    if isinstance(quantum, dict) and isinstance(quantum.get("counts"), dict):
        lines.extend(_counts_lines(quantum["counts"]))
    result = job.get("result")
    if isinstance(result, dict):
        lines.extend(_result_lines(result))
    return lines


def _counts_lines(counts: dict[str, int]) -> list[str]:
    shots = sum(counts.values()) or 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_STATES]
    shown = ", ".join(f"{state}: {n} ({n / shots:.1%})" for state, n in top)
    more = f" and {len(counts) - len(top)} more" if len(counts) > len(top) else ""
    return [f"{shots} shots, {len(counts)} outcomes; top: {shown}{more}"]


def _result_lines(result: dict[str, Any]) -> list[str]:
    if "total_value" in result and "optimum_value" in result:
        return [
            f"knapsack value {result['total_value']} of optimum {result['optimum_value']} "
            f"(ratio {result.get('ratio_to_optimum', 0):.4f}); greedy {result.get('greedy_value')}"
        ]
    if "objective" in result and "optimum_objective" in result:
        chosen = result.get("selected_assets") or result.get("selected")
        verdict = "optimal" if result.get("is_optimal") else f"gap {result.get('gap'):.6g}"
        ties = result.get("optimum_ties")
        tie_note = (
            f"; {len(ties)} selections tie for the optimum: {'; '.join(map(str, ties))}"
            if ties
            else ""
        )
        return [f"portfolio {chosen}: objective {result['objective']:.6g} ({verdict}){tie_note}"]
    if "energy" in result:
        reference = result.get("reference_energy")
        against = (
            f" vs reference {reference:.8f} Ha ({result.get('error_mha'):.3f} mHa)"
            if isinstance(reference, int | float)
            else ""
        )
        return [f"energy {result['energy']:.8f} Ha{against}"]
    return []
