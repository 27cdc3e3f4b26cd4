"""Static checks of the docker compose deployment: docker-compose.yaml, Dockerfile, .env.example,
docker/ (postgres-init, rabbitmq) and scripts/compose_env.py.

No Docker engine runs here, so `docker compose config` cannot validate the file; these tests parse
it with PyYAML (which resolves the `<<: *anchor` merges like compose does) and assert the properties
the deployment depends on. Each test names one property.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import yaml

from include.harvest.settings import DEFAULT_USER_AGENT
from scripts import compose_env, stack

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
LOCK = REPO / "requirements.lock"

AIRFLOW_VERSION = "3.3.2"
# Services built from x-airflow-common. airflow-cli (debug profile) is checked too when present.
AIRFLOW_SERVICES = [
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "flower",
    "airflow-remote-worker",
]
# Runs on another machine: waits for nothing on its own machine and mounts none of the repo's folders.
REMOTE_WORKER = "airflow-remote-worker"
REQUIRED_SERVICES = ["postgres", "redis", "rabbitmq", *AIRFLOW_SERVICES]
# Everything but the one-shot init: these must report health.
LONG_RUNNING = [s for s in REQUIRED_SERVICES if s != "airflow-init"]
SECRET_SETTINGS = {
    "AIRFLOW__CORE__FERNET_KEY": "AIRFLOW_FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET": "AIRFLOW_JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY": "AIRFLOW_API_SECRET_KEY",
}
# Every secret scripts/compose_env.py writes into .env: Airflow's and the RabbitMQ password.
GENERATED_SECRETS = [*SECRET_SETTINGS.values(), "RABBITMQ_PASSWORD"]
# Setting of the common environment -> (the .env variable it comes from, its default). The defaults
# are this machine's containers and its ./data mount; a worker on another machine overrides them.
OVERRIDABLE = {
    "HARVEST_STORAGE_URI": ("HARVEST_STORAGE_URI", "file:///opt/airflow/data/storage"),
    "HARVEST_WORK_URI": ("HARVEST_WORK_URI", "file:///opt/airflow/data/work"),
    "HARVEST_URL_LIST_URI": ("HARVEST_URL_LIST_URI", "file:///opt/airflow/data/url_lists"),
    # The library's own default, written out so the header a site owner reads is visible here.
    "HARVEST_USER_AGENT": ("HARVEST_USER_AGENT", DEFAULT_USER_AGENT),
    "HARVEST_KEEP_WORK_FILES": ("HARVEST_KEEP_WORK_FILES", "false"),
    "HARVEST_REDIS_URL": ("HARVEST_REDIS_URL", "redis://redis:6379/1"),
    "AIRFLOW__CELERY__BROKER_URL": ("HARVEST_BROKER_URL", "redis://:@redis:6379/0"),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
        "HARVEST_METADATA_DB_URL",
        "postgresql+psycopg2://airflow:airflow@postgres:5432/airflow",
    ),
    "AIRFLOW_CONN_HARVEST_DB": (
        "HARVEST_RESULTS_DB_URL",
        "postgresql://airflow:airflow@postgres:5432/harvest",
    ),
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": (
        "HARVEST_EXECUTION_API_URL",
        "http://airflow-apiserver:8080/execution/",
    ),
}
# AWS variables passed through to the containers only when .env or the shell sets them.
AWS_PASSTHROUGH = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"]
# How RabbitMQ is switched on, as the header of docker-compose.yaml and .env.example tell it.
RABBITMQ_BROKER_URL = "HARVEST_BROKER_URL=amqp://harvest:<RABBITMQ_PASSWORD>@rabbitmq:5672//"
RABBITMQ_START = "docker compose --profile rabbitmq up -d"
# Airflow's visibility timeout for a Redis broker (providers/celery default_celery.py), in seconds.
AIRFLOW_REDIS_VISIBILITY_TIMEOUT_S = 86400
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
VAR_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")
REQUIRED_REF = re.compile(r"^\$\{(?P<name>[A-Z_][A-Z0-9_]*):\?(?P<message>[^}]+)\}$")


# ---- helpers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def common_env(compose: dict[str, Any]) -> dict[str, str]:
    return compose["x-airflow-common"]["environment"]


def airflow_services(services: dict[str, Any]) -> list[str]:
    return [name for name in [*AIRFLOW_SERVICES, "airflow-cli"] if name in services]


def compose_text_without_escapes() -> str:
    # `$$` is compose's escape for a literal `$` handed to the container (e.g. $${HOSTNAME}).
    return COMPOSE_FILE.read_text().replace("$$", "")


def referenced_variables() -> set[str]:
    """Variables compose interpolates (``${X}``) and those it passes through (``X:`` without a value)."""
    interpolated = {m["name"] for m in VAR_REF.finditer(compose_text_without_escapes())}
    return interpolated | passthrough_variables()


def passthrough_variables() -> set[str]:
    """Environment entries without a value: compose takes them from .env or the shell, else leaves them out."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    blocks = [compose["x-airflow-common"]["environment"]]
    blocks += [service.get("environment") or {} for service in compose["services"].values()]
    return {
        key for block in blocks if isinstance(block, dict) for key, value in block.items() if value is None
    }


def compose_header() -> str:
    """The comment block at the top of docker-compose.yaml, without the ``#`` marks."""
    lines = []
    for line in COMPOSE_FILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.removeprefix("#").strip())
    return "\n".join(lines)


def resolve_default(value: str) -> str:
    """The value compose uses when the variable is unset: ``${X:-default}`` -> ``default``."""
    return VAR_REF.sub(lambda m: m["arg"] if m["op"] in (":-", "-") else m.group(0), value)


def volume_map(volumes: list[str]) -> dict[str, str]:
    """container path -> host path for short-syntax bind mounts."""
    result = {}
    for volume in volumes:
        source, target, *_ = volume.split(":")
        result[target] = source
    return result


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, comments dropped and continuation lines joined."""
    logical, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def known_airflow_options() -> set[tuple[str, str]]:
    """(section, option) pairs of the installed Airflow core config and the celery provider.

    Read from the packages' own files, without importing airflow (which would initialise a config).
    """
    spec = importlib.util.find_spec("airflow")
    assert spec and spec.submodule_search_locations, "apache-airflow is not installed in this venv"
    options: set[tuple[str, str]] = set()
    for location in spec.submodule_search_locations:
        core = Path(location) / "config_templates" / "config.yml"
        if core.exists():
            for section, body in yaml.safe_load(core.read_text()).items():
                options |= {(section, option) for option in body.get("options", {})}
        provider = Path(location) / "providers" / "celery" / "get_provider_info.py"
        if provider.exists():
            provider_spec = importlib.util.spec_from_file_location("_celery_provider_info", provider)
            assert provider_spec and provider_spec.loader
            module = importlib.util.module_from_spec(provider_spec)
            provider_spec.loader.exec_module(module)
            for section, body in module.get_provider_info().get("config", {}).items():
                options |= {(section, option) for option in body.get("options", {})}
    return options


# ---- services -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REQUIRED_SERVICES)
def test_required_service_exists(services: dict[str, Any], name: str) -> None:
    assert name in services, f"docker-compose.yaml has no `{name}` service"


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("airflow-apiserver", "api-server"),
        ("airflow-scheduler", "scheduler"),
        ("airflow-dag-processor", "dag-processor"),
        ("airflow-triggerer", "triggerer"),
        ("airflow-worker", "celery worker"),
        ("airflow-remote-worker", "celery worker"),
        ("flower", "celery flower"),
    ],
)
def test_service_runs_its_airflow_component(services: dict[str, Any], name: str, command: str) -> None:
    assert services[name]["command"] == command


def test_api_server_is_published_on_8080(services: dict[str, Any]) -> None:
    ports = [resolve_default(str(p)) for p in services["airflow-apiserver"]["ports"]]
    assert "8080:8080" in ports, ports


# ---- one shared environment -------------------------------------------------------------------
def test_every_airflow_service_gets_the_whole_common_environment(
    services: dict[str, Any], common_env: dict[str, str]
) -> None:
    for name in airflow_services(services):
        env = services[name]["environment"]
        missing = sorted(set(common_env) - set(env))
        assert not missing, f"{name} lacks {missing}"
        differing = sorted(k for k in common_env if env[k] != common_env[k])
        assert not differing, f"{name} overrides shared settings {differing}"


def test_jwt_secret_is_one_reference_shared_by_all(services: dict[str, Any]) -> None:
    values = {services[n]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] for n in airflow_services(services)}
    assert len(values) == 1, f"services sign JWTs with different secrets: {values}"
    (value,) = values
    assert REQUIRED_REF.match(value), value


def test_execution_api_url_points_at_the_api_server(
    services: dict[str, Any], common_env: dict[str, str]
) -> None:
    urls = {
        services[n]["environment"]["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
        for n in airflow_services(services)
    }
    assert len(urls) == 1, urls
    # The default; a worker on another machine sets HARVEST_EXECUTION_API_URL.
    url = urlsplit(resolve_default(urls.pop()))
    assert url.hostname == "airflow-apiserver" and url.hostname in services
    assert services[url.hostname]["command"] == "api-server"
    # The container port the api-server listens on (right side of its port mapping).
    container_ports = {str(p).rsplit(":", 1)[-1] for p in services[url.hostname]["ports"]}
    assert str(url.port) in container_ports
    assert url.path == "/execution/"


def test_celery_executor_with_redis_broker_and_postgres_results(common_env: dict[str, str]) -> None:
    assert common_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    broker = urlsplit(resolve_default(common_env["AIRFLOW__CELERY__BROKER_URL"]))
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    backend = urlsplit(resolve_default(common_env["AIRFLOW__CELERY__RESULT_BACKEND"]))
    assert backend.scheme.startswith("db+postgresql") and backend.hostname == "postgres"


def test_harvest_settings_in_the_common_environment(common_env: dict[str, str]) -> None:
    assert common_env["PYTHONPATH"] == "/opt/airflow"
    assert common_env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert common_env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "false"
    redis_url = urlsplit(resolve_default(common_env["HARVEST_REDIS_URL"]))
    broker = urlsplit(resolve_default(common_env["AIRFLOW__CELERY__BROKER_URL"]))
    assert redis_url.hostname == "redis"
    # Coordination keys must not share the Celery broker's Redis database.
    assert redis_url.path != broker.path, (redis_url.path, broker.path)


# ---- settings from .env ----------------------------------------------------------------------------
@pytest.mark.parametrize(("setting", "variable", "default"), [(s, v, d) for s, (v, d) in OVERRIDABLE.items()])
def test_setting_comes_from_env_with_a_local_default(
    common_env: dict[str, str], setting: str, variable: str, default: str
) -> None:
    # `:-`, not `-`: an empty line in .env (`HARVEST_WORK_URI=`) falls back to the default too.
    assert common_env[setting] == f"${{{variable}:-{default}}}"


def test_result_backend_follows_the_metadata_database(common_env: dict[str, str]) -> None:
    # One variable moves both: Celery's task states live in Airflow's metadata database.
    assert (
        common_env["AIRFLOW__CELERY__RESULT_BACKEND"]
        == "db+" + common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    )


def test_keep_work_files_default_is_false_for_the_library(common_env: dict[str, str]) -> None:
    from include.harvest.hooks import keep_work_files

    default = resolve_default(common_env["HARVEST_KEEP_WORK_FILES"])
    assert keep_work_files({"HARVEST_KEEP_WORK_FILES": default}) is False
    assert keep_work_files({"HARVEST_KEEP_WORK_FILES": "true"}) is True


def test_aws_variables_reach_every_airflow_container_without_defaults(services: dict[str, Any]) -> None:
    for name in airflow_services(services):
        env = services[name]["environment"]
        for key in AWS_PASSTHROUGH:
            # No value: compose passes the one from .env or the shell, or leaves the variable unset.
            assert key in env and env[key] is None, (name, key, env.get(key))
        # An empty region breaks botocore (next test): never empty, us-east-1 as botocore when unset.
        assert env["AWS_DEFAULT_REGION"] == "${AWS_DEFAULT_REGION:-us-east-1}", name
    # Nowhere in the file do the keys or the endpoint get a value, not even an empty default.
    assert not [
        m.group(0) for m in VAR_REF.finditer(compose_text_without_escapes()) if m["name"] in AWS_PASSTHROUGH
    ]


def test_botocore_treats_empty_aws_variables_as_compose_assumes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Why the AWS keys and endpoint may pass through empty but the region may not (pinned botocore)."""
    session_module = pytest.importorskip("botocore.session")

    def s3_client(**env: str) -> Any:
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            monkeypatch.delenv(key)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        session = session_module.get_session()
        return session, session.create_client("s3", aws_access_key_id="k", aws_secret_access_key="s")

    _, unset = s3_client()
    _, default = s3_client(AWS_DEFAULT_REGION="us-east-1")
    assert (default.meta.region_name, default.meta.endpoint_url) == (
        unset.meta.region_name,
        unset.meta.endpoint_url,
    ), "the compose default region must behave like no region"
    with pytest.raises(ValueError, match="Invalid endpoint"):
        s3_client(AWS_DEFAULT_REGION="")
    _, empty_endpoint = s3_client(AWS_ENDPOINT_URL="")
    assert empty_endpoint.meta.endpoint_url == unset.meta.endpoint_url

    # Empty keys are skipped: credentials come from the next provider (here a credentials file).
    (tmp_path / "credentials").write_text("[default]\naws_access_key_id=FROM_FILE\naws_secret_access_key=x\n")
    session, _ = s3_client(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    credentials = session_module.get_session().get_credentials()
    assert credentials is not None and credentials.access_key == "FROM_FILE"


def test_aws_variables_are_commented_out_in_env_example() -> None:
    # Commented out, they stay unset in the containers; the secret key never has a value here.
    text = ENV_EXAMPLE.read_text()
    for key in [*AWS_PASSTHROUGH, "AWS_DEFAULT_REGION"]:
        assert re.search(rf"^#\s*{key}=", text, re.MULTILINE), f".env.example does not document {key}"
        assert not re.search(rf"^{key}=", text, re.MULTILINE), f"{key} must be commented out"
    assert re.search(r"^#\s*AWS_SECRET_ACCESS_KEY=$", text, re.MULTILINE)


# ---- fault tolerance ------------------------------------------------------------------------------
def test_fault_tolerance_settings_match_the_local_stack(common_env: dict[str, str]) -> None:
    # scripts/stack.py writes the same values into the local stack's airflow.cfg.
    heartbeat = common_env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"]
    api_timeout = common_env["AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT"]
    assert float(heartbeat) == stack.TASK_HEARTBEAT_TIMEOUT_S
    assert float(api_timeout) == stack.EXECUTION_API_TIMEOUT_S
    # Airflow's defaults are 300 s (heartbeat) and 5 s (Execution API): the point is to differ.
    assert float(heartbeat) < 300 and float(api_timeout) > 5


def test_workers_fix_mallocs_mmap_threshold_as_the_local_stack_does(common_env: dict[str, str]) -> None:
    assert int(common_env["MALLOC_MMAP_THRESHOLD_"]) == stack.MALLOC_MMAP_THRESHOLD
    assert stack.Stack().environment()["MALLOC_MMAP_THRESHOLD_"] == str(stack.MALLOC_MMAP_THRESHOLD)


# ---- brokers --------------------------------------------------------------------------------------
def test_redis_broker_keeps_its_queue_across_restarts(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    redis = services["redis"]
    command = redis["command"] if isinstance(redis["command"], str) else " ".join(redis["command"])
    assert re.search(r"redis-server\b.*--appendonly\s+yes", command), command
    source = volume_map(redis["volumes"]).get("/data")
    assert source in (compose.get("volumes") or {}), "redis /data must be a named volume"


def test_rabbitmq_is_an_optional_profile_service(compose: dict[str, Any], services: dict[str, Any]) -> None:
    rabbit = services["rabbitmq"]
    assert rabbit["profiles"] == ["rabbitmq"]
    # Pinned to a release line, with the management plugin (UI, and rabbitmq-diagnostics works alike).
    assert re.fullmatch(r"rabbitmq:\d+\.\d+(\.\d+)?-management(-alpine)?", rabbit["image"]), rabbit["image"]
    # The node name rabbit@<hostname> keys its data in the volume: it must not change on re-creation.
    assert rabbit["hostname"] == "rabbitmq"
    assert volume_map(rabbit["volumes"]).get("/var/lib/rabbitmq") in (compose.get("volumes") or {})
    assert rabbit["environment"]["RABBITMQ_DEFAULT_USER"] == "harvest"
    # AMQP stays on the compose network; anything published is on loopback only.
    for port in rabbit.get("ports") or []:
        published = resolve_default(str(port))
        assert published.startswith("127.0.0.1:"), published
        assert not published.endswith(":5672"), published


def test_rabbitmq_password_is_a_generated_secret_without_default() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    match = REQUIRED_REF.match(str(compose["services"]["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"]))
    assert match and match["name"] == "RABBITMQ_PASSWORD"
    refs = [m for m in VAR_REF.finditer(compose_text_without_escapes()) if m["name"] == "RABBITMQ_PASSWORD"]
    assert refs and all(m["op"] == ":?" for m in refs)


def test_every_required_variable_is_generated_by_compose_env() -> None:
    # Compose checks `:?` for the whole file, whatever the active profiles: `make compose-env` must
    # provide each one, or `docker compose up` fails for everybody (e.g. Redis users and RabbitMQ).
    required = {m["name"] for m in VAR_REF.finditer(compose_text_without_escapes()) if m["op"] == ":?"}
    assert required <= set(compose_env.GENERATED), sorted(required - set(compose_env.GENERATED))


def test_no_airflow_service_depends_on_rabbitmq(services: dict[str, Any]) -> None:
    # Optional: a dependency would force `--profile rabbitmq` on every start.
    for name, service in services.items():
        assert "rabbitmq" not in (service.get("depends_on") or {}), name


def test_rabbitmq_gives_long_batches_time_to_finish(services: dict[str, Any]) -> None:
    # Airflow's Celery acks late: a message held longer than consumer_timeout (RabbitMQ's default
    # 30 min) would be delivered again while its batch still runs.
    mounts = volume_map(services["rabbitmq"]["volumes"])
    configs = {
        target: source for target, source in mounts.items() if target.startswith("/etc/rabbitmq/conf.d/")
    }
    assert configs, "no Harvest config file in /etc/rabbitmq/conf.d/"
    text = "\n".join((REPO / source).read_text() for source in configs.values())
    match = re.search(r"^\s*consumer_timeout\s*=\s*(\d+)\s*$", text, re.MULTILINE)
    assert match, "consumer_timeout is not set"
    assert int(match[1]) >= AIRFLOW_REDIS_VISIBILITY_TIMEOUT_S * 1000


def test_rabbitmq_switch_is_documented(services: dict[str, Any]) -> None:
    for text in (compose_header(), ENV_EXAMPLE.read_text()):
        assert RABBITMQ_BROKER_URL in text
        assert RABBITMQ_START in text
    # The documented URL matches the service: its user, its name on the network, AMQP's port.
    url = urlsplit(RABBITMQ_BROKER_URL.split("=", 1)[1])
    assert url.username == services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_USER"]
    assert url.hostname in services and url.port == 5672


# ---- workers on other machines ---------------------------------------------------------------------
def test_remote_worker_needs_only_the_image_env_and_network(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    remote, local = services[REMOTE_WORKER], services["airflow-worker"]
    assert remote["profiles"] == ["remote-worker"], "`docker compose up` must not start it here"
    # Postgres, the broker and the api-server are on other machines: nothing to wait for here.
    assert not remote.get("depends_on")
    # No bind mount: ./include or ./dags missing on that machine would hide the image's code.
    for volume in remote.get("volumes") or []:
        source = str(volume).split(":", 1)[0]
        assert source in (compose.get("volumes") or {}), f"{REMOTE_WORKER} mounts {volume}"
    assert remote["image"] == local["image"]
    assert remote.get("pull_policy") in ("missing", "if_not_present")
    for key in ("command", "healthcheck", "stop_grace_period"):
        assert remote[key] == local[key], key
    assert remote["environment"]["DUMB_INIT_SETSID"] == "0"


def test_remote_worker_serves_its_task_logs(common_env: dict[str, str], services: dict[str, Any]) -> None:
    remote = services[REMOTE_WORKER]
    # The UI fetches a task's log from <reported hostname>:8793: the machine's reachable name.
    assert "HARVEST_HOSTNAME" in remote["environment"] and remote["environment"]["HARVEST_HOSTNAME"] is None
    module, _, function = common_env["AIRFLOW__CORE__HOSTNAME_CALLABLE"].rpartition(".")
    assert module == "include.harvest.hooks"
    assert callable(getattr(importlib.import_module(module), function))
    assert "8793:8793" in [resolve_default(str(p)) for p in remote["ports"]]


def test_remote_worker_setup_is_documented() -> None:
    header = compose_header()
    assert "docker compose up -d airflow-remote-worker" in header
    for variable in {v for v, _ in OVERRIDABLE.values()} - {"HARVEST_USER_AGENT", "HARVEST_KEEP_WORK_FILES"}:
        assert variable in header, f"the header does not say what {variable} is on a remote worker"
    assert "HARVEST_HOSTNAME" in header


def test_every_airflow_setting_is_a_real_option(common_env: dict[str, str], services: dict[str, Any]) -> None:
    """A typo in AIRFLOW__SECTION__KEY is silently ignored by Airflow; catch it here."""
    known = known_airflow_options()
    names = set(common_env) | {k for n in airflow_services(services) for k in services[n]["environment"]}
    unknown = sorted(
        name
        for name in names
        if name.startswith("AIRFLOW__")
        and tuple(name.removeprefix("AIRFLOW__").lower().split("__", 1)) not in known
    )
    assert not unknown, f"not options of the installed Airflow {AIRFLOW_VERSION}: {unknown}"


# ---- image --------------------------------------------------------------------------------------
def test_airflow_services_run_the_image_built_from_the_dockerfile(services: dict[str, Any]) -> None:
    for name in airflow_services(services):
        build = services[name].get("build")
        assert build, f"{name} is not built from the Dockerfile"
        context = build if isinstance(build, str) else build["context"]
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (REPO / context / dockerfile).resolve() == DOCKERFILE
        # One tag for all: built once, the same code everywhere.
        assert "${AIRFLOW_IMAGE_NAME" in services[name]["image"]
    assert len({services[n]["image"] for n in airflow_services(services)}) == 1


def test_dockerfile_starts_from_airflow_3_3_2() -> None:
    instruction, argument = dockerfile_instructions()[0]
    assert instruction == "FROM"
    assert re.fullmatch(rf"apache/airflow:{re.escape(AIRFLOW_VERSION)}(-python3\.\d+)?", argument), argument


def test_dockerfile_installs_the_lock_as_the_airflow_user() -> None:
    instructions = dockerfile_instructions()
    copy_lock = next(
        i for i, (ins, arg) in enumerate(instructions) if ins == "COPY" and "requirements.lock" in arg
    )
    install = next(
        i
        for i, (ins, arg) in enumerate(instructions)
        if ins == "RUN" and "pip install" in arg and re.search(r"-r\s+\S*requirements\.lock", arg)
    )
    assert copy_lock < install
    assert "--no-cache-dir" in instructions[install][1]
    users = [arg for ins, arg in instructions[:install] if ins == "USER"]
    assert users and users[-1] == "airflow", "pip must run as the airflow user"


def test_dockerfile_bakes_in_the_code_with_pythonpath() -> None:
    instructions = dockerfile_instructions()
    copies = [arg for ins, arg in instructions if ins == "COPY"]
    for folder in ("include", "dags", "plugins"):
        assert any(re.search(rf"\b{folder}/?\s+/opt/airflow/{folder}/?$", c) for c in copies), folder
        assert (REPO / folder).is_dir(), f"COPY {folder}/ needs the folder in the build context"
    assert ("ENV", "PYTHONPATH=/opt/airflow") in instructions


def test_lock_pins_the_same_airflow_as_the_image_and_a_working_celery() -> None:
    assert LOCK.exists(), "the Dockerfile installs requirements.lock, which is missing"
    pins = dict(
        line.split("==", 1)
        for line in LOCK.read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    pins = {k.strip().lower(): v.strip() for k, v in pins.items()}
    assert pins.get("apache-airflow") == AIRFLOW_VERSION
    # celery 5.7.0 breaks apache-airflow-providers-celery 3.26.0: "cannot import name 'retry' from
    # 'celery.backends.database'", and the scheduler then cannot load the CeleryExecutor.
    assert pins.get("celery", "").startswith("5.6."), pins.get("celery")


# ---- workers ------------------------------------------------------------------------------------
def test_worker_can_be_scaled(services: dict[str, Any]) -> None:
    worker = services["airflow-worker"]
    # A fixed name or host port would make the second replica of `--scale airflow-worker=N` fail.
    assert "container_name" not in worker
    assert "hostname" not in worker
    assert not worker.get("ports")
    assert worker["environment"]["DUMB_INIT_SETSID"] == "0"


# ---- health and start order ---------------------------------------------------------------------
@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_service_has_a_healthcheck(services: dict[str, Any], name: str) -> None:
    check = services[name].get("healthcheck") or {}
    assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
    assert check["test"][0] in ("CMD", "CMD-SHELL")


@pytest.mark.parametrize(
    ("name", "probe"),
    [
        ("postgres", "pg_isready"),
        ("redis", "redis-cli ping"),
        ("rabbitmq", "rabbitmq-diagnostics -q ping"),
        ("airflow-apiserver", "localhost:8080/api/v2/"),
        ("airflow-scheduler", "localhost:8974/health"),
        ("airflow-dag-processor", "--job-type DagProcessorJob"),
        ("airflow-triggerer", "--job-type TriggererJob"),
        ("airflow-worker", "inspect ping"),
        ("airflow-remote-worker", "inspect ping"),
        ("flower", "localhost:5555"),
    ],
)
def test_healthcheck_probes_the_service_itself(services: dict[str, Any], name: str, probe: str) -> None:
    assert probe in " ".join(services[name]["healthcheck"]["test"])


def test_scheduler_health_server_is_enabled(common_env: dict[str, str]) -> None:
    assert common_env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"


def test_airflow_services_wait_for_healthy_backends_and_init(services: dict[str, Any]) -> None:
    for name in airflow_services(services):
        if name == REMOTE_WORKER:  # its backends run on other machines
            continue
        depends = services[name]["depends_on"]
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for backend in ("postgres", "redis"):
            assert depends[backend]["condition"] == "service_healthy", (name, backend)
        if name not in ("airflow-init", "airflow-cli"):
            assert depends["airflow-init"]["condition"] == "service_completed_successfully", name


def test_worker_waits_for_a_healthy_api_server(services: dict[str, Any]) -> None:
    # Tasks talk to the Execution API from their first second.
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"


def test_init_migrates_both_databases_and_fails_loudly(services: dict[str, Any]) -> None:
    init = services["airflow-init"]
    script = " ".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    assert "set -euo pipefail" in script or "set -e" in script, "a failed step must fail the init"
    assert re.search(r"airflow db migrate(?!\s*\|\|)", script)
    assert "python -m include.harvest.migrations" in script
    assert init["user"] == "0:0", "init runs as root to give the shared folders to AIRFLOW_UID"
    assert "chown" in script and "/opt/airflow/data" in script


# ---- databases ----------------------------------------------------------------------------------
def test_postgres_init_script_creates_the_harvest_database(services: dict[str, Any]) -> None:
    mounts = volume_map(services["postgres"]["volumes"])
    source = mounts.get("/docker-entrypoint-initdb.d")
    assert source, "postgres has no /docker-entrypoint-initdb.d mount"
    scripts = sorted((REPO / source).glob("*.sql"))
    assert scripts, f"no .sql file in {source}"
    sql = "\n".join(s.read_text() for s in scripts)
    assert re.search(r"^\s*CREATE\s+DATABASE\s+harvest\b", sql, re.IGNORECASE | re.MULTILINE)


def test_connections_point_at_the_postgres_service(
    services: dict[str, Any], common_env: dict[str, str]
) -> None:
    metadata = urlsplit(resolve_default(common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]))
    results = urlsplit(resolve_default(common_env["AIRFLOW_CONN_HARVEST_DB"]))
    assert metadata.hostname == results.hostname == "postgres"
    assert metadata.path == f"/{services['postgres']['environment']['POSTGRES_DB']}" == "/airflow"
    assert results.path == "/harvest"


# ---- volumes ------------------------------------------------------------------------------------
def test_shared_folders_are_mounted(compose: dict[str, Any], services: dict[str, Any]) -> None:
    expected = {
        f"/opt/airflow/{f}": f"./{f}" for f in ("dags", "include", "plugins", "logs", "data", "config")
    }
    for name in airflow_services(services):
        if name == REMOTE_WORKER:  # runs the image's code; see test_remote_worker_needs_only_...
            continue
        mounts = volume_map(services[name]["volumes"])
        for target, source in expected.items():
            assert mounts.get(target) == source, (name, target, mounts.get(target))


def test_harvest_files_live_on_the_shared_data_mount(common_env: dict[str, str]) -> None:
    for key in ("HARVEST_STORAGE_URI", "HARVEST_WORK_URI", "HARVEST_URL_LIST_URI"):
        url = urlsplit(resolve_default(common_env[key]))
        assert url.scheme == "file" and url.path.startswith("/opt/airflow/data/"), (key, url)


# ---- secrets and login --------------------------------------------------------------------------
@pytest.mark.parametrize(("setting", "variable"), SECRET_SETTINGS.items())
def test_secret_is_a_required_variable_without_default(
    common_env: dict[str, str], setting: str, variable: str
) -> None:
    match = REQUIRED_REF.match(str(common_env[setting]))
    assert match, f"{setting}={common_env[setting]!r} must be ${{{variable}:?...}}"
    assert match["name"] == variable
    # Nowhere in the file may the variable be given a fallback value.
    refs = [m for m in VAR_REF.finditer(compose_text_without_escapes()) if m["name"] == variable]
    assert refs and all(m["op"] == ":?" for m in refs)


def test_no_literal_secret_in_any_service(services: dict[str, Any]) -> None:
    # The local Postgres password is upstream's `airflow`, reachable only on the compose network
    # (postgres publishes no port); everything else secret must come from .env.
    allowed = {"POSTGRES_PASSWORD"}
    suspicious = re.compile(r"SECRET|PASSWORD$|_PASS$|FERNET|TOKEN|PRIVATE_KEY")
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if suspicious.search(key) and key not in allowed:
                # None: passed through from .env or the shell (AWS_SECRET_ACCESS_KEY), no value here.
                assert value is None or REQUIRED_REF.match(str(value)), f"{name}: {key} has a literal value"


def test_login_is_required_with_the_simple_auth_manager(
    services: dict[str, Any], common_env: dict[str, str]
) -> None:
    for name, service in services.items():
        keys = set(service.get("environment") or {})
        assert not {k for k in keys if "ALL_ADMINS" in k}, f"{name}: all_admins mode turns login off"
    assert common_env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
    assert common_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    passwords = Path(common_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    # In the ./config mount, and the file scripts/compose_env.py writes there.
    assert passwords.parent == Path("/opt/airflow/config")
    assert passwords.name == compose_env.DEFAULT_PASSWORDS_FILE.name
    assert compose_env.DEFAULT_PASSWORDS_FILE.parent == REPO / "config"


def test_env_example_documents_every_variable_compose_reads() -> None:
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    missing = sorted(referenced_variables() - documented)
    assert not missing, f".env.example does not document {missing}"


def test_env_example_commits_no_secret() -> None:
    values = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
    )
    for variable in GENERATED_SECRETS:
        assert variable in values and values[variable].strip() == "", f"{variable} must be empty"
    for variable in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
        for value in re.findall(rf"^#?\s*{variable}=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE):
            assert value.strip() == "", f"{variable} must have no value, even commented out"


@pytest.mark.parametrize(
    "path",
    [
        ".env",  # the secrets compose reads
        "config/simple_auth_manager_passwords.json.generated",  # the admin password
        "logs/scheduler/latest",  # task and component logs written by the containers
        "data/storage/ab/cd/blob.png",  # downloaded files
    ],
)
def test_generated_files_are_git_ignored(path: str) -> None:
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", path], cwd=REPO, capture_output=True, text=True
    )
    if result.returncode == 128:
        pytest.skip(f"not a git checkout: {result.stderr.strip()}")
    assert result.returncode == 0, f"{path} is not git-ignored: add it to .gitignore"


# ---- scripts/compose_env.py ---------------------------------------------------------------------
def run_compose_env(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "compose_env.py"),
            "--env-file",
            str(tmp_path / ".env"),
            "--passwords-file",
            str(tmp_path / "config" / "passwords.json"),
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )


def read_env(path: Path) -> dict[str, str]:
    return dict(p for line in path.read_text().splitlines() if (p := compose_env.parse_line(line)))


def test_compose_env_writes_a_complete_env_with_valid_secrets(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    run_compose_env(tmp_path)
    env_file = tmp_path / ".env"
    values = read_env(env_file)

    Fernet(values["AIRFLOW_FERNET_KEY"].encode())  # raises if not a valid Fernet key
    assert len(values["AIRFLOW_JWT_SECRET"]) >= 32 and len(values["AIRFLOW_API_SECRET_KEY"]) >= 32
    assert values["AIRFLOW_JWT_SECRET"] != values["AIRFLOW_API_SECRET_KEY"]
    # Written as is into HARVEST_BROKER_URL=amqp://harvest:<password>@..., and as an argument.
    rabbit = values["RABBITMQ_PASSWORD"]
    assert len(rabbit) >= 32 and quote(rabbit, safe="") == rabbit and not rabbit.startswith("-")
    assert values["AIRFLOW_UID"] == (str(os.getuid()) if os.getuid() != 0 else "50000")
    # Started from .env.example: every variable compose reads is in .env (set or commented).
    text = env_file.read_text()
    for variable in referenced_variables():
        assert re.search(rf"^#?\s*{variable}=", text, re.MULTILINE), variable
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600, "the file holds secrets"

    passwords = json.loads((tmp_path / "config" / "passwords.json").read_text())
    assert len(passwords["admin"]) >= 16


def test_compose_env_does_not_overwrite_without_force(tmp_path: Path) -> None:
    run_compose_env(tmp_path)
    env_before = (tmp_path / ".env").read_text()
    passwords_before = (tmp_path / "config" / "passwords.json").read_text()

    result = run_compose_env(tmp_path)

    assert (tmp_path / ".env").read_text() == env_before
    assert (tmp_path / "config" / "passwords.json").read_text() == passwords_before
    assert "unchanged" in result.stdout


def test_compose_env_fills_only_what_an_existing_env_lacks(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "HARVEST_PG_SERVER=postgresql://me@db:5432\nAIRFLOW_FERNET_KEY=keep-me\nAIRFLOW_JWT_SECRET=\n"
    )
    run_compose_env(tmp_path)
    values = read_env(tmp_path / ".env")
    assert values["HARVEST_PG_SERVER"] == "postgresql://me@db:5432"
    assert values["AIRFLOW_FERNET_KEY"] == "keep-me"
    assert values["AIRFLOW_JWT_SECRET"] and values["AIRFLOW_API_SECRET_KEY"]


def test_compose_env_adds_the_rabbitmq_password_to_an_older_env(tmp_path: Path) -> None:
    # An .env from before the rabbitmq profile: compose would refuse it (`:?`) until this runs.
    older = "AIRFLOW_UID=1000\nAIRFLOW_FERNET_KEY=f\nAIRFLOW_JWT_SECRET=j\nAIRFLOW_API_SECRET_KEY=a\n"
    (tmp_path / ".env").write_text(older)
    result = run_compose_env(tmp_path)
    text = (tmp_path / ".env").read_text()
    assert text.startswith(older), "existing lines must stay as they were"
    assert read_env(tmp_path / ".env")["RABBITMQ_PASSWORD"]
    assert "RABBITMQ_PASSWORD" in result.stdout


def test_compose_env_force_renews_secrets_and_keeps_other_lines(tmp_path: Path) -> None:
    run_compose_env(tmp_path)
    with (tmp_path / ".env").open("a") as handle:
        handle.write("HARVEST_STORAGE_URI=s3://bucket/harvest\n")
    before = read_env(tmp_path / ".env")

    run_compose_env(tmp_path, "--force")

    after = read_env(tmp_path / ".env")
    for variable in GENERATED_SECRETS:
        assert after[variable] and after[variable] != before[variable], variable
    assert after["HARVEST_STORAGE_URI"] == "s3://bucket/harvest"


def test_fernet_key_without_cryptography_is_still_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.fernet import Fernet

    # The script may run on a bare python3 before .venv exists: its fallback must be a real key.
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)
    key = compose_env.fernet_key()
    monkeypatch.undo()
    Fernet(key.encode())
