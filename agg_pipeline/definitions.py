"""The project's Dagster `Definitions`, loaded by workspace.yaml: those of the environment's
configuration (PipelineConfig.from_env(), defs/config.py), built by the factory
(defs/factory.py: build_definitions(config) builds any other configuration's)."""

from agg_pipeline.defs.factory import default_parts

# = build_definitions(PipelineConfig.from_env()), whose parts the defs modules' former
# module-level names (schedules.catchup_schedule, ...) also answer
defs = default_parts().definitions()
