"""A throw-away nginx on a free loopback port serving one folder, as a plain process stopped by pid.

Everything nginx writes (config, pidfile, logs, temp folders) lives in a fresh temporary directory.
If no nginx binary exists, Debian's ``nginx-light`` (then ``nginx``) is installed with apt-get
(running ``apt-get update`` once if the first install fails).

    with Nginx(root=Path("bench/tmp/imageset/seed-1")) as server:
        print(server.base_url)        # http://127.0.0.1:<port>
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from scripts.ports import free_port

__all__ = ["Nginx", "NginxError", "ensure_nginx", "ensure_nginx_module"]

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
APT_PACKAGES = ("nginx-light", "nginx")
# Where Debian's libnginx-mod-* packages put their dynamic modules.
MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules")


class NginxError(RuntimeError):
    """nginx cannot be installed or started; the message says why."""


def _find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next((c for c in NGINX_CANDIDATES if os.access(c, os.X_OK)), None)


def _apt_install(package: str) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", package]
    if os.geteuid() != 0 and shutil.which("sudo"):
        cmd = ["sudo", "-n", *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode == 0


def ensure_nginx() -> str:
    """Path of an nginx binary, installing Debian's package if there is none."""
    if binary := _find_nginx():
        return binary
    if not shutil.which("apt-get"):
        raise NginxError("nginx is not installed and apt-get is not available: install nginx and retry")
    print("nginx not found: installing it with apt-get", flush=True)
    updated = False
    for attempt in range(2):
        for package in APT_PACKAGES:
            if _apt_install(package) and (binary := _find_nginx()):
                return binary
        if attempt == 0 and not updated:
            cmd = ["apt-get", "update"]
            if os.geteuid() != 0 and shutil.which("sudo"):
                cmd = ["sudo", "-n", *cmd]
            subprocess.run(cmd, capture_output=True, timeout=600, check=False)
            updated = True
    raise NginxError(
        f"could not install any of {', '.join(APT_PACKAGES)} with apt-get; install nginx and retry"
    )


def _find_module(name: str) -> Path | None:
    return next((Path(d) / f"{name}.so" for d in MODULE_DIRS if (Path(d) / f"{name}.so").exists()), None)


def ensure_nginx_module(name: str, package: str) -> Path:
    """Path of the dynamic module ``name`` (e.g. ``ngx_http_lua_module``), installing Debian's
    ``package`` (e.g. ``libnginx-mod-http-lua``) with apt-get if it is missing."""
    if found := _find_module(name):
        return found
    if not shutil.which("apt-get"):
        raise NginxError(f"nginx module {name} is missing and apt-get is not available: install {package}")
    print(f"nginx module {name} not found: installing {package} with apt-get", flush=True)
    for attempt in range(2):
        if _apt_install(package) and (found := _find_module(name)):
            return found
        if attempt == 0:
            cmd = ["apt-get", "update"]
            if os.geteuid() != 0 and shutil.which("sudo"):
                cmd = ["sudo", "-n", *cmd]
            subprocess.run(cmd, capture_output=True, timeout=600, check=False)
    raise NginxError(f"could not install {package} with apt-get; install it and retry")


class Nginx:
    """nginx serving ``root`` (read-only, static files) on ``127.0.0.1:port``."""

    # SIGQUIT lets open requests finish; a subclass whose requests may hang on purpose uses SIGTERM.
    stop_signal: signal.Signals = signal.SIGQUIT

    def __init__(self, root: Path, *, port: int | None = None, worker_processes: int = 1):
        self.root = Path(root).resolve()
        self.port = port or free_port()
        self.worker_processes = worker_processes
        self.prefix: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def config(self, prefix: Path) -> str:
        temp = "\n".join(
            f"    {name}_temp_path {prefix / 'tmp' / name};" for name in ("client_body", "proxy", "fastcgi")
        )
        # The workers read the served folder; as root, keep them root so any folder is readable.
        user = "user root;" if os.geteuid() == 0 else ""
        return (
            textwrap.dedent(
                f"""\
            # Generated by bench/nginx.py: a static file server for the benchmark.
            {user}
            worker_processes {self.worker_processes};
            # Below the usual hard limit; the descriptor cache below stays far under it.
            worker_rlimit_nofile 16384;
            pid {prefix / "nginx.pid"};
            error_log {prefix / "error.log"} warn;
            events {{
                worker_connections 8192;
            }}
            http {{
                access_log off;
                sendfile on;
                tcp_nopush on;
                tcp_nodelay on;
                keepalive_timeout 65;
                keepalive_requests 1000000;
                open_file_cache max=4000 inactive=20s;
                types {{
                    image/jpeg jpg jpeg;
                    image/png png;
                    image/gif gif;
                    image/webp webp;
                    text/plain txt;
                }}
                default_type application/octet-stream;
            """
            )
            + temp
            + textwrap.dedent(
                f"""
                server {{
                    listen 127.0.0.1:{self.port} backlog=4096;
                    root {self.root};
                    location / {{ }}
                }}
            }}
            """
            )
        )

    def prepare(self, prefix: Path) -> None:
        """Write the files the config refers to, in ``prefix`` (a subclass hook: nothing here)."""

    def start(self, timeout: float = 20) -> Nginx:
        binary = ensure_nginx()
        self.prefix = Path(tempfile.mkdtemp(prefix="harvest-nginx-"))
        for name in ("client_body", "proxy", "fastcgi"):
            (self.prefix / "tmp" / name).mkdir(parents=True, exist_ok=True)
        self.prepare(self.prefix)
        conf = self.prefix / "nginx.conf"
        conf.write_text(self.config(self.prefix))
        # -e: the startup error log (before the config is read) also goes to our folder.
        cmd = [binary, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"), "-c", str(conf)]
        check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise NginxError(f"nginx rejected its config {conf}:\n{check.stderr}")
        out = open(self.prefix / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [*cmd, "-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.prefix / "error.log").read_text(errors="replace")[-2000:]
                raise NginxError(f"nginx exited with {self.proc.returncode}:\n{log}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/", timeout=2):
                    pass
                return self
            except urllib.error.HTTPError:  # 403/404 for the folder: nginx is answering
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise NginxError(f"nginx did not answer on {self.base_url} within {timeout:.0f}s")

    def stop(self, timeout: float = 10) -> None:
        """Stop the master by its pid (it stops its workers), then remove the temp folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)  # SIGQUIT by default: finish open requests
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: master and its workers
                self.proc.wait(5)
        self.proc = None
        if self.prefix is not None:
            shutil.rmtree(self.prefix, ignore_errors=True)
            self.prefix = None

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the master and its workers (0 if not running)."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        total = 0.0
        try:
            master = psutil.Process(self.proc.pid)
            processes = [master, *master.children(recursive=True)]
        except psutil.Error:
            return 0.0
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.Error:  # a worker that just exited
                continue
            total += times.user + times.system
        return total

    def __enter__(self) -> Nginx:
        return self.start() if self.proc is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
