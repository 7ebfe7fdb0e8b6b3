"""Jobs the schedule and sensors launch."""


import dagster as dg

from agg_pipeline.defs.assets import derived_bars_assets
from agg_pipeline.defs.partitions import symbol_time_partitions
from agg_pipeline.defs.synthetic import synthetic_bars_1m

aggregate_bars_job = dg.define_asset_job(
    name="aggregate_bars",
    selection=dg.AssetSelection.assets(synthetic_bars_1m, *derived_bars_assets),
    partitions_def=symbol_time_partitions,
    description="Materialise derived bars for a symbol's range of days (schedule and sensors).",
)
