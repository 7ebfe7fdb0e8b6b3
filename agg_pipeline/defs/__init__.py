"""Dagster wiring: resources, partitions, assets, checks, sensors, schedules and jobs.

Everything here calls the plain-Python engine (`agg_pipeline.engine`); `definitions.py`
assembles it into one `Definitions`.
"""
