"""The Harvest page in the Airflow UI: an overview of recent runs and a report per DAG run.

Thin wiring only: FastAPI routes and Jinja templates (``plugins/harvest_templates/``). The queries
and view models are in :mod:`include.harvest.report`, the SVG charts in
:mod:`include.harvest.charts`; the results DB is reached through the ``harvest_db`` Connection.

Airflow mounts a plugin's FastAPI app without any authentication. Here it is the app's own
dependency, on every route at once: Airflow's ``requires_access_dag("GET", "harvest")``, which
reads the same JWT as the UI (the ``Authorization: Bearer`` header, else the ``_token`` cookie
that the UI's login sets and that the browser sends with the iframe's requests) and asks the
configured auth manager whether that user may read the ``harvest`` DAG. No token: 401; a bad
token or no access: 403. ``tests/plugins/test_auth.py`` checks every route of this app.

Where it shows (``external_views``):

- **Harvest** in the navigation bar (``/plugin/harvest``): ``GET /harvest/``;
- a **Harvest** tab on every DAG run (``destination="dag_run"``): ``GET /harvest/runs/{run_id}``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.templating import Jinja2Templates

from include.harvest import charts, report
from include.harvest.hooks import RESULTS_CONN_ID, results_db_connection

log = logging.getLogger(__name__)

DAG_ID = "harvest"
MOUNT = "/harvest"  # where the API server mounts the app: the pages are /harvest/...
_DATE_KEY = re.compile(r"^\d{4}-\d{2}-\d{2}$")  # a date's run (schedule, backfill): labelled by its date

templates = Jinja2Templates(directory=Path(__file__).with_name("harvest_templates"))
templates.env.filters["num"] = lambda n: "–" if n is None else f"{n:,}"
templates.env.filters["bytes"] = report.format_bytes
templates.env.filters["duration"] = report.format_duration
templates.env.filters["pct"] = lambda x: "–" if x is None else f"{100 * x:.1f}%"
templates.env.filters["utc"] = lambda d: "–" if d is None else f"{d:%Y-%m-%d %H:%M:%S} UTC"
templates.env.filters["urlpart"] = lambda s: quote(str(s), safe="")
templates.env.globals["status_color"] = charts.status_color

app = FastAPI(
    title="Harvest",
    # Every route, present and future: a user who may read the harvest DAG.
    dependencies=[Depends(requires_access_dag("GET", param_dag_id=DAG_ID))],
    # No /docs, /redoc or /openapi.json: FastAPI adds those without the app's dependencies.
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


class ResultsUnavailable(RuntimeError):
    """The results DB cannot be reached through the harvest_db Connection."""


@app.exception_handler(ResultsUnavailable)
def _results_unavailable(request: Request, exc: ResultsUnavailable) -> Response:
    return _page(
        request, "message.html", status_code=503, heading="Results database unavailable", text=str(exc)
    )


@app.exception_handler(StarletteHTTPException)
async def _refused(request: Request, exc: StarletteHTTPException) -> Response:
    """A refusal as a page for a browser (the status stays 401/403), as JSON for anything else."""
    if exc.status_code in (401, 403) and "text/html" in request.headers.get("accept", ""):
        return _page(
            request,
            "message.html",
            status_code=exc.status_code,
            heading="Log in to see Harvest" if exc.status_code == 401 else "Not allowed",
            text=(
                "The Harvest page needs an Airflow login."
                if exc.status_code == 401
                else f"Airflow refused this request ({exc.detail}): the Harvest page needs a login "
                f"that may read the '{DAG_ID}' DAG."
            ),
            login=True,
        )
    return await http_exception_handler(request, exc)


@contextlib.contextmanager
def _results() -> Iterator[Any]:
    """A read-only connection to the results DB for one request."""
    try:
        conn = results_db_connection()
    except Exception as exc:  # the hook raises many kinds: missing Connection, refused, bad password
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("harvest report: results DB unavailable: %s", first_line)
        raise ResultsUnavailable(
            f"The results database cannot be reached through the Airflow Connection "
            f"'{RESULTS_CONN_ID}': {first_line}"
        ) from exc
    try:
        report.make_read_only(conn)
        yield conn
    finally:
        conn.close()


def _airflow_base(request: Request) -> str:
    """The Airflow UI's base path (``/`` or ``[api] base_url``'s path), for <base href>."""
    root = request.scope.get("root_path", "").removesuffix(MOUNT)
    return root.rstrip("/") + "/"


def _page(request: Request, template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.update(base=_airflow_base(request), dag_id=DAG_ID)
    return templates.TemplateResponse(request, template, context, status_code=status_code)


@app.get("/", response_class=HTMLResponse)
def overview(
    request: Request, runs: int = Query(report.DEFAULT_RECENT_RUNS, ge=1, le=report.MAX_RECENT_RUNS)
):
    """Recent runs: charts (status per run, throughput, failure rate) and one table row per run."""
    with _results() as conn:
        rows = report.recent_runs(conn, limit=runs)
    oldest_first = list(reversed(rows))
    bars = [
        charts.Bar(
            key=r.dag_run_id,
            label=r.run_key[5:] if _DATE_KEY.match(r.run_key) else f"{r.finished_at:%m-%d %H:%M}",
            title=f"{r.run_key} ({r.run_type_label})",
            counts=r.counts,
            href=f"harvest/runs/{quote(r.dag_run_id, safe='')}",
        )
        for r in oldest_first
    ]
    throughput = [
        charts.Point(at=r.finished_at, value=r.urls_per_s, label=r.run_key)
        for r in oldest_first
        if r.urls_per_s is not None
    ]
    failure = [
        charts.Point(at=r.finished_at, value=100 * r.failure_rate, label=r.run_key)
        for r in oldest_first
        if r.failure_rate is not None
    ]
    statuses = [s for s in report.STATUS_ORDER if any(r.counts.get(s) for r in rows)]
    return _page(
        request,
        "overview.html",
        runs=rows,
        limit=runs,
        statuses=statuses,
        status_chart=charts.stacked_bars(bars),
        throughput_chart=charts.time_series(throughput, title="Throughput (URLs/s) per run", unit="URLs/s"),
        failure_chart=charts.time_series(
            failure, title="Failure rate per run", unit="%", percent=True, color="#d32f2f"
        ),
        legend=charts.status_legend(statuses),
    )


@app.get("/runs/{dag_run_id}", response_class=HTMLResponse)
def run_view(
    request: Request,
    dag_run_id: str,
    page: int = Query(1, ge=1),
    status: str | None = Query(None),
    dag_id: str | None = Query(None, description="set by the DAG run tab: other DAGs have no report"),
):
    """One DAG run: status breakdown, failing and slow hosts, failed URLs (paged), downloads."""
    if dag_id is not None and dag_id != DAG_ID:
        return _page(
            request,
            "message.html",
            status_code=404,
            heading="No Harvest report for this DAG",
            text=f"The Harvest tab reports runs of the '{DAG_ID}' DAG; this is a run of '{dag_id}'.",
        )
    with _results() as conn:
        run = report.find_run(conn, dag_run_id)
        if run is None:
            return _page(request, "run_missing.html", status_code=404, dag_run_id=dag_run_id)
        hosts = report.host_report(conn, run.run_key)
        failed = report.failed_urls(conn, run.run_key, page=page, status=status or None)
    return _page(
        request,
        "run.html",
        run=run,
        hosts=hosts,
        failed=failed,
        status_chart=charts.status_bar(run.counts, label=f"URLs per status in {run.run_key}"),
        legend=charts.status_legend([s for s, _ in run.statuses]),
        failed_statuses=report.FAILED_STATUSES,
    )


@app.get("/runs/{dag_run_id}/failed.csv")
def failed_csv(dag_run_id: str, status: str | None = Query(None)) -> Response:
    """The run's failed URLs as CSV (url,status,http_status,error): usable as a Harvest list file."""
    return _download(dag_run_id, status, report.failed_urls_csv, "csv", "text/csv; charset=utf-8")


@app.get("/runs/{dag_run_id}/failed.txt")
def failed_txt(dag_run_id: str, status: str | None = Query(None)) -> Response:
    """The run's failed URLs, one per line: paste them into the trigger form's URLs field."""
    return _download(dag_run_id, status, report.failed_urls_text, "txt", "text/plain; charset=utf-8")


def _download(dag_run_id: str, status: str | None, render: Any, suffix: str, media_type: str) -> Response:
    stack = contextlib.ExitStack()
    conn = stack.enter_context(_results())
    try:
        run = report.find_run(conn, dag_run_id)
    except BaseException:
        stack.close()
        raise
    if run is None:
        stack.close()
        raise HTTPException(404, f"no results recorded for DAG run {dag_run_id}")

    def body() -> Iterator[str]:
        with stack:
            yield from render(report.iter_failed_urls(conn, run.run_key, status=status or None))

    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in run.run_key)
    return StreamingResponse(
        body(),
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="harvest-failed-{name}.{suffix}"'},
        # Also closes the connection when the client left before the body was read.
        background=BackgroundTask(stack.close),
    )


@app.get("/icon.svg")
def icon() -> Response:
    """The navigation icon (a basket of dots), in the UI's own line style."""
    return Response(
        content=(
            '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="currentColor"'
            ' stroke-width="2" stroke-linecap="round" stroke-linejoin="round">'
            '<path d="M4 10h16l-2 10H6z"/><path d="M8 10l4-6 4 6"/>'
            '<circle cx="9" cy="15" r="1"/><circle cx="15" cy="15" r="1"/></svg>'
        ),
        media_type="image/svg+xml",
        headers={"Cache-Control": "private, max-age=3600"},
    )


class HarvestReportPlugin(AirflowPlugin):
    """The Harvest page: a navigation entry and a tab on DAG runs, served by one FastAPI app."""

    name = "harvest_report"
    fastapi_apps = [{"app": app, "url_prefix": MOUNT, "name": "Harvest report"}]
    external_views = [
        {
            "name": "Harvest",
            "href": "harvest/",
            "url_route": "harvest",
            "destination": "nav",
            "nav_top_level": True,
            "icon": "harvest/icon.svg",
        },
        {
            "name": "Harvest",
            "href": "harvest/runs/{RUN_ID}?dag_id={DAG_ID}",
            "url_route": "harvest-run",
            "destination": "dag_run",
        },
    ]
