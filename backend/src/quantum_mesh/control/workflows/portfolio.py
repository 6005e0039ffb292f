"""Portfolio selection by QAOA (the /finance API)."""

from __future__ import annotations

from typing import Any

from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.jobs import JobHandle
from quantum_mesh.control.workflows.base import DriverPort, RunOptions, drive
from quantum_mesh.control.workflows.params import check_storable, reject_unknown, seed_of
from quantum_mesh.errors import InvalidInput
from quantum_mesh.mesh.protocol import METHOD_QAOA_BLOCK, SERVICE_QAOA_BLOCK
from quantum_mesh.quantum.qaoa import beam
from quantum_mesh.quantum.qaoa.classical import MAX_PORTFOLIO_ASSETS, validate_portfolio

PORTFOLIO_KIND = "portfolio"
MAX_ASSET_NAME = 200
PORTFOLIO_PARAMS = frozenset(
    {"assets", "expected_returns", "covariance", "budget", "risk_aversion", "seed"}
)


class PortfolioWorkflow:
    kind = PORTFOLIO_KIND
    service_type = SERVICE_QAOA_BLOCK

    async def validate(self, params: dict[str, Any], compute: ComputePools) -> dict[str, Any]:
        check_storable(params, "")  # the /finance body: fields at the top level
        reject_unknown(params, PORTFOLIO_PARAMS, self.kind)
        assets = params.get("assets")
        mu = params.get("expected_returns")
        if (
            not isinstance(assets, list)
            or not 2 <= len(assets) <= MAX_PORTFOLIO_ASSETS
            or not all(isinstance(a, str) and 1 <= len(a) <= MAX_ASSET_NAME for a in assets)
        ):
            raise InvalidInput(
                f"assets must be a list of 2..{MAX_PORTFOLIO_ASSETS} names of 1..{MAX_ASSET_NAME} "
                "characters",
                details={"field": "assets"},
            )
        if not isinstance(mu, list) or len(mu) != len(assets):
            raise InvalidInput(
                "expected_returns must have one entry per asset",
                details={"field": "expected_returns"},
            )
        if len(set(assets)) != len(assets):
            raise InvalidInput("asset names must be unique", details={"field": "assets"})
        await compute.run(
            validate_portfolio,
            mu,
            params.get("covariance"),
            params.get("budget"),
            params.get("risk_aversion", 0.5),
        )
        return {
            **params,
            "risk_aversion": float(params.get("risk_aversion", 0.5)),
            "seed": seed_of(params),
        }

    async def run(
        self, handle: JobHandle, params: dict[str, Any], options: RunOptions
    ) -> dict[str, Any]:
        def driver(port: DriverPort) -> dict[str, Any]:
            return beam.solve_portfolio(
                params["expected_returns"],
                params["covariance"],
                params["budget"],
                params["risk_aversion"],
                dispatch=port.dispatcher(METHOD_QAOA_BLOCK, SERVICE_QAOA_BLOCK),
                seed=params["seed"],
                assets=params["assets"],
            )

        result = await drive(handle, options, driver)
        result["selected_indices"] = result["selected"]
        result["selected"] = result.pop("selected_assets")
        return result
