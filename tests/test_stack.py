"""The local stack's files and pidfile (scripts/stack.py), without starting Airflow.

Files holding secrets are readable by their owner only; a pidfile is trusted only when its pid is
this stack's supervisord; values in supervisord's ``environment=`` reach the processes unchanged.
"""

from __future__ import annotations

import configparser
import http.server
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from supervisor.options import ServerOptions

from include.harvest.settings import DEFAULT_USER_AGENT
from scripts.stack import Stack, StackError, Worker


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return Stack.isolated(
        "stacktest", home=tmp_path / "home", data=tmp_path / "data", broker_db=14, coordination_db=15
    )


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that lets everyone read new files (022 is the usual default; 0 is the worst case)."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


SECRET_FILES = ("airflow.cfg", "env.sh", "secrets.json", "simple_auth_manager_passwords.json")


def test_the_files_holding_secrets_are_readable_by_their_owner_only(stack: Stack, loose_umask: None):
    stack.write_config()
    stack.write_supervisor_config()

    modes = {name: oct(mode(stack.home / name)) for name in (*SECRET_FILES, "supervisord.conf")}
    assert modes == {name: oct(0o600) for name in modes}
    assert "fernet_key" in (stack.home / "airflow.cfg").read_text()
    assert not [p.name for p in stack.home.iterdir() if p.name.endswith(".tmp")]  # no temporary left


def test_a_world_readable_config_left_by_an_earlier_version_is_replaced_by_a_private_one(
    stack: Stack, loose_umask: None
):
    stack.write_config()
    for name in ("airflow.cfg", "env.sh", "supervisord.conf"):
        (stack.home / name).write_text("old")
        (stack.home / name).chmod(0o644)

    stack.write_config()
    stack.write_supervisor_config()

    assert {name: oct(mode(stack.home / name)) for name in ("airflow.cfg", "env.sh", "supervisord.conf")} == {
        "airflow.cfg": oct(0o600),
        "env.sh": oct(0o600),
        "supervisord.conf": oct(0o600),
    }
    assert "jwt_secret" in (stack.home / "airflow.cfg").read_text()


# -- the pidfile ---------------------------------------------------------------------------------


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; each is stopped by its own pid at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_a_pidfile_naming_another_live_process_is_not_running_and_that_process_is_never_signalled(
    stack: Stack, spawn: list[subprocess.Popen[bytes]]
):
    # After a reboot the recorded pid may be anybody's: here a harmless sleep of our own.
    sleeper = subprocess.Popen(["sleep", "60"])
    spawn.append(sleeper)
    stack.home.mkdir(parents=True)
    stack.pidfile.write_text(f"{sleeper.pid}\n")

    assert stack.running_pid() is None
    assert stack.stop(timeout=2) is False

    assert sleeper.poll() is None  # alive, not signalled
    assert psutil.Process(sleeper.pid).status() != psutil.STATUS_ZOMBIE
    assert not stack.pidfile.exists()  # the stale pidfile is gone


def fake_supervisord(tmp_path: Path, conf: Path) -> subprocess.Popen[bytes]:
    """A process whose command line is that of a stack's supervisord: a script named
    ``supervisord`` run by the venv's python with ``-c <conf>`` (it only sleeps). Popen returns
    once the exec is done, so the command line is already in place."""
    script = tmp_path / "bin" / "supervisord"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    script.chmod(0o755)
    return subprocess.Popen([str(script), "-c", str(conf)])


def test_a_supervisord_of_another_stack_is_not_ours(
    stack: Stack, tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
):
    other = tmp_path / "other" / "supervisord.conf"
    other.parent.mkdir()
    theirs = fake_supervisord(tmp_path, other)
    spawn.append(theirs)
    stack.home.mkdir(parents=True)
    stack.pidfile.write_text(f"{theirs.pid}\n")

    assert stack.running_pid() is None
    assert stack.stop(timeout=2) is False
    assert theirs.poll() is None


def test_a_running_supervisord_is_found_by_its_own_pidfile_when_ours_is_lost(
    stack: Stack, tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
):
    """Stop must not leave a stack running because the pidfile it wrote is gone or half-written."""
    ours = fake_supervisord(tmp_path, stack.supervisor_conf)
    spawn.append(ours)
    stack.home.mkdir(parents=True)
    stack.pidfile.write_text("")  # misread (empty) ...
    stack.internal_pidfile.write_text(f"{ours.pid}\n")  # ... but supervisord wrote its own

    assert stack.running_pid() == ours.pid
    assert stack.stop(timeout=10) is True
    ours.wait(timeout=10)  # stopped (stop() reaped it: its exit status went to psutil)


def test_start_records_a_supervisord_that_running_pid_and_stop_recognise(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    """The real supervisord, with no programs under it (no Airflow is started)."""
    (stack.home / "logs").mkdir(parents=True)
    full = stack.supervisor_config()
    # Only the control sections: everything up to the first [program:...].
    monkeypatch.setattr(stack, "supervisor_config", lambda: full.split("[program:", 1)[0])

    pid = stack.start()
    try:
        assert stack.running_pid() == pid
        assert stack.start() == pid  # already running: not started twice
    finally:
        stopped = stack.stop(timeout=30)

    assert stopped is True
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert stack.running_pid() is None


def test_an_api_port_another_server_holds_is_reported_as_the_api_server_failing_not_waited_out(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    """A server already on the api port answers the health check with 404; the api-server itself
    cannot bind and supervisord gives up on it. wait_healthy says so instead of waiting it out."""
    (stack.home / "logs").mkdir(parents=True)
    control = stack.supervisor_config().split("[program:", 1)[0]
    # Stands in for the api-server: a server that cannot bind a port someone else holds.
    api_server = textwrap.dedent(
        f"""\
        [program:api-server]
        command = {sys.executable} -m http.server {stack.api_port} --bind 127.0.0.1
        startsecs = 1
        startretries = 1
        """
    )
    monkeypatch.setattr(stack, "supervisor_config", lambda: control + api_server)

    with http.server.ThreadingHTTPServer(
        ("127.0.0.1", stack.api_port), http.server.BaseHTTPRequestHandler
    ) as other:
        threading.Thread(target=other.serve_forever, daemon=True).start()  # answers every GET with 501
        stack.start()
        try:
            started = time.monotonic()
            with pytest.raises(StackError, match=r"api-server cannot start; see .*api-server\.log"):
                stack.wait_healthy(timeout=120)
            assert time.monotonic() - started < 60
        finally:
            stack.stop(timeout=30)
            other.shutdown()


# -- supervisord's environment= ------------------------------------------------------------------


def test_environment_values_with_percent_quote_and_comma_reach_every_process_unchanged(
    stack: Stack, tmp_path: Path
):
    password_url = 'postgresql://u:p%40ss%25"w,rd@127.0.0.1:5432/db?x=%(here)'
    scratch = tmp_path / "scratch 100%"
    stack.extra_env = {"HARVEST_TEST_VALUE": password_url, "HARVEST_TEST_SINGLE": "it's, 50%"}
    stack.workers = (Worker("w1", 8800, scratch=scratch),)
    (stack.home / "logs").mkdir(parents=True)
    conf = stack.write_supervisor_config()

    # supervisor's own parser, as supervisord reads the file when it starts.
    options = ServerOptions()
    section = options.read_config(str(conf))

    assert section.environment["HARVEST_TEST_VALUE"] == password_url
    assert section.environment["HARVEST_TEST_SINGLE"] == "it's, 50%"
    [worker] = [p for group in section.process_group_configs for p in group.process_configs if p.name == "w1"]
    assert worker.environment["TMPDIR"] == str(scratch)
    assert worker.environment["HARVEST_TEST_VALUE"] == password_url


@pytest.mark.parametrize("value", ["""both ' and " quotes""", '"starts with a quote', "two\nlines"])
def test_an_environment_value_supervisord_cannot_carry_is_refused_naming_it(stack: Stack, value: str):
    stack.extra_env = {"HARVEST_TEST_VALUE": value}
    with pytest.raises(StackError, match="HARVEST_TEST_VALUE"):
        stack.supervisor_config()


def test_the_user_agent_reaches_every_process_from_the_environment_or_dotenv(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    assert stack.environment()["HARVEST_USER_AGENT"] == DEFAULT_USER_AGENT  # names the project
    monkeypatch.setenv("HARVEST_USER_AGENT", "AcmeHarvest/1 (+mailto:data@acme.example)")
    assert stack.environment()["HARVEST_USER_AGENT"] == "AcmeHarvest/1 (+mailto:data@acme.example)"


def test_the_scheduler_sleeps_airflows_default_when_idle_unless_the_stack_asks_for_less(tmp_path: Path):
    """A long run's batches leave the scheduler nothing to do: at 0.1 s it spent a quarter of a core
    on empty loops (bench/README.md). Short-lived test stacks may trade that for shorter task gaps."""

    def idle_sleep(stack: Stack) -> str:
        stack.write_config()
        config = configparser.ConfigParser(interpolation=None)
        config.read(stack.home / "airflow.cfg")
        return config["scheduler"]["scheduler_idle_sleep_time"]

    users = Stack.isolated(
        "stacktest", home=tmp_path / "a", data=tmp_path / "d", broker_db=14, coordination_db=15
    )
    quick = Stack.isolated(
        "stacktest",
        home=tmp_path / "b",
        data=tmp_path / "d",
        broker_db=14,
        coordination_db=15,
        scheduler_idle_sleep=0.1,
    )

    assert (idle_sleep(users), idle_sleep(quick)) == ("1", "0.1")
