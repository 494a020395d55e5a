"""The status page in a real browser (Debian's chromium, driven by Playwright) against a
real server holding jobs in every state: it shows them, it picks up a new job without a
reload, and a job's page shows its executions, log tail and history."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import open_channel, running_server
from tests.web.workload import FLAVOR, FLAVORED, RUNNER, UNSERVED, every_state, spec, submit

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

# The system's browser; tests never download one.
CHROMIUM = Path(os.environ.get("DISPATCHER_TEST_CHROMIUM", "/usr/bin/chromium"))


def need_a_browser() -> None:
    """Skip without chromium or Playwright on a developer's machine; fail in CI, which
    installs chromium (.ci/run) so that this test always runs there."""
    missing = ""
    if not (CHROMIUM.exists() or shutil.which(str(CHROMIUM))):
        missing = f"no chromium at {CHROMIUM} (apt-get install chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed (the dev extra has it)"
    if not missing:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run the browser test, but: {missing}", pytrace=False)
    pytest.skip(missing)


async def test_the_status_page_shows_every_state_and_updates_live(
    database_url: str, tmp_path: Path
) -> None:
    need_a_browser()
    from playwright.async_api import async_playwright, expect

    async with (
        running_server(database_url) as server,
        open_channel(server) as channel,
        async_playwright() as pw,
    ):
        work = await every_state(channel)
        base = f"http://127.0.0.1:{server.http_port}"
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = await browser.new_page(viewport={"width": 1360, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

            def on_console(message: Any) -> None:
                if message.type == "error":
                    problems.append(f"console: {message.text}")

            page.on("console", on_console)
            await page.goto(base + "/")
            await expect(page).to_have_title("status · dispatcher")

            assert set(work.ids) == {
                "QUEUED",
                "BUILDING",
                "SUCCEEDED",
                "FAILED",
                "CANCELLED",
                "NOTICED",
                "IRRECOVERABLE",
                "NOT_FOR_US",
            }
            for state, ids in work.ids.items():
                for job_id in ids:
                    row = page.locator(f"#job-{job_id}")
                    await expect(row).to_have_attribute("data-state", state)
                    await expect(row.locator(".state")).to_have_text(state)
                await expect(page.locator(f"#count-{state} b")).to_have_text(str(len(ids)))
            [building] = work.ids["BUILDING"]
            runner_row = page.locator(f"#runner-{RUNNER}")
            await expect(runner_row).to_contain_text("ONLINE")
            await expect(runner_row).to_contain_text(f"job {building} (execution ")
            await expect(runner_row).to_contain_text("1 / 1")
            flavor_row = page.locator(f"#flavor-{FLAVOR}")
            await expect(flavor_row).to_contain_text(FLAVORED)
            await expect(flavor_row.locator("td.num").first).to_have_text("2")  # its minimum
            await expect(page.locator("#events")).to_contain_text("cancelled")

            # A job submitted now appears without a reload: the marker survives.
            await page.evaluate("window.stillTheSamePage = true")
            fresh = await submit(channel, spec(UNSERVED, queue="arrived-live"))
            await expect(page.locator(f"#job-{fresh}")).to_have_attribute(
                "data-state", "QUEUED", timeout=10_000
            )
            await expect(page.locator("#count-QUEUED b")).to_have_text("2")
            assert await page.evaluate("window.stillTheSamePage") is True
            await expect(page.locator("#live-badge")).to_contain_text("updated")

            shot = tmp_path / "status-page.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"\nstatus page screenshot: {shot}")

            # Filtering by state keeps only those jobs.
            await page.goto(base + "/?state=FAILED")
            await expect(page.locator("#jobs tbody tr")).to_have_count(1)

            [failed] = work.ids["FAILED"]
            await page.goto(base + "/")
            await page.click(f"#job-{failed} a")
            await expect(page).to_have_url(f"{base}/jobs/{failed}")
            await expect(page.locator("#job-fields")).to_contain_text("FAILED")
            await expect(page.locator("#executions .logtail")).to_contain_text("error: no rule")
            await expect(page.locator("#executions")).to_contain_text(RUNNER)
            await expect(page.locator("#history")).to_contain_text("submitted")
            await expect(page.locator("#history")).to_contain_text("failed")

            await page.goto(f"{base}/jobs/{building}")
            await expect(page.locator("#executions .logtail")).to_contain_text("step 3/7")
            shot = tmp_path / "job-page.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"job page screenshot: {shot}")

            assert problems == []
        finally:
            await browser.close()
            assert work.runner is not None
            await work.runner.call.done_writing()
