"""Every route of the Harvest plugin refuses anyone who is not an Airflow user allowed to read the
harvest DAG, through Airflow's own auth manager, and serves those who are.

The routes are enumerated from the app that Airflow's plugins manager loaded, so a route added
later is checked without touching this file; a route whose path parameters the tests cannot fill
fails the test instead of escaping it.
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote

import jwt
import pytest
from starlette.routing import Mount, Route

from tests.plugins.conftest import AirflowAPI

# Sample values for path parameters; a new parameter must be added here (the test says so).
PATH_PARAMS = {"dag_run_id": "{run_id}"}
KNOWN_ROUTES = {
    "/",
    "/runs/{dag_run_id}",
    "/runs/{dag_run_id}/failed.csv",
    "/runs/{dag_run_id}/failed.txt",
    "/icon.svg",
}


def plugin_routes(api: AirflowAPI) -> list[tuple[str, str]]:
    """(method, URL) of every route of the plugin app, as served under Airflow's mount."""
    found = []
    for route in api.plugin_app.routes:
        assert isinstance(route, Route), (
            f"{route!r}: not a plain route; check its authentication and extend this test"
        )
        params = set(re.findall(r"{(\w+)(?::\w+)?}", route.path))
        missing = params - set(PATH_PARAMS)
        assert not missing, f"{route.path}: add a sample value for {missing} to PATH_PARAMS"
        path = route.path
        for name in params:
            value = quote(PATH_PARAMS[name].format(run_id=api.run_id), safe="")
            path = re.sub(r"{" + name + r"(?::\w+)?}", value, path)
        for method in sorted(route.methods or {"GET"}):
            if method != "HEAD":
                found.append((method, api.url_prefix + path))
    return found


def bad_credentials(api: AirflowAPI) -> dict[str, tuple[str, int]]:
    """Tokens that must not pass, and the status Airflow's security layer answers them with."""
    valid = api.token("viewer", "viewer")
    claims = jwt.decode(valid, options={"verify_signature": False})
    header = jwt.get_unverified_header(valid)
    now = int(time.time())
    return {
        "garbage": ("not-a-jwt", 403),
        "signed with another secret": (jwt.encode(claims, "x" * 64, algorithm=header["alg"]), 403),
        "expired": (
            jwt.encode(
                {**claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600},
                api.jwt_secret,
                algorithm=header["alg"],
            ),
            401,
        ),
        # Validly signed, but the auth manager gives this user no access to the harvest DAG.
        "user without access to the DAG": (api.token("nobody", None), 403),
    }


def test_the_plugin_is_loaded_by_airflow_and_mounted_in_the_api_server(airflow_api: AirflowAPI) -> None:
    mounts = {r.path: r.app for r in airflow_api.app.routes if isinstance(r, Mount)}
    assert mounts.get(airflow_api.url_prefix) is airflow_api.plugin_app
    assert airflow_api.url_prefix == "/harvest"
    # Every route the app has is checked below; the list cannot silently be empty or shrink.
    assert {r.path for r in airflow_api.plugin_app.routes if isinstance(r, Route)} >= KNOWN_ROUTES


def test_every_route_refuses_an_anonymous_request(airflow_api: AirflowAPI) -> None:
    routes = plugin_routes(airflow_api)
    assert len(routes) >= len(KNOWN_ROUTES)
    answers = {url: airflow_api.client.request(method, url).status_code for method, url in routes}
    assert answers == dict.fromkeys(answers, 401)


@pytest.mark.parametrize("carrier", ["Authorization header", "_token cookie"])
def test_every_route_refuses_bad_tokens(airflow_api: AirflowAPI, carrier: str) -> None:
    for name, (token, expected) in bad_credentials(airflow_api).items():
        for method, url in plugin_routes(airflow_api):
            if carrier == "Authorization header":
                response = airflow_api.client.request(
                    method, url, headers={"Authorization": f"Bearer {token}"}
                )
            else:
                airflow_api.client.cookies.set("_token", token)
                try:
                    response = airflow_api.client.request(method, url)
                finally:
                    airflow_api.client.cookies.clear()
            assert response.status_code == expected, (
                f"{name} in the {carrier}: {method} {url} -> {response.status_code}"
            )
            assert "harvest" not in response.headers.get("content-disposition", "")


@pytest.mark.parametrize("carrier", ["Authorization header", "_token cookie"])
def test_every_route_serves_a_user_who_may_read_the_dag(airflow_api: AirflowAPI, carrier: str) -> None:
    token = airflow_api.token("viewer", "viewer")  # the least role that may read DAGs
    for method, url in plugin_routes(airflow_api):
        if carrier == "Authorization header":
            response = airflow_api.client.request(method, url, headers={"Authorization": f"Bearer {token}"})
        else:  # how the UI's iframe reaches the page: the login's HttpOnly cookie
            airflow_api.client.cookies.set("_token", token)
            try:
                response = airflow_api.client.request(method, url)
            finally:
                airflow_api.client.cookies.clear()
        assert response.status_code == 200, f"{method} {url} -> {response.status_code}: {response.text[:300]}"


def test_a_refused_browser_gets_a_page_that_says_to_log_in(airflow_api: AirflowAPI) -> None:
    response = airflow_api.client.get(f"{airflow_api.url_prefix}/", headers={"Accept": "text/html"})
    assert response.status_code == 401
    assert "Log in to see Harvest" in response.text
    assert "connection_error" not in response.text  # nothing of the report leaks


def test_the_pages_show_the_run_to_a_viewer(airflow_api: AirflowAPI) -> None:
    headers = {"Authorization": f"Bearer {airflow_api.token('viewer', 'viewer')}"}
    run_url = f"{airflow_api.url_prefix}/runs/{quote(airflow_api.run_id, safe='')}"

    overview = airflow_api.client.get(f"{airflow_api.url_prefix}/", headers=headers)
    run = airflow_api.client.get(run_url, headers=headers)
    csv = airflow_api.client.get(f"{run_url}/failed.csv", headers=headers)

    assert f'data-dag-run-id="{airflow_api.run_id}"' in overview.text
    assert 'data-status="connection_error" data-count="1"' in run.text
    assert csv.headers["content-disposition"].startswith(
        'attachment; filename="harvest-failed-manual__2026-03-01T10'
    )
    assert csv.text.splitlines() == [
        "url,status,http_status,error",
        "http://127.0.0.1:9/a.jpg,connection_error,,refused",
        "not a url,rejected,,line 2: contains whitespace",
    ]


def test_the_ui_views_point_at_routes_of_the_app(airflow_api: AirflowAPI) -> None:
    from airflow import plugins_manager

    views = {v["destination"]: v for v in plugins_manager._get_ui_plugins()[0] if v["name"] == "Harvest"}
    assert set(views) == {"nav", "dag_run"}
    assert views["nav"]["url_route"] == "harvest"
    headers = {"Authorization": f"Bearer {airflow_api.token('viewer', 'viewer')}"}
    # The UI resolves href against its <base href> ("/") and fills {DAG_ID} and {RUN_ID} for a DAG run tab.
    for view in views.values():
        href = (
            view["href"]
            .replace("{DAG_ID}", "harvest")
            .replace("{RUN_ID}", quote(airflow_api.run_id, safe=""))
        )
        assert airflow_api.client.get("/" + href, headers=headers).status_code == 200, href
    other = views["dag_run"]["href"].replace("{DAG_ID}", "other_dag").replace("{RUN_ID}", "x")
    response = airflow_api.client.get("/" + other, headers=headers)
    assert response.status_code == 404 and "No Harvest report for this DAG" in response.text


def test_an_unreachable_results_db_is_a_clear_page_not_a_traceback(
    airflow_api: AirflowAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_HARVEST_DB", "postgresql://harvest:secret@127.0.0.1:1/harvest")
    headers = {"Authorization": f"Bearer {airflow_api.token('viewer', 'viewer')}"}

    response = airflow_api.client.get(f"{airflow_api.url_prefix}/", headers=headers)

    assert response.status_code == 503
    assert "cannot be reached through the Airflow Connection &#39;harvest_db&#39;" in response.text
    assert "secret" not in response.text and "Traceback" not in response.text


def test_a_run_without_results_says_so(airflow_api: AirflowAPI) -> None:
    headers = {"Authorization": f"Bearer {airflow_api.token('viewer', 'viewer')}"}
    response = airflow_api.client.get(f"{airflow_api.url_prefix}/runs/manual__still_running", headers=headers)
    assert response.status_code == 404
    assert "No results recorded for this run" in response.text
