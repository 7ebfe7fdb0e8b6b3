"""Dagster wiring: resources, partitions, assets, checks, sensors, schedules and jobs.

Everything here calls the plain-Python engine (`agg_pipeline.engine`); `factory.py` builds one
`Definitions` from a `PipelineConfig` (`config.py`), and `agg_pipeline/definitions.py` the
environment's.
"""

import warnings

import dagster as dg

# Deliberate uses of beta APIs (the single-run backfill policy, the multi-to-single-dimension
# partition mapping): no warning on every code-location load.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
