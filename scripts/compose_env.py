"""Write the ``.env`` that docker-compose.yaml needs: your user id and fresh secrets.

    python3 scripts/compose_env.py            # create .env, or fill in what it lacks
    python3 scripts/compose_env.py --force    # generate new secrets in an existing .env

A new ``.env`` starts as a copy of ``.env.example`` (so every variable compose reads is documented
in it) with ``AIRFLOW_UID`` and the secrets filled in: Airflow's three, and the password of the
optional RabbitMQ broker (compose checks it even when the ``rabbitmq`` profile is off). An existing
``.env`` is never overwritten: its lines are kept, and only missing or empty generated values are
added. ``--force`` replaces the generated values and keeps every other line.

It also writes the SimpleAuthManager passwords file for the ``admin`` user if there is none, and
prints that password once. Runs with the standard library alone (any python3), so it works before
``.venv`` exists.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ENV_FILE = REPO / ".env"
DEFAULT_TEMPLATE = REPO / ".env.example"
# Mounted at /opt/airflow/config, where docker-compose.yaml points
# AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE.
DEFAULT_PASSWORDS_FILE = REPO / "config" / "simple_auth_manager_passwords.json.generated"
ADMIN_USER = "admin"  # matches AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
IMAGE_AIRFLOW_UID = 50000  # the official image's airflow user


def fernet_key() -> str:
    """A Fernet key: url-safe base64 of 32 random bytes (what ``Fernet.generate_key()`` returns)."""
    try:
        from cryptography.fernet import Fernet
    except ImportError:  # plain python3 without Airflow's dependencies: same format, by hand
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    return Fernet.generate_key().decode()


def token() -> str:
    return secrets.token_urlsafe(48)


def url_safe_password() -> str:
    # Hex: written as is into HARVEST_BROKER_URL=amqp://harvest:<password>@..., and never starting
    # with "-", which `rabbitmqctl change_password harvest <password>` would take for an option.
    return secrets.token_hex(24)


def airflow_uid() -> str:
    # Celery and Airflow should not run as root in the containers; a root user on the host can read
    # the files of uid 50000 anyway.
    uid = os.getuid()
    return str(uid if uid != 0 else IMAGE_AIRFLOW_UID)


# What this script fills in; every other variable keeps the value from .env / .env.example.
GENERATED: dict[str, Callable[[], str]] = {
    "AIRFLOW_UID": airflow_uid,
    "AIRFLOW_FERNET_KEY": fernet_key,
    "AIRFLOW_JWT_SECRET": token,
    "AIRFLOW_API_SECRET_KEY": token,
    "RABBITMQ_PASSWORD": url_safe_password,
}


def parse_line(line: str) -> tuple[str, str] | None:
    """``(key, value)`` of an active ``KEY=value`` line, None for comments and blank lines."""
    text = line.strip()
    if not text or text.startswith("#") or "=" not in text:
        return None
    key, _, value = text.partition("=")
    return key.strip(), value.strip().strip("'\"")


def fill(lines: list[str], *, force: bool) -> tuple[list[str], list[str]]:
    """Lines with the generated values filled in, and the names of the values that were set."""
    out: list[str] = []
    changed: list[str] = []
    seen: set[str] = set()
    for line in lines:
        parsed = parse_line(line)
        if parsed and parsed[0] in GENERATED and parsed[0] not in seen:
            key, value = parsed
            seen.add(key)
            if force or not value:
                out.append(f"{key}={GENERATED[key]()}")
                changed.append(key)
                continue
        out.append(line)
    for key, make in GENERATED.items():
        if key not in seen:
            out.append(f"{key}={make()}")
            changed.append(key)
    return out, changed


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically, readable by the owner only (the file holds secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_env(env_file: Path, template: Path, *, force: bool) -> list[str]:
    """Create or complete ``env_file``; returns the names of the values it set."""
    if env_file.exists():
        lines = env_file.read_text().splitlines()
    elif template.exists():
        lines = template.read_text().splitlines()
    else:
        raise SystemExit(f"{template} is missing: it is the template of {env_file.name}")
    # A new file starts from the template's placeholders (e.g. AIRFLOW_UID=50000): set them all.
    lines, changed = fill(lines, force=force or not env_file.exists())
    if changed:
        write_private(env_file, "\n".join(lines) + "\n")
    return changed


def write_passwords(passwords_file: Path) -> str | None:
    """Create the passwords file with an ``admin`` password if it has none; returns the new one."""
    passwords: dict[str, str] = {}
    if passwords_file.exists():
        passwords = json.loads(passwords_file.read_text().strip() or "{}")
        if ADMIN_USER in passwords:
            return None
    # The alphabet Airflow's own generator uses: no characters that look alike.
    alphabet = "abcdefghkmnpqrstuvwxyzABCDEFGHKMNPQRSTUVWXYZ23456789"
    password = "".join(secrets.choice(alphabet) for _ in range(20))
    passwords[ADMIN_USER] = password
    write_private(passwords_file, json.dumps(passwords) + "\n")
    return password


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--force", action="store_true", help="generate new secrets even if .env has them")
    parser.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE)
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--passwords-file", type=Path, default=DEFAULT_PASSWORDS_FILE)
    args = parser.parse_args(argv)

    existed = args.env_file.exists()
    changed = write_env(args.env_file, args.template, force=args.force)
    if not changed:
        print(f"{args.env_file} already has its user id and secrets; left unchanged (--force renews them).")
    else:
        print(f"{'Updated' if existed else 'Wrote'} {args.env_file}: {', '.join(changed)}.")
        if existed and args.force and "AIRFLOW_FERNET_KEY" in changed:
            print(
                "New Fernet key: connections and variables encrypted with the old one can no longer be "
                "read; re-enter them, or start over with `docker compose down -v`."
            )
        if existed and args.force and "RABBITMQ_PASSWORD" in changed:
            print(
                "New RABBITMQ_PASSWORD: a RabbitMQ volume created before keeps the old one. If you use the "
                "rabbitmq profile, run `docker compose exec rabbitmq rabbitmqctl change_password harvest "
                "<new password>` and update HARVEST_BROKER_URL."
            )

    password = write_passwords(args.passwords_file)
    if password:
        # Printed once; afterwards it is only in the (git-ignored) file.
        print(f"Airflow login: user {ADMIN_USER!r}, password {password!r} (kept in {args.passwords_file}).")
    print("Next: docker compose up -d")
    return 0


if __name__ == "__main__":
    sys.exit(main())
