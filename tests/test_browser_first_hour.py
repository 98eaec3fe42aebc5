"""Issue 14 "a new user's first hour" in a real Chromium: Aggregate now with a hung proposer,
layout (plotly toolbar vs chart titles, 8-proposer heatmap labels, card headers), and a click
on a History row opening the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from moa import config as config_mod
from moa.store import Store
from tests.appserver import (
    CHROMIUM,
    ROOT,
    AppServer,
    app_env,
    launch_chromium,
    pick_preset,
    submit_prompt,
)
from tests.conftest import make_config
from tests.fakeserver import FakeServer

pytestmark = pytest.mark.browser
if not Path(CHROMIUM).exists():
    pytest.skip(f"Chromium is not installed at {CHROMIUM}", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")

ARTIFACTS = ROOT / "test-artifacts"
EIGHT = [f"p{i}" for i in range(8)]


@pytest.fixture
def app(tmp_path, netns):
    fake = FakeServer().start()
    presets = tmp_path / "presets"
    hung = make_config(fake, ["fast", "steady", "hung"], name="hung", timeout_s=120)
    hung.proposers[1].max_tokens = 4096  # a long "max tok" figure in the card header
    config_mod.save_preset(hung, "a-hung", presets)  # first: the default preset
    config_mod.save_preset(make_config(fake, EIGHT, name="eight"), "eight", presets)
    fake.set("fast", text="Water matters most for plants. Light matters too.")
    fake.set("steady", text="Plants need light. Roots drink water.", delay_s=0.5)
    fake.set("hung", text="I will never finish this answer at all.", fault="hang")
    fake.set("agg", text="Water matters most for plants. Plants need light. A new idea here.")
    for i, name in enumerate(EIGHT):
        fake.set(name, text=f"Plants need water number {i}. Light is good for leaf {i}.")
    db = tmp_path / "moa.db"
    env = app_env(db, presets, "")
    server = AppServer(env).start()
    try:
        server.wait_healthy()
        yield server, db, fake
    finally:
        server.stop()
        fake.stop()


def _boxes_overlap(a: dict, b: dict) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


def test_aggregate_now_with_a_hung_proposer_then_layout_and_history_row_click(app, netns):
    server, db, fake = app
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(server.url)
        page.get_by_role("button", name="Run").wait_for(timeout=30_000)
        submit_prompt(page, "What do plants need?")
        # Two proposers answer; the third hangs. Aggregate now is offered next to Stop.
        try:
            page.locator(".moa-card[data-call='1-proposer-1'][data-status=ok]").wait_for(
                timeout=60_000
            )
        except Exception:
            page.screenshot(path=ARTIFACTS / "first-hour-failed.png", full_page=True)
            raise
        button = page.get_by_role("button", name="Aggregate now")
        playwright_api.expect(button).to_be_enabled()
        button.click()
        page.locator(".moa-runhead .moa-ok").wait_for(timeout=20_000)
        assert "aggregated early" in page.locator(".moa-runhead").inner_text()
        hung = page.locator(".moa-card[data-call='1-proposer-2']")
        assert hung.get_attribute("data-status") == "cancelled"
        assert "Aggregate now" in hung.locator(".moa-error").inner_text()
        assert page.locator(".moa-final[data-status=ok]").count() == 1
        # The card header shows its settings whole (the model id is what gets cut, if any).
        params = page.locator(".moa-card[data-call='1-proposer-1'] .moa-params")
        assert params.inner_text().endswith("max 4,096 tok")
        assert params.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
        # The plotly toolbar, shown on hover, does not cover the chart's title.
        chart = page.locator(".stPlotlyChart", has_text="Share of the final answer").first
        chart.hover()
        toolbar = chart.locator(".modebar-container .modebar").first
        toolbar.wait_for(state="visible")
        title = chart.locator(".gtitle").first
        assert not _boxes_overlap(toolbar.bounding_box(), title.bounding_box())
        # Nor does a chart's legend run into its title.
        timeline = page.locator(".stPlotlyChart", has_text="Where the time went").first
        legend = timeline.locator(".legend").first.bounding_box()
        assert not _boxes_overlap(legend, timeline.locator(".gtitle").first.bounding_box())
        page.screenshot(path=ARTIFACTS / "aggregate-now.png", full_page=True)

        # Eight proposers: every heatmap label fits inside its cell.
        pick_preset(page, "eight")
        page.get_by_text("Proposer 8").wait_for()
        submit_prompt(page, "What do plants need?")
        heat = page.locator(".stPlotlyChart", has_text="Agreement between candidates").first
        heat.wait_for(timeout=30_000)
        heat.scroll_into_view_if_needed()
        fits = heat.evaluate(
            """el => {
              const texts = [...el.querySelectorAll('.hm text, g.textpoint text, .heatmaplayer text')];
              const plot = el.querySelector('.nsewdrag').getBoundingClientRect();
              const cell = plot.width / 8;
              return texts.filter(t => t.textContent).map(t => [t.textContent,
                t.getBoundingClientRect().width, cell]);
            }"""
        )
        assert len(fits) == 8 * 7, fits  # the diagonal is blank
        too_wide = [f for f in fits if f[1] > f[2] - 4]
        assert too_wide == [], too_wide
        page.screenshot(path=ARTIFACTS / "eight-proposers.png", full_page=True)

        # History: a click on a row's cell (not its checkbox) opens the run.
        newest = Store(db).search_runs()[0]
        page.goto(server.url + "History")
        grid = page.get_by_test_id("stDataFrame").first
        grid.wait_for(timeout=30_000)
        box = grid.bounding_box()
        # The first data row, in the "prompt" column's area (right of the short columns).
        page.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + 35 + 18)
        page.locator(".moa-runhead").wait_for(timeout=20_000)
        assert page.locator(".moa-runhead").get_attribute("data-run") == newest.id
        browser.close()

    record = Store(db).get_run(Store(db).search_runs()[1].id)
    assert record.aggregated_early and record.status == "ok"
    assert [c.status for c in record.proposer_calls] == ["ok", "ok", "cancelled"]
