"""A conversation in a real Chromium: three turns through the chat input, streaming seen, a reload
by the `?conversation=` link that draws the same page, a fourth turn after the reload that is sent
the earlier final answers, a branch from turn 1, and History listing and opening it."""

from __future__ import annotations

import re
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
    submit_prompt,
)
from tests.conftest import make_config
from tests.fakeserver import FakeServer

pytestmark = pytest.mark.browser
if not Path(CHROMIUM).exists():
    pytest.skip(f"Chromium is not installed at {CHROMIUM}", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

ARTIFACTS = ROOT / "test-artifacts"
MESSAGES = [
    "How do plants grow indoors?",
    "Which of those matters most in winter?",
    "Say it again in one short sentence.",
    "Thanks. And for cacti?",
]
# Every card's (status:text length) states, in order, keyed by turn and card (as in
# tests/test_browser.py): a card seen `running` with part of its text is a stream on screen.
OBSERVER = """
window.__moaSeen = {};
new MutationObserver(() => {
  const turns = document.querySelectorAll('.moa-turnhead[data-turn]');
  const turn = turns.length ? turns[turns.length - 1].dataset.turn : '0';
  for (const card of document.querySelectorAll('.moa-card[data-call][data-status=running]')) {
    const text = card.querySelector('.moa-text');
    const key = turn + '/' + card.dataset.call;
    const state = (text ? text.textContent.length : 0);
    (window.__moaSeen[key] = window.__moaSeen[key] || []).push(state);
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""
# What the page shows of a conversation, to compare before and after a reload.
SNAPSHOT = """() => ({
  turns: [...document.querySelectorAll('.moa-turnhead[data-run]')].map(
    h => [h.dataset.turn, h.dataset.run]),
  finals: [...document.querySelectorAll('.moa-final .moa-text')].map(e => e.innerHTML),
  highlights: document.querySelectorAll('.moa-final .moa-seg').length,
  kept: document.querySelectorAll('.moa-final .moa-seg:not(.moa-new)').length,
  whole: [...document.querySelectorAll('.moa-runhead:not(.moa-collapsed)[data-run]')].map(
    h => h.dataset.run),
  folded: [...document.querySelectorAll('.moa-runhead.moa-collapsed[data-run]')].map(
    h => h.dataset.run),
  prompts: [...document.querySelectorAll('.moa-prompt')].map(e => e.innerText.trim()),
})"""


@pytest.fixture
def chat_app(tmp_path, netns):
    fake = FakeServer().start()
    presets = tmp_path / "presets"
    cfg = make_config(fake, ["alpha", "beta"], name="chat loopback")
    config_mod.save_preset(cfg, "chat-loopback", presets)
    # Slow enough tokens that a stream is seen on screen; the texts name the prompt (the
    # fake server's default answer), so every turn's final answer is different.
    fake.set("alpha", token_delay_s=0.04)
    fake.set("beta", token_delay_s=0.04)
    fake.set("agg", token_delay_s=0.01)
    db = tmp_path / "moa.db"
    env = app_env(db, presets, "chat-loopback")
    server = AppServer(env).start()
    server.fake = fake
    try:
        server.wait_healthy()
        yield server, db
    finally:
        server.stop()
        fake.stop()


def _follow_up(page, text: str) -> None:
    box = page.get_by_test_id("stChatInputTextArea")
    expect(box).to_be_enabled(timeout=30_000)
    box.fill(text)
    box.press("Enter")


def _turn_done(page, turn: int, timeout: float = 45_000) -> str:
    """Wait until `turn` is drawn finished (whole, ok, with its highlighted final answer) and
    the follow-up box is usable again; its run id."""
    head = page.locator(f".moa-turnhead[data-turn='{turn}'][data-run]")
    head.wait_for(timeout=timeout)
    run_id = head.get_attribute("data-run")
    page.locator(
        f".moa-runhead:not(.moa-collapsed)[data-run='{run_id}'][data-run-status=ok]"
    ).wait_for(timeout=timeout)
    expect(page.get_by_test_id("stChatInputTextArea")).to_be_enabled(timeout=timeout)
    return run_id


def _conversation_id(page) -> str:
    match = re.search(r"[?&]conversation=(c[0-9a-f]+)", page.url)
    assert match, f"no ?conversation= in {page.url}"
    return match.group(1)


def _screenshot(page, name: str) -> None:
    from tests.test_browser import screenshot  # the whole page: Streamlit scrolls inside

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot(page, name)


def test_three_turns_reload_by_link_continue_branch_and_history(chat_app, netns):
    server, db = chat_app
    fake = server.fake
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.add_init_script(OBSERVER)
        page.goto(server.url)
        page.get_by_role("button", name="Run").wait_for(timeout=30_000)

        # Turn 1 through the form, turns 2 and 3 through the chat input.
        submit_prompt(page, MESSAGES[0])
        runs = [_turn_done(page, 1)]
        cid = _conversation_id(page)
        for turn in (2, 3):
            _follow_up(page, MESSAGES[turn - 1])
            if turn == 2:
                page.locator(".moa-card[data-status=running] .moa-text").first.wait_for(
                    timeout=30_000
                )
                _screenshot(page, "chat-streaming.png")
            runs.append(_turn_done(page, turn))
        assert _conversation_id(page) == cid
        seen = page.evaluate("window.__moaSeen")
        streamed = {
            key: lengths
            for key, lengths in seen.items()
            if key.split("/")[0] in ("2", "3") and any(n > 0 for n in lengths)
        }
        assert streamed, f"no card was seen running with part of its text on turn 2 or 3: {seen}"
        partial = [k for k, lengths in streamed.items() if len(set(lengths) - {0}) >= 2]
        assert partial, f"no card grew while running (streaming) on turn 2 or 3: {streamed}"
        live = page.evaluate(SNAPSHOT)
        assert [t for t, _ in live["turns"]] == ["1", "2", "3"]
        assert [r for _, r in live["turns"]] == runs
        assert live["whole"] == [runs[2]] and live["folded"] == runs[:2]
        assert len(live["finals"]) == 3 and live["kept"] >= 3
        assert len(live["prompts"]) == 3
        assert all(p.endswith(m) for p, m in zip(live["prompts"], MESSAGES, strict=False))
        _screenshot(page, "chat-three-turns.png")

        # Reload by the link: the same page, then a fourth turn continues the conversation.
        page.goto(f"{server.url}?conversation={cid}")
        _turn_done(page, 3)
        page.locator(".moa-runhead.moa-collapsed").nth(1).wait_for()
        reloaded = page.evaluate(SNAPSHOT)
        assert reloaded == live
        _screenshot(page, "chat-reloaded.png")
        fake.requests.clear()
        _follow_up(page, MESSAGES[3])
        runs.append(_turn_done(page, 4))
        assert _conversation_id(page) == cid

        # The fourth turn's calls were sent the earlier turns: each message and its final answer.
        conv = Store(db).get_conversation(cid)
        assert [r.run_id for r in conv.turns] == runs
        finals = [r.final_text for r in conv.turns]
        for model in ("alpha", "beta", "agg"):
            (request,) = [r for r in fake.requests_for(model)]
            sent = [(m["role"], m["content"]) for m in request["body"]["messages"]]
            history = [m for m in sent if m[0] in ("user", "assistant")][:-1]
            assert history == [
                x for i in range(3) for x in (("user", MESSAGES[i]), ("assistant", finals[i]))
            ], model
            assert sent[-1][0] == "user" and MESSAGES[3] in sent[-1][1]

        # Continue from turn 1, then a message: a branch that says where it came from.
        page.locator(f".st-key-branch-{runs[0]} button").click()
        page.get_by_text("Continuing from turn 1").wait_for(timeout=20_000)
        expect(page.locator(".moa-turnhead[data-run]")).to_have_count(1)
        _follow_up(page, "Branching: what about orchids?")
        page.wait_for_url(re.compile(rf"conversation=(?!{cid})c[0-9a-f]+"), timeout=30_000)
        branch = _conversation_id(page)
        _turn_done(page, 2)
        head = page.locator(f".moa-convhead[data-conversation='{branch}']")
        assert "branched from" in head.inner_text() and "at turn 2" in head.inner_text()
        assert head.locator(f"a[href='?conversation={cid}']").count() == 1
        assert page.locator(".moa-turnhead[data-run]").first.get_attribute("data-run") == runs[0]
        _screenshot(page, "chat-branch.png")

        # History lists both conversations and opens the first one, all four turns.
        page.goto(server.url + "History")
        page.get_by_text("2 conversations match").wait_for(timeout=30_000)
        page.get_by_test_id("stSelectbox").filter(has_text="Open a conversation").click()
        options = page.get_by_role("option")
        labels = options.all_inner_texts()
        assert sum(MESSAGES[0] in label for label in labels) == 2, labels
        options.filter(has_text=MESSAGES[0]).last.click()  # the older: the original
        page.locator(f".moa-convhead[data-conversation='{cid}']").wait_for(timeout=30_000)
        expect(page.locator(".moa-turnhead[data-run]")).to_have_count(4, timeout=30_000)
        assert (
            page.locator(".moa-turnchange", has_text="branches:")
            .locator(f"a[href='?conversation={branch}']")
            .count()
            == 1
        )
        assert f"conversation={cid}" in page.url
        _screenshot(page, "chat-history.png")
        browser.close()
