"""The Run page in a real Chromium: streaming, Ctrl+Enter, Stop, the saved run, hostile text."""

from __future__ import annotations

import json
import re
import time
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
PWNED = "document.title='pwned'"
PAYLOADS = [
    f"<script>{PWNED}</script>",
    f'<img src=x onerror="{PWNED}">',
    f"[click](javascript:{PWNED})",
    "<style>body{display:none}</style>",
    '<iframe src="javascript:alert(1)"></iframe>',
]
TEXTS = {
    "alpha": "Plants need sunlight to make food through photosynthesis. Water carries nutrients "
    f"from the roots up to the leaves. {PAYLOADS[0]} Healthy soil holds the minerals that "
    "roots absorb. Most houseplants like bright but indirect light.",
    "beta": "Give plants steady light every single day. Water them when the top of the soil "
    f"feels dry. {PAYLOADS[1]} {PAYLOADS[2]} Most plants grow best between 18 and 24 "
    "degrees. Turn pots now and then so stems grow straight.",
    "gamma": "Roots anchor the plant and absorb water from the soil. "
    f"{PAYLOADS[3]} {PAYLOADS[4]} Fertiliser adds nitrogen, phosphorus and potassium. "
    "Too much water rots the roots, so let pots drain.",
}
FINAL = (
    "Plants need sunlight to make food through photosynthesis. Water them when the top of "
    "the soil feels dry.\n\nRoots anchor the plant and absorb water from the soil. "
    f"{' '.join(PAYLOADS)}\n\nKeep an eye out for pests such as aphids on new leaves."
)
HOSTILE_LABEL = f'<img src=x onerror="{PWNED}">Gamma'

# Records, for every card, the (status, text length) states the page went through.
OBSERVER = """
window.__moaSeen = {};
new MutationObserver(() => {
  for (const card of document.querySelectorAll('.moa-card[data-call]')) {
    const key = card.dataset.call, text = card.querySelector('.moa-text');
    const state = card.dataset.status + ':' + (text ? text.textContent.length : 0);
    const seen = (window.__moaSeen[key] = window.__moaSeen[key] || []);
    if (seen[seen.length - 1] !== state) seen.push(state);
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture
def app(tmp_path, netns):
    fake = FakeServer().start()  # created inside the namespace, like everything below
    presets = tmp_path / "presets"
    xss = make_config(fake, ["alpha", "beta", "gamma"], name=f"xss demo {PAYLOADS[1]}")
    xss.proposers[0].label, xss.proposers[1].label = "Alpha", "Beta"
    xss.proposers[2].label = HOSTILE_LABEL
    xss.aggregator.label = "Writer"
    config_mod.save_preset(xss, "xss-demo", presets)
    slow = make_config(fake, ["slow1", "slow2"], name="slow")
    config_mod.save_preset(slow, "a-slow-loopback", presets)  # first, so the default
    for name, text in TEXTS.items():
        fake.set(name, text=text, token_delay_s=0.03)
    fake.set("agg", text=FINAL, token_delay_s=0.02)
    long = " ".join(f"word{i}" for i in range(200))
    fake.set("slow1", text=long, token_delay_s=0.1)
    fake.set("slow2", text=long, token_delay_s=0.1)
    db = tmp_path / "moa.db"
    env = app_env(db, presets, "")
    server = AppServer(env).start()
    server.fake, server.xss_config = fake, xss
    try:
        server.wait_healthy()
        yield server, db
    finally:
        server.stop()
        fake.stop()


def screenshot(page, name: str) -> None:
    """The whole page: Streamlit scrolls inside its main block, so grow the viewport to fit."""
    size = page.viewport_size
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=stMain], "
        "[data-testid=stSidebarContent]')].map(e => e.scrollHeight))"
    )
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], height)})
    page.wait_for_timeout(300)  # let plotly re-layout to the new size
    page.screenshot(path=ARTIFACTS / name)
    page.set_viewport_size(size)


def _page_visible(page) -> bool:
    """Not hidden by an injected style (body itself is 0 px high in Streamlit's layout)."""
    styles = page.evaluate(
        "() => [getComputedStyle(document.body).display, getComputedStyle(document.body).visibility]"
    )
    return styles == ["block", "visible"] and page.get_by_test_id("stApp").is_visible()


NO_INJECTIONS = dict.fromkeys(("img_x", "onerror", "iframes", "js_links", "scripts", "styles"), 0)


def _dom_injections(page) -> dict[str, int]:
    return page.evaluate(
        """() => ({
        img_x: document.querySelectorAll('img[src="x"]').length,
        onerror: document.querySelectorAll('[onerror]').length,
        iframes: document.querySelectorAll('iframe').length,
        js_links: document.querySelectorAll('a[href^="javascript"]').length,
        scripts: [...document.querySelectorAll('script')].filter(
            s => s.textContent.includes('pwned')).length,
        styles: [...document.querySelectorAll('style')].filter(
            s => s.textContent.includes('display:none') && s.textContent.includes('body{')).length,
    })"""
    )


def test_run_page_streams_highlights_stops_and_is_not_injectable(app, netns):
    server, db = app
    ARTIFACTS.mkdir(exist_ok=True)
    dialogs: list[str] = []
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.add_init_script(OBSERVER)
        page.goto(server.url)
        page.get_by_role("button", name="Run").wait_for(timeout=20_000)
        title = page.title()
        # The sidebar's page links name the Run page "Run" (Streamlit's own would say "app").
        nav = page.locator("[data-testid=stSidebar] [data-testid=stPageLink-NavLink]")
        nav.nth(3).wait_for(timeout=20_000)
        labels = [t.split("\n")[-1] for t in nav.all_inner_texts()]  # after the icon
        assert labels == ["Run", "History", "Insights", "Evaluate"]

        # Pick the hostile preset and run it with Ctrl+Enter.
        pick_preset(page, "xss-demo")
        page.get_by_text("Proposer 3").wait_for()
        submit_prompt(page, "How do plants grow?")
        page.locator(".moa-card[data-status=running] .moa-tail").first.wait_for(timeout=20_000)
        screenshot(page, "run-streaming.png")
        page.locator(".moa-final .moa-seg").first.wait_for(timeout=30_000)
        page.locator(".moa-runhead .moa-ok").wait_for()
        page.get_by_text("Where the time went").wait_for(state="attached")

        # Every candidate streamed: some card state had part of its text, before the end.
        seen = page.evaluate("window.__moaSeen")
        for i, name in enumerate(["alpha", "beta", "gamma"]):
            states = seen[f"1-proposer-{i}"]
            partial = [s for s in states if s.startswith("running:") and s != "running:0"]
            assert partial, f"{name} never showed partial text: {states}"
            lengths = [int(s.split(":")[1]) for s in partial]
            assert min(lengths) < len(TEXTS[name]), f"{name}: no partial state in {states}"
            assert states[-1] == f"ok:{len(TEXTS[name])}"
        # The final answer is tinted by source, with new sentences marked, and a legend.
        final = page.locator(".moa-final")
        assert final.locator(".moa-seg:not(.moa-new)").count() >= 3
        assert final.locator(".moa-seg.moa-new").count() >= 1
        kept = final.locator(".moa-seg:not(.moa-new)").first.get_attribute("title")
        assert kept.startswith("Kept from ") and "score" in kept
        assert page.locator(".moa-legend").inner_text().count("%") == 4
        assert page.locator(".moa-dropped").count() >= 1  # a candidate sentence left out
        # Payloads are shown as text, literally.
        assert (
            HOSTILE_LABEL
            in page.locator(".moa-card[data-call='1-proposer-2'] .moa-name").inner_text()
        )
        assert PAYLOADS[0] in final.inner_text()
        page.get_by_text("Final answer as formatted Markdown").click()
        screenshot(page, "run-final.png")

        assert page.title() == title
        assert dialogs == []
        assert _page_visible(page)
        assert _dom_injections(page) == NO_INJECTIONS
        link = page.locator(".moa-runhead a").get_attribute("href")
        run_id = re.fullmatch(r"\?run=([0-9a-f]+)", link).group(1)
        n_segments = final.locator(".moa-seg").count()

        # Stop: a long, slow run is cancelled mid-stream; what arrived is kept and saved.
        pick_preset(page, "a-slow-loopback")
        page.get_by_text("Proposer 3").wait_for(state="detached")
        submit_prompt(page, "Count slowly.")
        page.locator(".moa-card[data-status=running] .moa-text", has_text="word5 ").first.wait_for(
            timeout=20_000
        )
        page.get_by_role("button", name="Stop").click()
        page.locator(".moa-runhead .moa-cancelled").wait_for(timeout=15_000)
        cards = page.locator(".moa-card[data-status=cancelled]")
        # Two proposers cut mid-stream, and the aggregator, which never started.
        playwright_api.expect(cards).to_have_count(3)
        partial = cards.first.locator(".moa-text").inner_text()
        assert partial.startswith("word0 word1") and "word199" not in partial
        playwright_api.expect(page.get_by_role("button", name="Run")).to_be_enabled()
        screenshot(page, "run-stopped.png")

        # The saved run opens through the same renderer, highlights included.
        page.goto(server.url + f"?run={run_id}")
        page.locator(".moa-final .moa-seg").first.wait_for(timeout=20_000)
        assert page.locator(".moa-final .moa-seg").count() == n_segments
        assert page.locator(".moa-prompt").first.inner_text().endswith("How do plants grow?")
        screenshot(page, "run-saved.png")
        assert page.title() == title and dialogs == [] and _page_visible(page)
        assert _dom_injections(page)["img_x"] == 0
        browser.close()

    runs = Store(db).search_runs()
    by_status = {r.status: r for r in runs}
    assert set(by_status) == {"ok", "cancelled"}
    cancelled = Store(db).get_run(by_status["cancelled"].id)
    assert cancelled.proposer_calls[0].text.startswith("word0 word1")
    (ARTIFACTS / "browser-netns.json").write_text(
        json.dumps({"loopback_only_namespace": netns is None, "why_not": netns})
    )


def test_history_report_download_delete_and_import_in_a_real_browser(app, netns, tmp_path):
    """A hostile run, opened from History: its HTML report (downloaded through the page) is
    inert offline; deleting it and importing its JSON export through the uploader brings back
    the identical run."""
    from moa import engine
    from moa.export import run_to_json
    from moa.store import StoreWriter

    server, db = app
    store = Store(db)
    record = engine.run_sync(
        server.xss_config, f"How do plants grow? {PAYLOADS[1]}", on_event=StoreWriter(store)
    )
    assert record.status == "ok"
    original = run_to_json(store.get_run(record.run_id))
    ARTIFACTS.mkdir(exist_ok=True)
    dialogs: list[str] = []
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(
            accept_downloads=True, viewport={"width": 1400, "height": 1000}
        )
        context.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page = context.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(server.url + f"History?run={record.run_id}")
        page.locator(".moa-final .moa-seg").first.wait_for(timeout=30_000)

        # The stakeholder report, downloaded as a user would, opened as a file.
        with page.expect_download() as dl:
            page.get_by_role("button", name="HTML report").click()
        report = tmp_path / "report.html"
        dl.value.save_as(report)
        with page.expect_download() as dl:
            page.get_by_role("button", name="JSON", exact=True).click()
        export = tmp_path / "export.json"
        dl.value.save_as(export)
        viewer = context.new_page()
        viewer.goto(report.as_uri())
        viewer.locator(".final .seg").first.wait_for()
        assert viewer.title().startswith("MoA run: ")
        assert PAYLOADS[0] in viewer.locator(".final").inner_text()
        assert HOSTILE_LABEL in viewer.locator("body").inner_text()
        assert viewer.locator(".final .seg").count() >= 3  # the highlights made it
        assert _dom_injections(viewer) == NO_INJECTIONS
        # The title is the prompt, payload included, as plain text: no script retitled it.
        assert viewer.title() == f"MoA run: How do plants grow? {PAYLOADS[1]}"
        assert viewer.locator("body").is_visible()
        viewer.screenshot(path=ARTIFACTS / "history-report.png", full_page=True)
        viewer.close()

        # Delete it (with confirmation), then import the JSON export through the uploader.
        page.get_by_role("button", name="Delete", exact=True).click()
        page.get_by_role("button", name="Yes, delete").click()
        page.get_by_text(f"Run {record.run_id} was deleted.").wait_for(timeout=15_000)
        assert store.get_run(record.run_id) is None
        page.get_by_text("No conversations match").wait_for(
            timeout=15_000
        )  # the page redrew without it
        page.get_by_text("Import a run or a conversation (JSON export)").click()
        page.get_by_test_id("stFileUploader").wait_for(timeout=15_000)
        page.locator('[data-testid="stFileUploader"] input[type=file]').set_input_files(export)
        # The upload reruns the page; the Import button must still be in sight.
        page.get_by_role("button", name="Import", exact=True).click(timeout=15_000)
        page.get_by_text(f"Imported run {record.run_id}.").wait_for(timeout=15_000)
        page.locator(".moa-final .moa-seg").first.wait_for(timeout=30_000)
        screenshot(page, "history-imported.png")
        assert page.title() != "pwned" and dialogs == []
        assert _dom_injections(page)["img_x"] == 0
        assert run_to_json(store.get_run(record.run_id)) == original

        # Re-run it: the Run page opens with its prompt and config in the form and runs it.
        page.get_by_role("button", name="Re-run").click()
        again = page.locator(f".moa-runhead[data-run-status=ok]:not([data-run='{record.run_id}'])")
        again.wait_for(timeout=30_000)
        assert "History" not in page.url and "run=" not in page.url
        assert "conversation=" in page.url  # a new conversation, named in the address
        prompt = f"How do plants grow? {PAYLOADS[1]}"
        assert page.locator(".moa-prompt").last.inner_text().endswith(prompt)
        assert page.title() != "pwned" and dialogs == []
        browser.close()
    newest = store.search_runs()[0]
    rerun = store.get_run(newest.id)
    assert newest.id != record.run_id and (rerun.prompt, rerun.status) == (prompt, "ok")
    assert rerun.config == store.get_run(record.run_id).config


def test_evaluate_page_stop_keeps_finished_answers_and_resume_finishes(app, netns):
    """Stop an evaluation from its page while the slow contenders are still answering: it ends
    `cancelled` with the finished answers kept; Resume then answers only what is missing."""
    from moa import evaluate as ev

    server, db = app
    store = Store(db)

    def evaluation():
        found = ev.list_evaluations(store)
        return found[0] if found else None

    def wait_until(check, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.1)

    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url + "Evaluate")
        # The default preset (a-slow-loopback: two proposers taking ~20 s each), one question:
        # the preset, each model alone and Self-MoA, 4 answers in flight.
        limit = page.get_by_label("Questions (0 = all", exact=False)
        limit.fill("1")
        limit.press("Enter")
        page.get_by_text("1 question × 5 contenders = 5 answers").wait_for(timeout=20_000)
        page.get_by_role("button", name="Start evaluation").click()
        page.get_by_role("button", name="Stop").wait_for(timeout=20_000)
        # The fast contenders (the aggregator alone) finish first; then Stop.
        wait_until(lambda: (e := evaluation()) is not None and e.n_scored >= 1, 30)
        page.get_by_role("button", name="Stop").click()
        wait_until(lambda: evaluation().status == "cancelled", 30)
        page.get_by_role("button", name="Resume this evaluation").wait_for(timeout=20_000)
        stopped = ev.load_results(store, evaluation().id)
        finished = ("scored", "failed", "unscored")
        kept = {
            (i.question_id, i.contender): i.run_id for i in stopped.items if i.status in finished
        }
        assert 1 <= len(kept) < 5, kept
        shown = page.locator("[data-testid=stMain]").inner_text()
        assert f"Evaluation stopped with {len(kept)} of 5 answers kept" in shown
        screenshot(page, "evaluate-stopped.png")

        # The slow models answer at once now; Resume answers what is missing, nothing twice.
        for name in ("slow1", "slow2"):
            server.fake.set(name, text="It is 42.", token_delay_s=0)
        page.get_by_role("button", name="Resume this evaluation").click()
        wait_until(lambda: evaluation().status == "ok", 60)
        page.get_by_role("button", name="Resume this evaluation").wait_for(
            state="detached", timeout=20_000
        )
        browser.close()
    done = ev.load_results(store, evaluation().id)
    assert len(ev.list_evaluations(store)) == 1
    assert [i.status for i in done.items] == ["scored"] * 5
    for item in done.items:  # the answers kept at Stop were not asked again
        if (item.question_id, item.contender) in kept:
            assert item.run_id == kept[(item.question_id, item.contender)]
