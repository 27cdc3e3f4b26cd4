"""Static checks of the docker compose deployment: docker-compose.yaml, Dockerfile, .env.example,
docker/postgres-init and scripts/compose_env.py.

No Docker engine runs here, so `docker compose config` cannot validate the file; these tests parse
it with PyYAML (which resolves the `<<: *anchor` merges like compose does) and assert the properties
the deployment depends on. Each test names one property.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from scripts import compose_env

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
]
REQUIRED_SERVICES = ["postgres", "redis", *AIRFLOW_SERVICES]
# Everything but the one-shot init: these must report health.
LONG_RUNNING = [s for s in REQUIRED_SERVICES if s != "airflow-init"]
SECRET_SETTINGS = {
    "AIRFLOW__CORE__FERNET_KEY": "AIRFLOW_FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET": "AIRFLOW_JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY": "AIRFLOW_API_SECRET_KEY",
}
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
    return {m["name"] for m in VAR_REF.finditer(compose_text_without_escapes())}


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
    url = urlsplit(urls.pop())
    assert url.hostname == "airflow-apiserver" and url.hostname in services
    assert services[url.hostname]["command"] == "api-server"
    # The container port the api-server listens on (right side of its port mapping).
    container_ports = {str(p).rsplit(":", 1)[-1] for p in services[url.hostname]["ports"]}
    assert str(url.port) in container_ports
    assert url.path == "/execution/"


def test_celery_executor_with_redis_broker_and_postgres_results(common_env: dict[str, str]) -> None:
    assert common_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    broker = urlsplit(common_env["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    backend = urlsplit(common_env["AIRFLOW__CELERY__RESULT_BACKEND"])
    assert backend.scheme.startswith("db+postgresql") and backend.hostname == "postgres"


def test_harvest_settings_in_the_common_environment(common_env: dict[str, str]) -> None:
    assert common_env["PYTHONPATH"] == "/opt/airflow"
    assert common_env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert common_env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "false"
    redis_url = urlsplit(common_env["HARVEST_REDIS_URL"])
    broker = urlsplit(common_env["AIRFLOW__CELERY__BROKER_URL"])
    assert redis_url.hostname == "redis"
    # Coordination keys must not share the Celery broker's Redis database.
    assert redis_url.path != broker.path, (redis_url.path, broker.path)


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
    # celery 5.7.0 breaks apache-airflow-providers-celery 3.26.0 (DESIGN.md, known traps).
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
        ("airflow-apiserver", "localhost:8080/api/v2/"),
        ("airflow-scheduler", "localhost:8974/health"),
        ("airflow-dag-processor", "--job-type DagProcessorJob"),
        ("airflow-triggerer", "--job-type TriggererJob"),
        ("airflow-worker", "inspect ping"),
        ("flower", "localhost:5555"),
    ],
)
def test_healthcheck_probes_the_service_itself(services: dict[str, Any], name: str, probe: str) -> None:
    assert probe in " ".join(services[name]["healthcheck"]["test"])


def test_scheduler_health_server_is_enabled(common_env: dict[str, str]) -> None:
    assert common_env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"


def test_airflow_services_wait_for_healthy_backends_and_init(services: dict[str, Any]) -> None:
    for name in airflow_services(services):
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
    metadata = urlsplit(common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    results = urlsplit(common_env["AIRFLOW_CONN_HARVEST_DB"])
    assert metadata.hostname == results.hostname == "postgres"
    assert metadata.path == f"/{services['postgres']['environment']['POSTGRES_DB']}" == "/airflow"
    assert results.path == "/harvest"


# ---- volumes ------------------------------------------------------------------------------------
def test_shared_folders_are_mounted(compose: dict[str, Any], services: dict[str, Any]) -> None:
    expected = {
        f"/opt/airflow/{f}": f"./{f}" for f in ("dags", "include", "plugins", "logs", "data", "config")
    }
    for name in airflow_services(services):
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
    suspicious = re.compile(r"SECRET|PASSWORD$|FERNET|TOKEN|PRIVATE_KEY")
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if suspicious.search(key) and key not in allowed:
                assert REQUIRED_REF.match(str(value)), f"{name}: {key} has a literal value"


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
    for variable in SECRET_SETTINGS.values():
        assert variable in values and values[variable].strip() == "", f"{variable} must be empty"


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


def test_compose_env_force_renews_secrets_and_keeps_other_lines(tmp_path: Path) -> None:
    run_compose_env(tmp_path)
    with (tmp_path / ".env").open("a") as handle:
        handle.write("HARVEST_STORAGE_URI=s3://bucket/harvest\n")
    before = read_env(tmp_path / ".env")

    run_compose_env(tmp_path, "--force")

    after = read_env(tmp_path / ".env")
    for variable in SECRET_SETTINGS.values():
        assert after[variable] and after[variable] != before[variable], variable
    assert after["HARVEST_STORAGE_URI"] == "s3://bucket/harvest"


def test_fernet_key_without_cryptography_is_still_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.fernet import Fernet

    # The script may run on a bare python3 before .venv exists: its fallback must be a real key.
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)
    key = compose_env.fernet_key()
    monkeypatch.undo()
    Fernet(key.encode())
