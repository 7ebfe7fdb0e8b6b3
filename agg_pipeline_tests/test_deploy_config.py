"""The deployment files agree with each other and with the schemas that will read them
(issue 14, items 1-3), without a cluster or a container runtime:

- deploy/helm/values.yaml validates against the Helm chart's values schema for the parts it
  sets (CHART_SCHEMA below: transcribed, not copied, from chart dagster/dagster's pydantic
  models in helm/dagster/schema/schema/charts/, which generate its values.schema.json;
  stricter than the chart at the top level, where a misspelt section would be ignored);
- deploy/helm/instance.yaml, the instance config those values render, validates against
  Dagster's instance schema and each configured class's own config schema, K8sRunLauncher's
  from the installed dagster-k8s;
- a wrong key fails each of those validations;
- the run queue, run monitoring and retries, the process environment
  (settings.DAGSTER_PROCESS_ENV), the image's command, user and health check, and the
  migration agree across dagster.yaml, deploy/Dockerfile, deploy/compose.yaml and
  deploy/helm/.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._core.workspace.config_schema import ensure_workspace_config
from dagster._serdes.config_class import class_from_code_pointer
from dagster_shared.check import CheckError

from agg_pipeline import settings
from agg_pipeline_tests.processes import image_command, image_user

ROOT = settings.project_root()
DEPLOY = ROOT / "deploy"
HELM = DEPLOY / "helm"
CONFIGURABLE = ("scheduler", "schedule_storage", "run_launcher", "run_storage",
                "event_log_storage", "run_coordinator", "compute_logs")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


# ------------------------------------------------------------------ the chart's values schema


def strict(properties: dict, required: tuple[str, ...] = ()) -> dict:
    """An object of exactly these properties (a pydantic model with extra="forbid")."""
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


def loose(properties: dict, required: tuple[str, ...] = ()) -> dict:
    """An object with these typed properties, others allowed (a model without extra=forbid)."""
    return {"type": "object", "properties": properties, "required": list(required)}


ANY: dict = {}
STRING = {"type": "string"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
OBJECT = {"type": "object"}
STRINGS = {"type": "array", "items": STRING}
INT_SOURCE = {"anyOf": [INTEGER, strict({"env": STRING}, ("env",))]}
IMAGE = strict({"repository": STRING, "tag": {"type": ["string", "integer", "null"]},
                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}},
               ("repository", "pullPolicy"))
ENV = {"anyOf": [{"type": "object", "additionalProperties": STRING},
                 {"type": "array", "items": OBJECT}]}
ENV_SOURCES = {"type": "array",  # Kubernetes' SecretEnvSource / ConfigMapEnvSource
               "items": strict({"name": STRING, "optional": BOOLEAN}, ("name",))}
RESOURCES = strict({"requests": OBJECT, "limits": OBJECT, "claims": ANY})
CONFIGURABLE_CLASS = strict({"module": STRING, "class": STRING, "config": OBJECT},
                            ("module", "class", "config"))
TAG_LIMIT = strict({"key": STRING, "limit": INTEGER,
                    "value": {"anyOf": [STRING, {"type": "null"},
                                        strict({"applyLimitPerUniqueValue": BOOLEAN})]}},
                   ("key", "limit"))
K8S_FIELDS = ("nodeSelector", "affinity", "tolerations", "podSecurityContext",
              "securityContext", "livenessProbe", "readinessProbe", "startupProbe",
              "annotations", "deploymentLabels", "labels", "volumeMounts", "volumes",
              "schedulerName")
WEBSERVER = strict({
    **dict.fromkeys(K8S_FIELDS, ANY),
    "replicaCount": INTEGER, "image": IMAGE, "nameOverride": STRING, "pathPrefix": ANY,
    "service": ANY, "workspace": ANY, "env": ENV, "envConfigMaps": ENV_SOURCES,
    "envSecrets": ENV_SOURCES, "resources": RESOURCES, "enableReadOnly": BOOLEAN,
    "dbStatementTimeout": ANY, "dbPoolRecycle": ANY, "logLevel": ANY, "logFormat": ANY,
})
USER_DEPLOYMENT = loose({
    "name": STRING, "image": IMAGE, "dagsterApiGrpcArgs": STRINGS, "codeServerArgs": STRINGS,
    "includeConfigInLaunchedRuns": loose({"enabled": BOOLEAN}, ("enabled",)),
    "port": INTEGER, "env": ENV, "envConfigMaps": ENV_SOURCES, "envSecrets": ENV_SOURCES,
    "resources": RESOURCES, "podSecurityContext": OBJECT, "securityContext": OBJECT,
    "readinessProbe": loose({"enabled": BOOLEAN}),
}, ("name", "image", "port"))
K8S_RUN_LAUNCHER = strict({
    "image": IMAGE, "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "jobNamespace": {"type": ["string", "null"]}, "loadInclusterConfig": BOOLEAN,
    "kubeconfigFile": {"type": ["string", "null"]}, "envConfigMaps": ENV_SOURCES,
    "envSecrets": ENV_SOURCES, "envVars": STRINGS, "volumeMounts": {"type": "array"},
    "volumes": {"type": "array"}, "labels": OBJECT, "failPodOnRunFailure": BOOLEAN,
    "resources": RESOURCES, "schedulerName": ANY, "securityContext": OBJECT,
    "runK8sConfig": strict(dict.fromkeys(("containerConfig", "podSpecConfig",
                                          "podTemplateSpecMetadata", "jobSpecConfig",
                                          "jobMetadata"), OBJECT)),
}, ("imagePullPolicy", "loadInclusterConfig", "envConfigMaps", "envSecrets", "envVars",
    "volumeMounts", "volumes"))
RUN_COORDINATOR = {
    **strict({
        "enabled": BOOLEAN,
        "type": {"enum": ["QueuedRunCoordinator", "CustomRunCoordinator"]},
        "config": loose({
            "queuedRunCoordinator": strict({
                "maxConcurrentRuns": INT_SOURCE, "dequeueIntervalSeconds": INT_SOURCE,
                "dequeueNumWorkers": INT_SOURCE, "dequeueUseThreads": BOOLEAN,
                "tagConcurrencyLimits": {"type": "array", "items": TAG_LIMIT},
                "blockOpConcurrencyLimitedRuns": ANY}),
            "customRunCoordinator": CONFIGURABLE_CLASS,
        }),
    }, ("enabled", "type", "config")),
    "allOf": [
        {"if": {"properties": {"type": {"const": kind}}},
         "then": {"properties": {"config": {"required": [key]}}}}
        for kind, key in (("QueuedRunCoordinator", "queuedRunCoordinator"),
                          ("CustomRunCoordinator", "customRunCoordinator"))
    ],
}
THREADS = loose({"useThreads": BOOLEAN, "numWorkers": INTEGER, "numSubmitWorkers": INTEGER},
                ("useThreads",))
DAEMON = strict({
    **dict.fromkeys(K8S_FIELDS, ANY),
    "enabled": BOOLEAN, "image": IMAGE, "runCoordinator": RUN_COORDINATOR,
    "heartbeatTolerance": INTEGER, "env": ENV, "envConfigMaps": ENV_SOURCES,
    "envSecrets": ENV_SOURCES, "resources": RESOURCES, "checkDbReadyInitContainer": BOOLEAN,
    "runMonitoring": OBJECT,
    "runRetries": loose({"enabled": BOOLEAN, "maxRetries": INTEGER,
                         "retryOnAssetOrOpFailure": BOOLEAN}, ("enabled",)),
    "sensors": THREADS, "schedules": THREADS, "backfills": THREADS, "logFormat": ANY,
    "initContainerResources": ANY, "extraContainers": ANY,
    "extraPrependedInitContainers": ANY,
})
CHART_SCHEMA = strict({
    "global": loose({"postgresqlSecretName": STRING, "dagsterHome": STRING,
                     "serviceAccountName": STRING, "celeryConfigSecretName": STRING}),
    "generatePostgresqlPasswordSecret": BOOLEAN,
    "generateCeleryConfigSecret": BOOLEAN,
    "postgresql": loose({"enabled": BOOLEAN, "postgresqlHost": STRING,
                         "postgresqlUsername": STRING, "postgresqlPassword": STRING,
                         "postgresqlDatabase": STRING, "postgresqlParams": OBJECT,
                         "postgresqlScheme": {"type": ["string", "null"]}, "image": IMAGE,
                         "service": loose({"port": INTEGER}, ("port",))}),
    "dagsterWebserver": WEBSERVER,
    "dagster-user-deployments": loose({
        "enabled": BOOLEAN, "enableSubchart": BOOLEAN, "imagePullSecrets": {"type": "array"},
        "deployments": {"type": "array", "items": USER_DEPLOYMENT}}),
    "scheduler": loose({"type": {"enum": ["DagsterDaemonScheduler", "CustomScheduler"]},
                        "config": OBJECT}),
    "runLauncher": {
        **strict({"type": {"enum": ["CeleryK8sRunLauncher", "K8sRunLauncher",
                                    "CustomRunLauncher"]},
                  "config": loose({"k8sRunLauncher": K8S_RUN_LAUNCHER,
                                   "customRunLauncher": CONFIGURABLE_CLASS})},
                 ("type", "config")),
        "allOf": [{"if": {"properties": {"type": {"const": "K8sRunLauncher"}}},
                   "then": {"properties": {"config": {"required": ["k8sRunLauncher"]}}}}],
    },
    "dagsterDaemon": DAEMON,
    "retention": loose({"enabled": BOOLEAN,
                        "schedule": loose({"purgeAfterDays": INTEGER}),
                        "sensor": loose({"purgeAfterDays": {"type": ["integer", "object"]}})}),
    "telemetry": loose({"enabled": BOOLEAN}),
    # sections these values leave at the chart's defaults
    **dict.fromkeys(("rabbitmq", "redis", "flower", "ingress", "imagePullSecrets",
                     "computeLogManager", "pythonLogs", "busybox", "migrate",
                     "serviceAccount", "additionalInstanceConfig", "concurrency",
                     "defsStateStorage", "nameOverride", "fullnameOverride", "rbacEnabled"),
                    ANY),
})


@pytest.fixture(scope="module")
def values() -> dict:
    return load(HELM / "values.yaml")


@pytest.fixture(scope="module")
def instance_yaml() -> dict:
    return load(HELM / "instance.yaml")


@pytest.fixture(scope="module")
def deployment(values) -> dict:
    (only,) = values["dagster-user-deployments"]["deployments"]
    return only


def test_helm_values_validate_against_the_chart_schema(values):
    jsonschema.validate(values, CHART_SCHEMA)


@pytest.mark.parametrize("path, value", [
    (("dagsterDaemon", "runCoordinatr"), {"enabled": True}),  # misspelt section
    (("dagsterDaemon", "runCoordinator", "type"), "QueuedRunCoordinater"),
    (("dagsterDaemon", "runCoordinator", "config", "customRunCoordinator", "klass"), "X"),
    (("runLauncher", "config", "k8sRunLauncher", "envSecret"), [{"name": "x"}]),
    (("runLauncher", "config", "k8sRunLauncher", "envSecrets"), ["agg-pipeline-market-data"]),
    (("dagsterWebserver", "image", "pullPolicy"), "Sometimes"),
    (("dagsterDeamon",), {}),
])
def test_a_wrong_helm_key_fails_the_chart_schema(values, path, value):
    broken = copy.deepcopy(values)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, CHART_SCHEMA)


# ------------------------------------------------------------------ the k8s instance config


def validate_instance(config: dict, folder: Path) -> dict:
    """Dagster's own loading of an instance config (dagster.yaml's schema and its consistency
    rules), then every configurable class's config against that class's schema. The classes
    are imported, so a module that does not exist in this Dagster fails here."""
    (folder / "dagster.yaml").write_text(yaml.safe_dump(config))
    loaded, _ = dagster_instance_config(str(folder))
    for key in CONFIGURABLE:
        entry = loaded[key]
        klass = class_from_code_pointer(entry["module"], entry["class"])
        result = validate_config(klass.config_type(), entry.get("config") or {})
        if not result.success:
            raise DagsterInvalidConfigError(f"{key}: {entry['class']}", result.errors,
                                            entry.get("config"))
    return loaded


def test_instance_config_validates_with_dagster_and_dagster_k8s(instance_yaml, tmp_path):
    loaded = validate_instance(instance_yaml, tmp_path)
    launcher = class_from_code_pointer(loaded["run_launcher"]["module"],
                                       loaded["run_launcher"]["class"])
    assert launcher.__module__.startswith("dagster_k8s")
    # the Dagster set moves together: this dagster-k8s is the one of the installed dagster
    pins = importlib.metadata.requires("dagster-k8s")
    assert f"dagster=={importlib.metadata.version('dagster')}" in pins, pins


@pytest.mark.parametrize("path, value, named", [
    (("run_launcher", "config", "job_namespce"), "agg-pipeline", "job_namespce"),  # K8s'
    (("run_launcher", "config", "image_pull_policy"), 3, "image_pull_policy"),
    (("run_coordinator", "config", "max_concurent_runs"), 4, "max_concurent_runs"),
    # the module the chart's QueuedRunCoordinator values render, gone in Dagster 1.13
    (("run_coordinator", "module"), "dagster.core.run_coordinator", "dagster.core"),
    (("run_monitoring", "poll_interval"), 30, "poll_interval"),
    (("run_storage", "config", "postgres_db", "host"), "db", "host"),
])
def test_a_wrong_instance_key_fails(instance_yaml, tmp_path, path, value, named):
    broken = copy.deepcopy(instance_yaml)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises((DagsterInvalidConfigError, CheckError)) as failure:
        validate_instance(broken, tmp_path)
    errors = getattr(failure.value, "errors", [])
    assert named in str(failure.value) + " ".join(e.message for e in errors), failure.value


def storage_config(values: dict) -> dict:
    """templates/helpers/instance/_postgresql.tpl for these values."""
    postgresql = values["postgresql"]
    return {"postgres_db": {
        "username": postgresql["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": postgresql["postgresqlHost"], "db_name": postgresql["postgresqlDatabase"],
        "port": postgresql["service"]["port"], "params": postgresql["postgresqlParams"]}}


def test_instance_config_is_what_the_values_render(values, instance_yaml):
    for key in ("run_storage", "event_log_storage", "schedule_storage"):
        assert instance_yaml[key]["config"] == storage_config(values), key
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    rendered = instance_yaml["run_launcher"]["config"]
    assert values["runLauncher"]["type"] == instance_yaml["run_launcher"]["class"]
    assert rendered["job_namespace"] == launcher["jobNamespace"]
    assert rendered["image_pull_policy"] == launcher["imagePullPolicy"]
    assert rendered["load_incluster_config"] == launcher["loadInclusterConfig"]
    assert rendered["env_secrets"] == [s["name"] for s in launcher["envSecrets"]]
    assert rendered["env_vars"] == launcher["envVars"]
    assert rendered["resources"] == launcher["resources"]
    assert rendered["security_context"] == launcher["securityContext"]
    assert rendered["run_k8s_config"] == {
        "job_spec_config": launcher["runK8sConfig"]["jobSpecConfig"]}
    assert "job_image" not in rendered  # the image comes from the code server

    daemon = values["dagsterDaemon"]
    custom = daemon["runCoordinator"]["config"]["customRunCoordinator"]
    assert daemon["runCoordinator"]["type"] == "CustomRunCoordinator"
    assert instance_yaml["run_coordinator"] == custom
    monitoring = daemon["runMonitoring"]
    assert instance_yaml["run_monitoring"] == {
        "enabled": monitoring["enabled"],
        "start_timeout_seconds": monitoring["startTimeoutSeconds"],
        "cancel_timeout_seconds": monitoring["cancelTimeoutSeconds"],
        "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
        "poll_interval_seconds": monitoring["pollIntervalSeconds"],
        "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"]}
    retries = daemon["runRetries"]
    assert instance_yaml["run_retries"] == {
        "enabled": retries["enabled"], "max_retries": retries["maxRetries"],
        "retry_on_asset_or_op_failure": retries["retryOnAssetOrOpFailure"]}
    for key in ("sensors", "schedules"):
        assert instance_yaml[key] == {"use_threads": daemon[key]["useThreads"],
                                      "num_workers": daemon[key]["numWorkers"]}
    assert instance_yaml["backfills"] == {
        "use_threads": daemon["backfills"]["useThreads"],
        "num_workers": daemon["backfills"]["numWorkers"],
        "num_submit_workers": daemon["backfills"]["numSubmitWorkers"]}
    retention = values["retention"]
    assert instance_yaml["retention"] == {
        "sensor": {"purge_after_days": retention["sensor"]["purgeAfterDays"]},
        "schedule": {"purge_after_days": retention["schedule"]["purgeAfterDays"]}}
    assert instance_yaml["telemetry"] == values["telemetry"]


# ------------------------------------------------------------------ one truth: dagster.yaml


def test_run_queue_monitoring_and_retries_equal_dagster_yaml(instance_yaml):
    """The Kubernetes instance queues, monitors and retries runs as dagster.yaml (the image's
    instance, so compose's) does: the same limits, the same requeue of runs whose code server
    is unreachable, the same retry policy."""
    repo = load(ROOT / "dagster.yaml")
    queue = instance_yaml["run_coordinator"]["config"]
    runs = repo["concurrency"]["runs"]
    assert queue["max_concurrent_runs"] == runs["max_concurrent_runs"]
    assert queue["tag_concurrency_limits"] == runs["tag_concurrency_limits"]
    for key, value in repo["run_queue"].items():
        assert queue[key] == value, key
    monitoring = instance_yaml["run_monitoring"]
    for key, value in repo["run_monitoring"].items():
        if key == "max_runtime_seconds":
            # DefaultRunLauncher's backstop only: K8sRunLauncher watches its run pods
            assert key not in monitoring
            continue
        assert monitoring[key] == value, key
    assert instance_yaml["run_retries"] == repo["run_retries"]
    assert instance_yaml["sensors"] == repo["sensors"]
    assert instance_yaml["schedules"] == repo["schedules"]
    assert instance_yaml["backfills"] == repo["backfills"]
    assert instance_yaml["retention"] == repo["retention"]
    assert instance_yaml["telemetry"] == repo["telemetry"]


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in dockerfile().splitlines():
        if line.startswith("ENV "):
            env.update(item.split("=", 1) for item in shlex.split(line[4:]))
    return env


def test_every_process_carries_the_dagster_process_env(values, deployment):
    wanted = settings.DAGSTER_PROCESS_ENV
    assert wanted, "settings.DAGSTER_PROCESS_ENV is empty: nothing to check"
    # the image (every compose service and the Kubernetes code server and run pods)
    image = dockerfile_env()
    assert {k: image.get(k) for k in wanted} == wanted
    # compose: every Dagster process merges the shared block
    compose = load(DEPLOY / "compose.yaml")
    for name in ("code-server", "webserver", "daemon"):
        env = compose["services"][name]["environment"]
        assert {k: env.get(k) for k in wanted} == wanted, name
    # Kubernetes: webserver, daemon, code server, and the run pods K8sRunLauncher starts
    for where, env in (("dagsterWebserver", values["dagsterWebserver"]["env"]),
                       ("dagsterDaemon", values["dagsterDaemon"]["env"]),
                       ("user deployment", deployment["env"])):
        assert {k: env.get(k) for k in wanted} == wanted, where
    env_vars = dict(v.split("=", 1) for v in
                    values["runLauncher"]["config"]["k8sRunLauncher"]["envVars"])
    assert {k: env_vars.get(k) for k in wanted} == wanted


def test_image_command_user_and_health_check_are_the_deployments(values, deployment):
    command = image_command()
    # the chart starts `dagster code-server start -h 0.0.0.0 -p <port> <codeServerArgs>`
    assert command == ["dagster", "code-server", "start", "-h", "0.0.0.0",
                       "-p", str(deployment["port"]), *deployment["codeServerArgs"]]
    text = dockerfile()
    assert f"EXPOSE {deployment['port']}" in text
    health = re.search(r"^HEALTHCHECK .* CMD (\[.*\])$", text, re.M)
    assert health and json.loads(health.group(1)) == [
        "dagster", "api", "grpc-health-check", "-p", str(deployment["port"])]
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    assert entrypoint and json.loads(entrypoint.group(1)) == ["/usr/bin/tini", "-g", "--"]
    assert "args" not in deployment and "command" not in deployment  # the chart's own args
    uid = image_user()
    assert uid != 0
    assert deployment["podSecurityContext"]["runAsUser"] == uid
    assert values["runLauncher"]["config"]["k8sRunLauncher"]["securityContext"][
        "runAsUser"] == uid
    assert "[k8s]" in text and "[test]" not in text
    # the webserver and daemon run Dagster's image of the pinned release
    version = importlib.metadata.version("dagster")
    for section in ("dagsterWebserver", "dagsterDaemon"):
        assert values[section]["image"]["tag"] == version, section
    # compose's code server is the image's command as it stands
    compose = load(DEPLOY / "compose.yaml")
    assert "command" not in compose["services"]["code-server"]


def test_workspace_points_at_the_code_server(deployment, monkeypatch):
    workspace = load(DEPLOY / "workspace.yaml")
    (entry,) = workspace["load_from"]
    server = entry["grpc_server"]
    monkeypatch.setenv(server["host"]["env"], "code-server")
    monkeypatch.setenv(server["port"]["env"], "4000")
    loaded = ensure_workspace_config(workspace, str(DEPLOY / "workspace.yaml"))
    assert loaded["load_from"][0]["grpc_server"]["port"] == 4000
    command = image_command()
    assert server["location_name"] == command[command.index("--location-name") + 1]
    compose = load(DEPLOY / "compose.yaml")
    env = compose["services"]["webserver"]["environment"]
    assert env[server["host"]["env"]] == "code-server"  # the compose service's name
    assert int(env[server["port"]["env"]]) == deployment["port"]
    for name in ("webserver", "daemon"):
        command = compose["services"][name]["command"]
        assert command[command.index("-w") + 1] == "/opt/dagster/app/workspace.yaml"
    assert "COPY --chown=root:root deploy/workspace.yaml /opt/dagster/app/workspace.yaml" \
        in dockerfile()


def test_migration_runs_once_as_the_migrating_user(deployment):
    (job,) = load_all(HELM / "migrate-job.yaml")
    assert job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    image = deployment["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    assert container["args"] == ["agg-pipeline", "migrate"] and "command" not in container
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsUser"] == image_user()
    (source,) = container["envFrom"]
    secrets = {s["metadata"]["name"]: s for s in load_all(HELM / "secrets.example.yaml")}
    migrator = secrets[source["secretRef"]["name"]]
    assert set(migrator["stringData"]) == {settings.DATABASE_URL_VAR}
    # not the pipeline's least-privilege login, which cannot run DDL
    market = secrets["agg-pipeline-market-data"]["stringData"][settings.DATABASE_URL_VAR]
    assert migrator["stringData"][settings.DATABASE_URL_VAR] != market
    assert "agg_migrator" in migrator["stringData"][settings.DATABASE_URL_VAR]
    compose = load(DEPLOY / "compose.yaml")
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["agg-pipeline", "migrate"]
    assert "agg_migrator:" in migrate["environment"][settings.DATABASE_URL_VAR]
    assert compose["services"]["code-server"]["depends_on"]["migrate"] == {
        "condition": "service_completed_successfully"}


PLACEHOLDER = re.compile(r"^(change-me[-a-z]*|CHANGE-ME|unused|)$")


def test_secrets_come_only_from_the_environment(values, deployment):
    """No credential is written into a deployment file: compose takes every password from
    .env (deploy/.env.example holds placeholders), Kubernetes from Secrets (the example holds
    placeholders); the market-data URL reaches only the processes that run pipeline code."""
    compose = load(DEPLOY / "compose.yaml")
    services = compose["services"]
    urls = [value for service in services.values()
            for value in (service.get("environment") or {}).values()
            if str(value).startswith("postgresql://")]
    assert len(urls) >= 4, urls  # DAGSTER_POSTGRES_URL, the migrator's, the pipeline's
    for url in urls:
        password = re.match(r"postgresql://[^:/@]+:([^@]*)@", url)
        assert password and password.group(1).startswith("${"), url
    with_market = {name for name, service in services.items()
                   if settings.DATABASE_URL_VAR in (service.get("environment") or {})}
    assert with_market == {"migrate", "code-server"}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if "PASSWORD" in line.split("=")[0]:
            assert PLACEHOLDER.match(line.split("=", 1)[1]), line
    for secret in load_all(HELM / "secrets.example.yaml"):
        for key, value in secret["stringData"].items():
            password = re.search(r"://[^:/@]+:([^@]*)@", value)
            assert PLACEHOLDER.match(password.group(1) if password else value), (key, value)
    assert values["global"]["postgresqlSecretName"] in {
        s["metadata"]["name"] for s in load_all(HELM / "secrets.example.yaml")}
    assert values["generatePostgresqlPasswordSecret"] is False
    assert PLACEHOLDER.match(values["postgresql"]["postgresqlPassword"])
    names = [s["name"] for s in deployment["envSecrets"]]
    assert names == ["agg-pipeline-market-data"]
    assert not values["dagsterWebserver"].get("envSecrets")
    assert not values["dagsterDaemon"].get("envSecrets")
    assert (DEPLOY / ".gitignore").read_text().splitlines()[-1] == ".env"


# ------------------------------------------------------------------ compose under podman-compose
# deploy/smoke_compose.sh runs the file for real (CI's image part); these keep the fixes it
# needed in place without a container engine.


def test_compose_migrate_waits_for_the_database_itself():
    """podman-compose on podman < 4.6 ignores `service_healthy`, and podman (before a 2025
    fix) cannot start the code server (it requires the exited `migrate`) when `migrate`
    requires the running postgres: so `migrate` has no depends_on and waits for the server in
    its entrypoint, a script the image carries."""
    compose = load(DEPLOY / "compose.yaml")
    migrate = compose["services"]["migrate"]
    assert "depends_on" not in migrate
    script = "/opt/dagster/app/wait_for_database.py"
    assert migrate["entrypoint"] == ["/usr/bin/tini", "-g", "--", "python", script]
    assert f"COPY --chown=root:root deploy/wait_for_database.py {script}" in dockerfile()
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!deploy/wait_for_database.py" in ignore
    # the code server still starts only after a successful migration (Docker Compose; 1.6
    # waits for the container to exit), and stops before the database (Docker Compose stops
    # in reverse dependency order; migrate no longer links it to postgres)
    assert compose["services"]["code-server"]["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"},
        "postgres": {"condition": "service_started"}}
    # the postgres health check goes over TCP: while postgres-init/ runs, the server listens
    # on its Unix socket only, so a socket check would pass before the roles exist
    test = compose["services"]["postgres"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"] and test[test.index("-h") + 1] == "127.0.0.1"


def test_wait_for_database_gives_up_without_the_password():
    spec = importlib.util.spec_from_file_location("wait_for_database",
                                                  DEPLOY / "wait_for_database.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    secret = "s3cret-Password-42"
    # nothing listens on port 1: an outage, retried until the (zero) deadline, then reported
    error = module.wait(f"postgresql://agg_migrator:{secret}@127.0.0.1:1/markets", 0)
    assert error and "127.0.0.1:1/markets" in error and secret not in error
    assert module.main([]) == 2


def test_compose_shares_the_compute_logs_with_the_webserver():
    """Run workers are the code server's processes: the steps' captured output lands in its
    DAGSTER_HOME/storage, which the webserver must see to show it."""
    compose = load(DEPLOY / "compose.yaml")
    storage = dockerfile_env()["DAGSTER_HOME"] + "/storage"
    assert f"dagster-storage:{storage}" in compose["services"]["code-server"]["volumes"]
    assert f"dagster-storage:{storage}:ro" in compose["services"]["webserver"]["volumes"]
    assert "dagster-storage" in compose["volumes"]


def test_compose_postgres_image_keeps_the_official_contract():
    """deploy/postgres/ (PostgreSQL from Debian's packages) serves compose as the official
    image would: the data volume's path, the init scripts' folder, the superuser variables."""
    compose = load(DEPLOY / "compose.yaml")
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("${AGG_POSTGRES_IMAGE:-postgres:15")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in postgres["volumes"]}
    assert mounts["/var/lib/postgresql/data"] == "pgdata"
    assert mounts["/docker-entrypoint-initdb.d"] == "./postgres-init"
    image = (DEPLOY / "postgres" / "Dockerfile").read_text()
    entrypoint = (DEPLOY / "postgres" / "docker-entrypoint.sh").read_text()
    assert "PGDATA=/var/lib/postgresql/data" in image and "postgresql-15" in image
    assert "--uid 999" in image and "STOPSIGNAL SIGINT" in image
    assert "/docker-entrypoint-initdb.d/*" in entrypoint
    assert 'POSTGRES_USER="${POSTGRES_USER:-postgres}"' in entrypoint
    # the password reaches initdb through a file descriptor, never its command line
    assert '--pwfile=<(printf' in entrypoint
    init = (DEPLOY / "postgres-init" / "10-agg-roles.sh").read_text()
    assert "$POSTGRES_USER" in init
