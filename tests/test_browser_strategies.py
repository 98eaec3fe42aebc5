"""The Run page in a real Chromium: pick a strategy in the sidebar and see its own output."""

from __future__ import annotations

from pathlib import Path

import pytest

from moa import config as config_mod
from moa.store import Store
from tests.appserver import (
    CHROMIUM,
    AppServer,
    app_env,
    launch_chromium,
    submit_prompt,
)
from tests.conftest import make_config
from tests.fakeserver import FakeServer

pytestmark = pytest.mark.browser
if not Path(CHROMIUM).exists():
    pytest.skip(f"Chromium is not installed at {CHROMIUM}", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")

ANSWERS = {
    "p1": "The answer is 391.",
    "p2": "17 times 23 is 391, so the answer is 391.",
    "p3": "<b>I pick candidate 3.</b> The answer is 400.",
}


@pytest.fixture
def app(tmp_path, netns):
    fake = FakeServer().start()
    presets = tmp_path / "presets"
    config_mod.save_preset(make_config(fake, list(ANSWERS), name="panel"), "a-panel", presets)
    for name, text in ANSWERS.items():
        fake.set(name, text=text, token_delay_s=0.02)
    fake.set("agg", text="The aggregator's synthesis.")
    db = tmp_path / "moa.db"
    env = app_env(db, presets, "a-panel")
    server = AppServer(env).start()
    try:
        server.wait_healthy()
        yield server, fake, db
    finally:
        server.stop()
        fake.stop()


def test_pick_vote_in_the_sidebar_and_see_the_vote_table(app, netns):
    server, fake, db = app
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(server.url)
        page.get_by_role("button", name="Run").wait_for(timeout=20_000)
        box = page.get_by_test_id("stSelectbox").filter(has_text="Strategy")
        box.scroll_into_view_if_needed()
        box.click()
        page.get_by_role("option", name="vote", exact=True).click(timeout=60_000)
        page.get_by_text("the majority answer wins with no aggregator call").wait_for(
            timeout=60_000
        )
        submit_prompt(page, "What is 17*23?")
        vote = page.locator(".moa-outcome[data-outcome=vote]")
        # Generous: the first run imports litellm, and the 2 cores are shared.
        vote.wait_for(timeout=120_000)
        page.locator(".moa-runhead .moa-ok").wait_for(timeout=60_000)
        text = vote.inner_text()
        assert "Majority: 391 (no aggregator called)" in text
        assert "391 × 2" in text and "400 × 1" in text
        # The winning candidate's card is the final answer, marked as such (once the finished
        # turn is redrawn, a moment after the live view's last update).
        final = page.locator(".moa-card.moa-final")
        final.first.wait_for(timeout=30_000)
        assert final.count() == 1
        assert final.get_attribute("data-call") == "1-proposer-0"
        assert "majority answer" in final.locator(".moa-selected").inner_text()
        assert page.locator("b", has_text="I pick candidate 3").count() == 0  # shown as text
        browser.close()
    assert fake.requests_for("agg") == []
    (row,) = Store(db).search_runs()
    assert row.strategy == "vote" and row.final_text == ANSWERS["p1"]
