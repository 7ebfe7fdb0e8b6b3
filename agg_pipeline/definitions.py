"""The one place that assembles the project's Dagster `Definitions` (loaded by workspace.yaml)."""

from __future__ import annotations

import dagster as dg

from agg_pipeline.defs.resources import MarketDatabase

defs = dg.Definitions(
    resources={"market_db": MarketDatabase()},
)
