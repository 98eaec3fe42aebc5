"""The address bar in Chromium names what is on screen, so a reload or a shared link lands there:
after a re-aggregation on History, after "Open in the Run page", and on the Run page's turns."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from moa import engine
from moa.store import Store, StoreWriter
from tests.appserver import CHROMIUM, AppServer, launch_chromium
from tests.conftest import make_config
from tests.fakeserver import FakeServer

pytestmark = pytest.mark.browser
if not Path(CHROMIUM).exists():
    pytest.skip(f"Chromium is not installed at {CHROMIUM}", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")


def wait_for_url(page, fragment: str, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    while fragment not in page.url and time.monotonic() < deadline:
        time.sleep(0.1)
    return page.url


def test_reaggregate_and_open_in_the_run_page_update_the_address(tmp_path, netns):
    fake = FakeServer().start()  # inside the loopback-only namespace, with the app server
    try:
        _reaggregate_then_open(fake, tmp_path / "moa.db")
    finally:
        fake.stop()


def _reaggregate_then_open(fake: FakeServer, db: Path) -> None:
    store = Store(db)
    fake.set("agg", text="Plants need water and light.")
    source = engine.run_sync(
        make_config(fake, ["alpha", "beta"]), "What do plants need?", on_event=StoreWriter(store)
    )
    fake.set("judge", text="The judge says water first.")
    with (
        AppServer(env={"MOA_DB": str(db)}) as server,
        playwright_api.sync_playwright() as pw,
    ):
        server.wait_healthy(60)
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url + f"History?run={source.run_id}")
        expander = page.get_by_text("Re-aggregate with another aggregator")
        expander.wait_for(timeout=60_000)
        # A JS click: the charts drawn above keep moving the page while they load.
        page.locator("summary", has_text="Re-aggregate with another aggregator").evaluate(
            "el => el.click()"
        )
        page.get_by_label("Aggregator model (litellm id)").fill("openai/judge")
        page.get_by_label("api_base (optional)").fill(fake.base_url)
        page.get_by_role("button", name="Re-aggregate").click()
        page.get_by_text("The judge says water first.").first.wait_for(timeout=60_000)
        (new,) = [r for r in Store(db).search_runs() if r.id != source.run_id]
        # The address names the new run, not the source: a reload shows the new run.
        assert wait_for_url(page, new.id).endswith(f"History?run={new.id}")
        page.reload()
        page.get_by_text("The judge says water first.").first.wait_for(timeout=60_000)

        # Open in the Run page: the Run page's own address, the form filled in.
        page.get_by_role("button", name="Open in the Run page").click()
        page.get_by_label("Prompt", exact=True).wait_for(timeout=60_000)
        time.sleep(1)
        assert "History" not in page.url and "run=" not in page.url, page.url
        assert page.get_by_label("Prompt", exact=True).input_value() == "What do plants need?"
        browser.close()
