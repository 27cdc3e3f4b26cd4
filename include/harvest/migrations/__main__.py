"""``python -m include.harvest.migrations``: bring the results database schema up to date."""

from __future__ import annotations

import argparse
import os
import sys

from include.harvest.migrations import MigrationError, apply_migrations, dsn_from_airflow_conn

ENV_VAR = "AIRFLOW_CONN_HARVEST_DB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.harvest.migrations",
        description="Apply pending harvest schema migrations (each once, under an advisory lock).",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get(ENV_VAR),
        help=f"postgresql://user:pass@host:port/db (default: ${ENV_VAR})",
    )
    args = parser.parse_args(argv)
    if not args.dsn:
        print(f"harvest migrations: no database given; pass --dsn or set {ENV_VAR}", file=sys.stderr)
        return 2
    try:
        applied = apply_migrations(dsn_from_airflow_conn(args.dsn))
    except (MigrationError, ValueError) as exc:
        print(f"harvest migrations: {exc}", file=sys.stderr)
        return 1
    if applied:
        print(f"applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        print("schema up to date, nothing to apply")
    return 0


if __name__ == "__main__":
    sys.exit(main())
