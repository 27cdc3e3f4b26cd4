"""The Airflow UI as a person uses it, in a real browser (Playwright driving Debian's chromium).

On the package's real stack: log in through the login page, trigger the harvest DAG from its
form with good and bad URLs, watch the run succeed, read the Harvest page from the navigation and
the run's Harvest tab, and check what they show against Postgres; an invalid form value creates no
run; once logged out, the Harvest page is refused. Every step leaves a screenshot in
``tests/artifacts/ui/`` (ignored by git).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from playwright.sync_api import Browser, FrameLocator, Page, expect, sync_playwright

from tests.e2e.conftest import ImageSite, RunningStack

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
RUN_TIMEOUT_MS = 240_000  # a few URLs take ~10-30 s; the 2-core box may be busy with other runs
expect.set_options(timeout=30_000)


@dataclass
class UI:
    browser: Browser
    stack: RunningStack
    storage_state: dict  # the cookies of the login through the login page

    @property
    def url(self) -> str:
        return self.stack.stack.api_url

    def page(self) -> Page:
        context = self.browser.new_context(
            viewport={"width": 1400, "height": 1000}, storage_state=self.storage_state
        )
        context.set_default_timeout(30_000)
        return context.new_page()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def log_in(page: Page, base_url: str, password: str) -> None:
    page.goto(base_url)
    expect(page).to_have_url(re.compile(r"/auth/login"))
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Welcome")).to_be_visible()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium (or: apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def ui(browser: Browser, harvest_stack: RunningStack) -> Iterator[UI]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    log_in(page, harvest_stack.stack.api_url, harvest_stack.stack.admin_password())
    shot(page, "01-logged-in")
    yield UI(browser, harvest_stack, context.storage_state())
    context.close()


def harvest_frame(page: Page) -> FrameLocator:
    return page.frame_locator('iframe[title="Harvest"]')


def counts_in_postgres(stack: RunningStack, dag_run_id: str) -> dict[str, int]:
    with stack.results_db() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT status, count(*) FROM harvest.downloads WHERE dag_run_id = %s GROUP BY 1", (dag_run_id,)
        )
        return {status: n for status, n in cur.fetchall()}


def failed_in_postgres(stack: RunningStack, dag_run_id: str) -> dict[str, tuple[str, str]]:
    with stack.results_db() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT url, status, error FROM harvest.downloads WHERE dag_run_id = %s AND status NOT IN ('ok', 'not_modified')",
            (dag_run_id,),
        )
        return {url: (status, error) for url, status, error in cur.fetchall()}


def open_trigger_form(page: Page, base_url: str) -> None:
    """From the Dags list to the harvest DAG, then its Trigger form."""
    page.goto(base_url)
    page.get_by_role("link", name="Dags", exact=True).click()
    expect(page).to_have_url(re.compile(r"/dags$"))
    page.locator(
        'a[href$="/dags/harvest"]', has_text=re.compile(r"^harvest$")
    ).first.click()  # the DAG's name
    expect(page).to_have_url(re.compile(r"/dags/harvest$"))
    expect(page.get_by_text("record_results").first).to_be_visible()  # the DAG's own page is drawn
    page.get_by_role("button", name="Trigger Dag").click()
    expect(page.get_by_role("dialog").get_by_text("Run Parameters")).to_be_visible()


def test_a_run_triggered_from_the_form_is_reported_on_the_harvest_page(ui: UI, image_site: ImageSite) -> None:
    good = list(image_site.add_images("ui", 3, seed=501))
    bad = [
        f"{image_site.base_url}/ui-missing.jpg",  # http_error: 404
        "http://127.0.0.1:9/refused.jpg",  # connection_error: nothing listens on the discard port
        "ftp://example.com/a.jpg",  # rejected: not http(s)
    ]
    page = ui.page()

    # The harvest DAG's Trigger form, URLs filled in (the field has no <label>: found by its name).
    open_trigger_form(page, ui.url)
    dialog = page.get_by_role("dialog")
    dialog.locator('textarea[name="element_urls"]').fill("\n".join(good + bad))
    shot(page, "02-trigger-form")
    dialog.get_by_role("button", name="Trigger").click()

    # The UI opens the new run; its state badge (next to the run id) turns to Success.
    expect(page).to_have_url(re.compile(r"/dags/harvest/runs/[^/]+$"))
    run_id = unquote(page.url.rsplit("/runs/", 1)[1])
    badge = page.locator(
        f"xpath=//h2[normalize-space()='{run_id}']/following-sibling::*[@data-testid='state-badge'][1]"
    )
    expect(badge).to_have_text(re.compile("Success|Failed"), timeout=RUN_TIMEOUT_MS)
    shot(page, "03-run-finished")
    assert badge.inner_text().strip() == "Success", ui.stack.api.describe_failures("harvest", run_id)

    expected = counts_in_postgres(ui.stack, run_id)
    assert expected == {"ok": 3, "http_error": 1, "connection_error": 1, "rejected": 1}

    # The Harvest page, from the navigation bar: this run's row and its bar in the chart.
    page.locator('a[href="/plugin/harvest"]').click()
    overview = harvest_frame(page)
    row = overview.locator(f'#runs tr[data-dag-run-id="{run_id}"]')
    expect(row).to_be_visible()
    shot(page, "04-harvest-overview")
    shown = {
        status: int(row.locator(f'td[data-status="{status}"]').inner_text().replace(",", ""))
        for status in expected
    }
    assert shown == expected
    assert row.locator('td[data-col="urls"]').inner_text() == "6"
    bar = overview.locator(f'#status-chart g.bar[data-run="{run_id}"] rect.segment')
    assert {
        s.get_attribute("data-status"): int(s.get_attribute("data-count") or 0) for s in bar.all()
    } == expected

    # The run's own view, as a tab on the DAG run.
    page.goto(f"{ui.url}/dags/harvest/runs/{quote(run_id, safe='')}")
    page.locator('a[href$="/plugin/harvest-run"]').click()
    report = harvest_frame(page)
    expect(report.locator("#status-breakdown")).to_be_visible()
    shot(page, "05-run-tab")
    segments = report.locator("#status-breakdown svg rect.segment")
    assert {
        s.get_attribute("data-status"): int(s.get_attribute("data-count") or 0) for s in segments.all()
    } == expected
    table = {
        r.get_attribute("data-status"): int(r.locator("td[data-count]").get_attribute("data-count") or 0)
        for r in report.locator("#status-counts tbody tr").all()
    }
    assert table == expected
    assert report.locator('[data-fact="urls"]').inner_text() == "6"
    assert report.locator('[data-fact="failed"]').inner_text() == "3"

    # The failed URLs with their errors, and the CSV download: the same as Postgres.
    failed = failed_in_postgres(ui.stack, run_id)
    listed = {
        r.locator("td.url").inner_text(): (r.get_attribute("data-status"), r.locator("td.err").inner_text())
        for r in report.locator("#failed-urls tbody tr").all()
    }
    assert listed == failed
    assert "404" in failed[bad[0]][1]  # an error text a person can act on
    with page.expect_download() as download:
        report.locator("#download-csv").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert {r["url"]: (r["status"], r["error"]) for r in rows} == failed

    # A link in the report leads the whole UI (not the frame) to the DAG run.
    report.get_by_role("link", name=re.compile(re.escape(run_id))).first.click()
    expect(page).to_have_url(re.compile(rf"/dags/harvest/runs/{re.escape(quote(run_id, safe=''))}$"))
    page.context.close()


def test_an_invalid_value_in_the_form_creates_no_run(ui: UI) -> None:
    page = ui.page()
    before = {r["dag_run_id"] for r in ui.stack.api.runs("harvest")}
    open_trigger_form(page, ui.url)
    dialog = page.get_by_role("dialog")

    # Batch size 0: Airflow's number field does not keep a value under the param's minimum (1).
    batch_size = dialog.locator('input[name="element_batch_size"]')
    batch_size.fill("0")
    batch_size.blur()
    expect(batch_size).to_have_value("1")
    batch_size.fill("")

    # Largest file 0 MiB (exclusiveMinimum 0) reaches the server, which refuses the trigger.
    max_mb = dialog.locator('input[name="element_max_mb"]')
    max_mb.fill("0")
    max_mb.blur()
    expect(max_mb).to_have_value("0")
    dialog.get_by_role("button", name="Trigger").click()
    expect(page.get_by_text("Failed to Trigger Dag").first).to_be_visible()  # the UI shows it twice
    shot(page, "06-invalid-value-refused")
    expect(dialog).to_be_visible()  # the form stays open with what the user typed
    expect(page).to_have_url(re.compile(r"/dags/harvest$"))
    assert {r["dag_run_id"] for r in ui.stack.api.runs("harvest")} == before
    page.context.close()


def test_the_harvest_page_is_refused_once_logged_out(ui: UI) -> None:
    page = ui.page()
    page.goto(f"{ui.url}/plugin/harvest")
    expect(harvest_frame(page).locator("h1")).to_have_text("Harvest")
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "_token")

    page.get_by_role("button", name="User").click()
    page.get_by_role("menuitem", name="Logout").click()
    page.get_by_role("button", name="Confirm").click()
    expect(page).to_have_url(re.compile(r"/auth/login"))

    page.goto(f"{ui.url}/plugin/harvest")
    expect(page).to_have_url(re.compile(r"/auth/login\?next="))  # the UI sends the user to log in
    page.goto(f"{ui.url}/harvest/")  # the plugin's own page, asked for directly
    expect(page.get_by_role("heading", name="Log in to see Harvest")).to_be_visible()
    shot(page, "07-refused-after-logout")
    assert page.context.request.get(f"{ui.url}/harvest/").status == 401
    # The token of the closed session was revoked at logout: refused too.
    revoked = page.context.request.get(f"{ui.url}/harvest/", headers={"Authorization": f"Bearer {token}"})
    assert revoked.status == 403
    page.context.close()

    # A fresh browser context, never logged in: the same.
    fresh = ui.browser.new_context()
    assert fresh.request.get(f"{ui.url}/harvest/").status == 401
    assert fresh.request.get(f"{ui.url}/harvest/runs/x/failed.csv").status == 401
    fresh.close()
