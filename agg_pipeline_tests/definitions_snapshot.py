"""A readable, deterministic description of the project's Definitions, for the snapshot test
(test_definitions_snapshot.py): asset keys with their deps, partitions, policies and tags;
check keys with blocking and severity; jobs with their selection and the config their
launchpad opens with; sensors, schedules, the executor and the resources.

`python -m agg_pipeline_tests.definitions_snapshot OUT.json` writes it. What is described is
build_definitions(PipelineConfig()): the defaults, not this machine's settings, built in the
test's own process.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import dagster as dg


def launchpad_config(job: dg.JobDefinition) -> dict:
    """What the UI's launchpad opens a job with: the run config schema's defaults (what the
    webserver's RunConfigSchema.rootDefaultYaml serves), as a dict."""
    import yaml
    from dagster._core.snap import JobSnap
    from dagster._core.snap.snap_to_yaml import default_values_yaml_from_type_snap

    snap = JobSnap.from_job_def(job)
    schema = snap.config_schema_snapshot
    root = schema.get_config_snap(snap.mode_def_snaps[0].root_config_key)
    return yaml.safe_load(default_values_yaml_from_type_snap(schema, root)) or {}


def _key(key: dg.AssetKey) -> str:
    return key.to_user_string()


def _partitions(partitions_def: dg.PartitionsDefinition | None) -> str | None:
    return None if partitions_def is None else " ".join(str(partitions_def).split())


def _freshness(node: Any) -> str | None:
    policy = getattr(node, "freshness_policy", None)
    if policy is None:
        return None
    cron = getattr(policy, "deadline_cron", None)
    if cron is not None:
        return (f"cron {cron} ({policy.timezone}), lower bound "
                f"{policy.lower_bound_delta.total_seconds():g} s")
    return repr(policy)


def _config_fields(config_schema: Any) -> dict[str, str]:
    """A config schema's fields: name -> 'required' or 'default <value>'."""
    if config_schema is None:
        return {}
    config_type = config_schema.as_field().config_type
    fields = getattr(config_type, "fields", None) or {}
    return {name: ("default " + json.dumps(field.default_value, default=str)
                   if field.default_provided else "required" if field.is_required else
                   "optional")
            for name, field in sorted(fields.items())}


def describe(defs: dg.Definitions) -> dict:
    from agg_pipeline.defs.checks import CHECK_DEFS

    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=_key):
        node = graph.get(key)
        assets[_key(key)] = {
            "deps": sorted(_key(k) for k in node.parent_keys),
            "partitions": _partitions(node.partitions_def),
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "materializable": node.is_materializable,
            "backfill_policy": None if node.backfill_policy is None else str(
                node.backfill_policy),
            "freshness_policy": _freshness(node),
            "automation_condition": None if node.automation_condition is None else str(
                node.automation_condition),
            "tags": {k: v for k, v in sorted(node.tags.items())
                     if not k.startswith("dagster/kind/")},
        }
    severity = {check.name: check.severity.value for check in CHECK_DEFS}
    checks = {}
    for check_key in sorted(graph.asset_check_keys, key=lambda k: (_key(k.asset_key), k.name)):
        spec = graph.get_check_spec(check_key)
        checks[f"{_key(check_key.asset_key)}:{check_key.name}"] = {
            "blocking": spec.blocking, "severity": severity.get(check_key.name),
            "partitions": _partitions(getattr(spec, "partitions_def", None))}
    jobs = {}
    for job in sorted(defs.resolve_all_job_defs(), key=lambda j: j.name):
        if job.name.startswith("__"):  # Dagster's implicit asset job
            continue
        layer = job.asset_layer
        selected = sorted(_key(k) for k in layer.executable_asset_keys) if layer else []
        jobs[job.name] = {
            "assets": selected,
            "checks": sorted(f"{_key(k.asset_key)}:{k.name}"
                             for k in (layer.asset_graph.asset_check_keys if layer else ())
                             if _key(k.asset_key) in selected),
            "ops": [] if selected else sorted(node.name for node in job.graph.node_defs),
            "partitions": _partitions(job.partitions_def),
            "tags": dict(sorted(job.tags.items())),
            "executor": job.executor_def.name,
            "launchpad": launchpad_config(job),
        }
    sensors = {
        sensor.name: {
            "interval_seconds": sensor.minimum_interval_seconds,
            "default_status": sensor.default_status.value,
            "jobs": sorted(t.job_name for t in sensor.targets) if sensor.targets else [],
            "type": sensor.sensor_type.value,
            "partitions": sorted({str(_partitions(defs.resolve_job_def(t.job_name).partitions_def))
                                  for t in sensor.targets}) if sensor.targets else [],
        }
        for sensor in sorted(defs.sensors or [], key=lambda s: s.name)
    }
    schedules = {
        schedule.name: {
            "cron": schedule.cron_schedule,
            "timezone": schedule.execution_timezone,
            "default_status": schedule.default_status.value,
            "job": schedule.job_name,
            "partitions": _partitions(defs.resolve_job_def(schedule.job_name).partitions_def),
        }
        for schedule in sorted(defs.schedules or [], key=lambda s: s.name)
    }
    resources = {
        name: {"type": type(resource).__name__,
               "config": _config_fields(getattr(resource, "config_schema", None)
                                        if not isinstance(resource, dg.ConfigurableResource)
                                        else resource.get_resource_definition().config_schema)}
        for name, resource in sorted((defs.resources or {}).items())
    }
    executor = defs.executor
    return {
        "assets": assets,
        "asset_checks": checks,
        "jobs": jobs,
        "sensors": sensors,
        "schedules": schedules,
        "executor": {"name": executor.name, "config": _config_fields(executor.config_schema)},
        "resources": resources,
    }


def time_grains() -> dict[str, str | None]:
    """The bars assets' partitions under each time grain (PipelineConfig.time_grain)."""
    import dataclasses

    from agg_pipeline.defs.config import PipelineConfig
    from agg_pipeline.defs.factory import build_definitions

    return {grain: _partitions(build_definitions(
                dataclasses.replace(PipelineConfig(), time_grain=grain))
                .resolve_job_def("aggregate_bars").partitions_def)
            for grain in ("day", "month", "year")}


def snapshot() -> str:
    """The description of the default configuration's Definitions (PipelineConfig(): the
    shipped ladder and defaults, whatever this machine's AGG_* variables), and of the
    partitions of every time grain, as JSON."""
    from agg_pipeline.defs.config import PipelineConfig
    from agg_pipeline.defs.factory import build_definitions

    described = describe(build_definitions(PipelineConfig()))
    described["partitions_by_time_grain"] = time_grains()
    return json.dumps(described, indent=2, sort_keys=False) + "\n"


def main(out: str) -> None:
    with open(out, "w") as file:
        file.write(snapshot())


if __name__ == "__main__":
    main(sys.argv[1])
