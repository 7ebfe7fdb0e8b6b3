"""Jobs the schedule and sensors launch."""


import dagster as dg

from agg_pipeline.defs.assets import derived_bars_assets
from agg_pipeline.defs.partitions import symbol_time_partitions

aggregate_bars_job = dg.define_asset_job(
    name="aggregate_bars",
    selection=dg.AssetSelection.assets(*derived_bars_assets),
    partitions_def=symbol_time_partitions,
    description="Materialise derived bars for a symbol's range of days (schedule and sensors).",
)
