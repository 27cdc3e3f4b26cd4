"""The local Harvest stack: Airflow 3 with the CeleryExecutor as plain processes, no Docker.

One :class:`Stack` describes a complete, isolated deployment: its ``AIRFLOW_HOME``, its metadata and
results databases, its Redis database numbers and its ports. ``make run`` uses the default one
(``.airflow/`` in the repo, ports 8080/5555); the end-to-end tests build their own with unique names
and free ports, so both can run side by side.

Every process runs under one ``supervisord`` whose pid we record; stopping the stack stops that pid
(supervisord stops its children) and then any child that outlived it, by pid, never by name.

    python -m scripts.stack setup     # config + secrets + databases + migrations
    python -m scripts.stack start     # setup, then start every process and wait until healthy
    python -m scripts.stack stop      # stop exactly what start started
    python -m scripts.stack status
    python -m scripts.stack env       # print the shell exports for the airflow CLI
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from include.harvest.settings import DEFAULT_USER_AGENT
from scripts.ports import free_port

if TYPE_CHECKING:
    import psutil

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

DEFAULT_PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_REDIS_SERVER = "redis://127.0.0.1:6379"
DEMO_PORT = 8765

# How long a task instance may go without a heartbeat before the scheduler declares its worker
# lost and retries it ([scheduler] task_instance_heartbeat_timeout; Airflow's default is 300 s).
# Tasks heartbeat every 5 s, so 60 s is 12 missed beats: a worker machine that died is noticed
# in about a minute instead of five, and a worker only stalled for more than a minute (swapping,
# a frozen VM) loses its task to a retry, which is harmless here (batches resume, writes are
# idempotent). The same value is in docker-compose.yaml.
TASK_HEARTBEAT_TIMEOUT_S = 60
# A task's calls to the api-server's Execution API ([workers] execution_api_timeout, default
# 5 s). On two busy cores the first call of a run was seen to take longer and cost a task try;
# 30 s rides out a busy api-server, and the retries (default 5, with back-off) stay as they are.
EXECUTION_API_TIMEOUT_S = 30
# glibc's malloc hands blocks above its mmap threshold (128 KiB) to mmap, but raises the threshold
# each time such a block is freed: image bodies (up to HARVEST_MAX_BYTES) then come from the fetch
# threads' arenas, which they fragment for as long as a batch runs. Fixed at 128 KiB, a task that
# fetched 50,000 URLs grew 6 MiB instead of 15, at the same speed (bench/README.md). The same value
# is in docker-compose.yaml.
MALLOC_MMAP_THRESHOLD = 131072


@dataclass(frozen=True)
class Worker:
    """One Celery worker of the stack, standing in for a worker machine.

    ``name`` is its Celery node name (``--celery-hostname``) and the hostname its task instances
    report; ``scratch`` is its own temporary folder, so workers share no local data: only the
    storage URIs and the databases join them, as they would join machines.
    """

    name: str
    log_port: int
    scratch: Path | None = None


class StackError(RuntimeError):
    """The stack cannot be set up or started; the message says what to do."""


def load_dotenv(path: Path = REPO / ".env") -> dict[str, str]:
    """``KEY=value`` lines of the repo's ``.env`` (the environment wins over the file)."""
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip().strip("'\"")
    return values


def setting(name: str, default: str) -> str:
    return os.environ.get(name) or load_dotenv().get(name) or default


def with_database(server_url: str, database: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


@dataclass
class Stack:
    """One isolated local deployment of Harvest."""

    home: Path = REPO / ".airflow"
    pg_server: str = field(default_factory=lambda: setting("HARVEST_PG_SERVER", DEFAULT_PG_SERVER))
    redis_server: str = field(default_factory=lambda: setting("HARVEST_REDIS_SERVER", DEFAULT_REDIS_SERVER))
    metadata_db: str = "airflow"
    results_db: str = "harvest"
    broker_db: int = 0  # Redis database of the Celery broker
    coordination_db: int = 1  # Redis database of per-host limits shared by workers
    api_port: int = 8080
    flower_port: int | None = 5555
    worker_log_port: int = 8793
    triggerer_log_port: int = 8794
    scheduler_health_port: int = 8974
    # One task slot per core: each batch task runs its own fetch threads, so slots beyond the cores
    # only contend for them (20,000 URLs on 2 cores: 936 URLs/s with 2 slots, 751 with 4; bench/README.md).
    worker_concurrency: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))
    # The Celery broker. Redis by default; any URL Celery accepts (amqp://... for RabbitMQ).
    broker_url: str = field(default_factory=lambda: setting("HARVEST_BROKER_URL", ""))
    # Celery queue of the stack's tasks: a private name keeps two stacks on one broker apart.
    queue: str = "default"
    # Seconds the scheduler sleeps after a loop with nothing to do ([scheduler]
    # scheduler_idle_sleep_time). Airflow's default of 1 s: while batches download, every loop has
    # nothing to do, and at 0.1 s the scheduler used 20-41 CPU-seconds of a 100,000-URL run on 2
    # cores against 9 at 1 s (bench/README.md). A shorter sleep only shortens the gaps between a
    # run's tasks (2.5-4.3 s at 1 s, 0.5-0.9 s at 0.1 s): the test stacks, made of short runs, use 0.1.
    scheduler_idle_sleep: float = 1.0
    # Extra workers (several machines); empty means the one worker "worker" on worker_log_port.
    workers: tuple[Worker, ...] = ()
    demo_port: int | None = None  # serve data/demo/site on loopback (the bundled demo images)
    storage_uri: str = (REPO / "data" / "storage").as_uri()
    work_uri: str = (REPO / "data" / "work").as_uri()
    url_list_uri: str = (REPO / "data" / "url_lists").as_uri()
    # The local stack fetches its demo from loopback, which the SSRF guard refuses by default.
    allow_hosts: str = "127.0.0.1"
    extra_env: dict[str, str] = field(default_factory=dict)
    _log_marks: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def isolated(
        cls, name: str, *, home: Path, data: Path, broker_db: int, coordination_db: int, **overrides: Any
    ) -> Stack:
        """A private stack that runs beside any other (tests, benchmarks).

        Its databases get unique names (``<name>_<8 hex>_airflow`` / ``_results``, dropped with
        :meth:`drop_databases`), every port is a free one, and its lists, blobs and work files live
        under ``data``. Loopback is allowed through the address guard: its images are served there.
        """
        suffix = uuid.uuid4().hex[:8]
        values: dict[str, Any] = {
            "home": home,
            "metadata_db": f"{name}_{suffix}_airflow",
            "results_db": f"{name}_{suffix}_results",
            "broker_db": broker_db,
            "coordination_db": coordination_db,
            "api_port": free_port(),
            "flower_port": None,
            "worker_log_port": free_port(),
            "triggerer_log_port": free_port(),
            "scheduler_health_port": free_port(),
            "storage_uri": (data / "storage").as_uri(),
            "work_uri": (data / "work").as_uri(),
            "url_list_uri": (data / "url_lists").as_uri(),
            "allow_hosts": "127.0.0.1",
            # Its own queue: stacks that share a broker (RabbitMQ's default vhost) never swap tasks.
            "queue": f"{name}_{suffix}",
            "broker_url": "",
        }
        return cls(**{**values, **overrides})

    # ---- derived values -------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or f"{self.redis_server}/{self.broker_db}"

    @property
    def celery_workers(self) -> tuple[Worker, ...]:
        return self.workers or (Worker("worker", self.worker_log_port),)

    @property
    def metadata_url(self) -> str:
        return with_database(self.pg_server, self.metadata_db)

    @property
    def results_url(self) -> str:
        return with_database(self.pg_server, self.results_db)

    @property
    def pidfile(self) -> Path:
        return self.home / "supervisord.pid"

    @property
    def internal_pidfile(self) -> Path:
        """The one supervisord writes itself once it runs (``pidfile =`` in its config)."""
        return self.home / "supervisord.pid.internal"

    @property
    def password_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"

    def admin_password(self) -> str:
        return str(json.loads(self.password_file.read_text())["admin"])

    def environment(self) -> dict[str, str]:
        """What every Airflow process (and the ``airflow`` CLI) needs besides ``airflow.cfg``."""
        env = {
            "AIRFLOW_HOME": str(self.home),
            "PYTHONPATH": str(REPO),
            "AIRFLOW_CONN_HARVEST_DB": self.results_url,
            "HARVEST_STORAGE_URI": self.storage_uri,
            "HARVEST_WORK_URI": self.work_uri,
            "HARVEST_URL_LIST_URI": self.url_list_uri,
            # The lists a run may read: the operator's HARVEST_LIST_ROOTS plus the demo list's folder.
            "HARVEST_LIST_ROOTS": ",".join(
                filter(None, [setting("HARVEST_LIST_ROOTS", ""), (self.home / "demo").as_uri()])
            ),
            "HARVEST_REDIS_URL": f"{self.redis_server}/{self.coordination_db}",
            "HARVEST_ALLOW_HOSTS": self.allow_hosts,
            # Site owners read it to know who fetches: set it (in the environment or .env) with a contact.
            "HARVEST_USER_AGENT": setting("HARVEST_USER_AGENT", DEFAULT_USER_AGENT),
            # Batches are sized from the slots of every worker of this stack, not of one.
            "HARVEST_WORKER_SLOTS": str(self.worker_concurrency * len(self.celery_workers)),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "MALLOC_MMAP_THRESHOLD_": str(MALLOC_MMAP_THRESHOLD),
        }
        env.update(self.extra_env)
        return env

    # ---- setup ----------------------------------------------------------------------------
    def check_services(self) -> None:
        """Fail early, naming the service and how to point at it."""
        import psycopg2
        import redis

        try:
            psycopg2.connect(with_database(self.pg_server, "postgres"), connect_timeout=5).close()
        except psycopg2.OperationalError as exc:
            first_line = str(exc).strip().splitlines()[0]
            raise StackError(
                f"Postgres is not reachable at {self.pg_server} ({first_line}).\n"
                "Start it, or set HARVEST_PG_SERVER (in the environment or .env) to a server URL "
                "such as postgresql://user:password@host:5432 whose user may create databases."
            ) from exc
        try:
            redis.Redis.from_url(self.redis_server, socket_connect_timeout=5).ping()
        except redis.RedisError as exc:
            raise StackError(
                f"Redis is not reachable at {self.redis_server} ({exc}).\n"
                "Start it, or set HARVEST_REDIS_SERVER (in the environment or .env), "
                "e.g. redis://host:6379."
            ) from exc
        if self.broker_url:
            self.check_broker()

    def check_broker(self) -> None:
        """The Celery broker answers (Redis or RabbitMQ alike, through kombu as Celery uses it)."""
        from kombu import Connection

        try:
            with Connection(self.broker_url, connect_timeout=5) as conn:
                conn.ensure_connection(max_retries=1)
        except Exception as exc:  # kombu raises the transport's own errors
            raise StackError(
                f"The Celery broker is not reachable at {_redacted(self.broker_url)} ({exc}).\n"
                "Start it, or set HARVEST_BROKER_URL (in the environment or .env), e.g. "
                "redis://host:6379/0 or amqp://user:password@host:5672//."
            ) from exc

    def create_databases(self) -> None:
        import psycopg2

        conn = psycopg2.connect(with_database(self.pg_server, "postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in (self.metadata_db, self.results_db):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()

    def drop_databases(self) -> None:
        import psycopg2

        conn = psycopg2.connect(with_database(self.pg_server, "postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in (self.metadata_db, self.results_db):
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()

    def write_config(self) -> bool:
        """Write ``airflow.cfg`` and the admin password once; return True when they were created."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        secrets_file = self.home / "secrets.json"
        created = not secrets_file.exists()
        if created:
            # Generated here, kept in the ignored AIRFLOW_HOME, never in git.
            write_private(
                secrets_file,
                json.dumps(
                    {
                        "fernet_key": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                        "jwt_secret": secrets.token_urlsafe(48),
                        "api_secret_key": secrets.token_urlsafe(48),
                    }
                ),
            )
        if not self.password_file.exists():
            password = secrets.token_urlsafe(12)
            write_private(self.password_file, json.dumps({"admin": password}) + "\n")
            # Shown once; afterwards it is only in the (ignored, 0600) password file.
            print(f"Airflow UI login: admin / {password}  (kept in {self.password_file})")
        keys = json.loads(secrets_file.read_text())
        broker = self.celery_broker_url
        metadata = self.metadata_url.replace("postgresql://", "postgresql+psycopg2://", 1)
        config = f"""\
            # Generated by scripts/stack.py for this local stack. Holds secrets: never commit.
            [core]
            dags_folder = {REPO / "dags"}
            plugins_folder = {REPO / "plugins"}
            executor = CeleryExecutor
            load_examples = False
            dags_are_paused_at_creation = False
            fernet_key = {keys["fernet_key"]}
            execution_api_server_url = {self.api_url}/execution/
            simple_auth_manager_users = admin:admin
            simple_auth_manager_all_admins = False
            simple_auth_manager_passwords_file = {self.password_file}
            parallelism = 32
            max_active_tasks_per_dag = 16
            # HARVEST_HOSTNAME when set (one per worker when several share this machine), else the FQDN.
            hostname_callable = include.harvest.hooks.machine_hostname

            [operators]
            default_queue = {self.queue}

            [workers]
            execution_api_timeout = {EXECUTION_API_TIMEOUT_S}

            [database]
            sql_alchemy_conn = {metadata}

            [api]
            host = 127.0.0.1
            port = {self.api_port}
            secret_key = {keys["api_secret_key"]}
            base_url = {self.api_url}

            [api_auth]
            jwt_secret = {keys["jwt_secret"]}

            [logging]
            base_log_folder = {self.home / "logs"}
            worker_log_server_port = {self.worker_log_port}
            trigger_log_server_port = {self.triggerer_log_port}

            [scheduler]
            enable_health_check = True
            scheduler_health_check_server_port = {self.scheduler_health_port}
            # A small stack: react within a second rather than the production default.
            scheduler_heartbeat_sec = 1
            scheduler_idle_sleep_time = {self.scheduler_idle_sleep:g}
            # A lost worker's tasks are retried after this long without a heartbeat (default 300).
            task_instance_heartbeat_timeout = {TASK_HEARTBEAT_TIMEOUT_S}

            [dag_processor]
            refresh_interval = 10
            min_file_process_interval = 30

            [celery]
            broker_url = {broker}
            result_backend = db+{self.metadata_url}
            worker_concurrency = {self.worker_concurrency}
            flower_host = 127.0.0.1
            flower_port = {self.flower_port or 5555}
            """
        # The Fernet key, the JWT secret and the metadata DB's URL: for this user's eyes only.
        write_private(self.home / "airflow.cfg", textwrap.dedent(config))
        self.write_env_script()
        return created

    def write_env_script(self) -> None:
        lines = ["# source this file to use the airflow CLI against the local Harvest stack"]
        lines += [f"export {key}='{value}'" for key, value in self.environment().items()]
        write_private(self.home / "env.sh", "\n".join(lines) + "\n")  # holds the results DB's URL

    def run_airflow(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        env = {**os.environ, **self.environment()}
        proc = subprocess.run(
            [str(VENV_BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise StackError(
                f"airflow {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc.stdout

    def migrate(self) -> None:
        self.run_airflow("db", "migrate")
        from include.harvest.migrations import apply_migrations

        apply_migrations(self.results_url)

    def setup(self) -> None:
        self.check_services()
        self.write_config()
        self.create_databases()
        self.migrate()

    # ---- processes ------------------------------------------------------------------------
    def supervisor_config(self) -> str:
        airflow = VENV_BIN / "airflow"
        commands = {
            "api-server": f"{airflow} api-server --port {self.api_port} --host 127.0.0.1",
            "scheduler": f"{airflow} scheduler",
            "dag-processor": f"{airflow} dag-processor",
            "triggerer": f"{airflow} triggerer",
        }
        program_env: dict[str, dict[str, str]] = {}
        for worker in self.celery_workers:
            commands[worker.name] = (
                f"{airflow} celery worker --concurrency {self.worker_concurrency} "
                f"--celery-hostname {worker.name}@%(host_node_name)s --queues {self.queue}"
            )
            program_env[worker.name] = {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker.log_port)}
            if self.workers:  # several workers on one machine: each reports its own hostname
                program_env[worker.name]["HARVEST_HOSTNAME"] = worker.name
            if worker.scratch:
                worker.scratch.mkdir(parents=True, exist_ok=True)
                program_env[worker.name]["TMPDIR"] = str(worker.scratch)
        if self.flower_port:
            commands["flower"] = f"{airflow} celery flower --port {self.flower_port} --hostname 127.0.0.1"
        if self.demo_port:
            site = REPO / "data" / "demo" / "site"
            commands["demo-images"] = (
                f"{sys.executable} -m http.server {self.demo_port} --bind 127.0.0.1 --directory {site}"
            )
        env = _supervisor_environment(self.environment(), expansions=2)  # see the function
        logs = self.home / "logs"
        sections = [
            textwrap.dedent(
                f"""\
            [unix_http_server]
            file = {self.home / "supervisor.sock"}
            chmod = 0700

            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

            [supervisorctl]
            serverurl = unix://{self.home / "supervisor.sock"}

            [supervisord]
            nodaemon = true
            logfile = {logs / "supervisord.log"}
            pidfile = {self.internal_pidfile}
            childlogdir = {logs}
            environment = {env}
            """
            )
        ]
        for name, command in commands.items():
            section = textwrap.dedent(
                f"""\
                [program:{name}]
                command = {command}
                directory = {REPO}
                stdout_logfile = {logs / f"{name}.log"}
                redirect_stderr = true
                autorestart = true
                startsecs = 3
                # Celery and the api-server fork workers: stop the whole group, give tasks time.
                stopasgroup = true
                killasgroup = true
                stopwaitsecs = 30
                """
            )
            if name in program_env:  # added to supervisord's own environment for this program only
                section += f"environment = {_supervisor_environment(program_env[name])}\n"
            sections.append(section)
        return "\n".join(sections)

    @property
    def supervisor_conf(self) -> Path:
        """supervisord's config; its absolute path on supervisord's command line marks our process."""
        return (self.home / "supervisord.conf").absolute()

    def write_supervisor_config(self) -> Path:
        """Write ``supervisord.conf`` (its ``environment=`` holds the database URLs) as 0600."""
        self.home.mkdir(parents=True, exist_ok=True)
        write_private(self.supervisor_conf, self.supervisor_config())
        return self.supervisor_conf

    def running_pid(self) -> int | None:
        """The pid of this stack's supervisord, or None when it is not running.

        A pid in the pidfile is only trusted when that process is our supervisord: after a reboot,
        or once supervisord died without removing the file, the pid may belong to anything.
        """
        proc = self._supervisord()
        return proc.pid if proc is not None else None

    def _supervisord(self) -> psutil.Process | None:
        # Ours first; then supervisord's own, so that a pidfile of ours lost or misread never makes
        # a running supervisord look stopped (stop() would then leave it and its programs running).
        for pidfile in (self.pidfile, self.internal_pidfile):
            if (proc := self._supervisord_in(pidfile)) is not None:
                return proc
        return None

    def _supervisord_in(self, pidfile: Path) -> psutil.Process | None:
        import psutil

        try:
            pid = int(pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            cmdline = proc.cmdline()
        except psutil.Error:  # gone, a zombie, or not ours to inspect
            return None
        # Started as `<venv>/bin/supervisord -c <conf>`; its script runs under the venv's python.
        # A supervisord of this stack's config is this stack's, whoever started it. (No start time
        # is compared: a wall-clock one moves when the clock is set, and a false "not running"
        # would start a second supervisord.)
        names_supervisord = any(Path(arg).name == "supervisord" for arg in cmdline[:2])
        our_config = any(
            flag == "-c" and value == str(self.supervisor_conf)
            for flag, value in zip(cmdline, cmdline[1:], strict=False)
        )
        return proc if names_supervisord and our_config else None

    def start(self) -> int:
        """Start supervisord (if not already running) in its own session; return its pid."""
        if pid := self.running_pid():
            return pid
        conf = self.write_supervisor_config()
        self._mark_logs()
        log = open(self.home / "logs" / "supervisord.out", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [str(VENV_BIN / "supervisord"), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **self.environment()},
        )
        self.pidfile.write_text(str(proc.pid))
        return proc.pid

    def wait_healthy(self, timeout: float = 300) -> None:
        """Wait until the api-server answers and the scheduler, worker and parser are alive."""
        deadline = time.monotonic() + timeout
        last = "nothing checked yet"
        while time.monotonic() < deadline:
            if not self.running_pid():
                raise StackError(f"supervisord exited; see {self.home / 'logs'}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=5) as resp:
                    health = json.load(resp)
            except urllib.error.HTTPError as exc:
                # Something answers on the port, and it is not our api-server's health endpoint.
                last = f"port {self.api_port} answers the health check with {exc}: is another server on it?"
                self._raise_if_failing(self.program_states())
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = f"api-server not answering yet ({exc})"
            else:
                states = {
                    part: (health.get(part) or {}).get("status")
                    for part in ("metadatabase", "scheduler", "dag_processor")
                }
                programs = self.program_states()
                last = f"health: {states}, programs: {programs}"
                self._raise_if_failing(programs)
                healthy = all(state == "healthy" for state in states.values())
                if (
                    healthy
                    and programs
                    and all(s == "RUNNING" for s in programs.values())
                    and self.worker_ready()
                ):
                    return
            time.sleep(2)
        raise StackError(
            f"the stack did not become healthy in {timeout:.0f}s: {last}; see {self.home / 'logs'}"
        )

    def _raise_if_failing(self, programs: dict[str, str]) -> None:
        failing = [name for name, state in programs.items() if state in ("FATAL", "BACKOFF", "EXITED")]
        if failing:
            logs = ", ".join(str(self.home / "logs" / f"{name}.log") for name in failing)
            raise StackError(f"{', '.join(failing)} cannot start; see {logs}")

    def program_states(self) -> dict[str, str]:
        """State of every supervised program (RUNNING, STARTING, BACKOFF, FATAL, ...)."""
        states = {}
        for line in self._supervisorctl("status").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                states[parts[0]] = parts[1]
        return states

    def worker_ready(self) -> bool:
        """Every worker logged Celery's "ready." since the stack was last started."""
        return all(self._logged_since_start(worker.name, "ready.") for worker in self.celery_workers)

    def _logged_since_start(self, program: str, text: str) -> bool:
        log = self.home / "logs" / f"{program}.log"
        if not log.exists():
            return False
        with log.open("rb") as f:
            f.seek(self._log_marks.get(program, 0))
            return text.encode() in f.read()

    def _mark_logs(self) -> None:
        """Remember where each program's log ends, so a restart is judged by what it logs next."""
        logs = self.home / "logs"
        self._log_marks = {path.stem: path.stat().st_size for path in logs.glob("*.log") if path.is_file()}

    def program_pid(self, name: str) -> int:
        """The pid supervisord started a program with (the leader of its process group)."""
        answer = self._supervisorctl("pid", name).strip()
        try:
            return int(answer)
        except ValueError:
            raise StackError(f"no pid for program {name}: {answer}") from None

    def _supervisorctl(self, *args: str) -> str:
        proc = subprocess.run(
            [str(VENV_BIN / "supervisorctl"), "-c", str(self.home / "supervisord.conf"), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return proc.stdout

    def restart(self, timeout: float = 300, **changes: Any) -> None:
        """Stop every process, apply ``changes`` (e.g. ``broker_url=...``), start again, wait healthy."""
        self.stop()
        for name, value in changes.items():
            setattr(self, name, value)
        self.write_config()
        self.start()
        self.wait_healthy(timeout=timeout)

    def stop(self, timeout: float = 60) -> bool:
        """Stop supervisord and everything under it, by pid. Return True if something was running.

        A pidfile whose pid is not this stack's supervisord (see :meth:`running_pid`) is removed and
        nothing is signalled.
        """
        import psutil

        supervisord = self._supervisord()
        if supervisord is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        try:
            tree = [supervisord, *supervisord.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        # Through the checked Process: psutil refuses to signal a pid that was reused meanwhile.
        with contextlib.suppress(psutil.NoSuchProcess):
            supervisord.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        for proc in alive:  # anything that ignored supervisord's stop: by its pid, not by name
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)
        self.pidfile.unlink(missing_ok=True)
        return True


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), never by anyone else.

    The text goes to a new file that ``mkstemp`` creates with mode 0600 whatever the umask, which is
    then renamed over ``path``: there is no moment the secrets are in a file others may read, and a
    file an earlier version left world-readable is replaced, not rewritten in place.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _supervisor_environment(values: dict[str, str], *, expansions: int = 1) -> str:
    """An ``environment=`` value for supervisord.

    supervisord expands ``%(name)s`` in it, so a literal ``%`` (a URL-encoded password) is doubled
    once per expansion: the ``[supervisord]`` section's value is expanded twice (supervisor 4.3
    expands it when reading the option and again when parsing it), a ``[program:x]`` one once.
    It splits the value with a non-POSIX shlex: no escapes, a quoted token keeps its quotes (then
    stripped from both ends), so a value is wrapped in the one kind of quote it does not contain.
    """

    def quoted(key: str, value: str) -> str:
        quote = '"' if '"' not in value else "'"
        if quote in value or value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
            raise StackError(
                f"{key} holds both kinds of quote, or starts or ends with one, which supervisord "
                "cannot pass on"
            )
        if "\n" in value or "\r" in value:
            raise StackError(f"{key} holds a line break, which supervisord cannot pass on")
        return quote + value.replace("%", "%" * 2**expansions) + quote

    return ",".join(f"{key}={quoted(key, value)}" for key, value in values.items())


def _redacted(url: str) -> str:
    """A URL with its password replaced, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["setup", "start", "stop", "status", "env"])
    args = parser.parse_args(argv)
    stack = Stack(demo_port=DEMO_PORT)
    try:
        if args.command == "setup":
            stack.setup()
            print(f"Airflow home ready at {stack.home}")
        elif args.command == "start":
            stack.setup()
            if stack.running_pid():
                print(f"Harvest stack already running (supervisord pid {stack.running_pid()})")
            else:
                pid = stack.start()
                print(f"Starting Harvest stack (supervisord pid {pid}); logs in {stack.home / 'logs'}")
            stack.wait_healthy()
            print(f"Harvest stack healthy: UI at http://localhost:{stack.api_port}")
        elif args.command == "stop":
            stopped = stack.stop()
            print("Harvest stack stopped" if stopped else "Harvest stack was not running")
        elif args.command == "status":
            pid = stack.running_pid()
            print(f"running (supervisord pid {pid})" if pid else "not running")
            for name, state in stack.program_states().items() if pid else ():
                print(f"  {name:<15} {state}")
            return 0 if pid else 1
        elif args.command == "env":
            stack.write_env_script()
            print((stack.home / "env.sh").read_text())
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
