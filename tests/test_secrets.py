"""Keys: a key typed into one browser session reaches its calls and nothing else; a canary key
(in the server's environment and in a session) appears in no database file, log, export, URL,
page or error message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from moa import config as config_mod
from moa import llm
from moa.config import ModelSpec, RunConfig
from moa.export import run_to_json, run_to_markdown
from moa.report import run_to_html
from moa.store import Store
from moa.ui import keys as KEYS
from moa.ui import state as K
from tests.appserver import (
    CHROMIUM,
    ROOT,
    AppServer,
    launch_chromium,
    loopback_netns,
    submit_prompt,
)
from tests.conftest import make_config
from tests.fakeserver import FakeServer
from tests.test_app import APP, errors, html, presets, run  # noqa: F401  (presets: a fixture)

SESSION_VAR = "MOA_TEST_SESSION_CRED"  # not *_KEY: only the session-key scrubbing can catch it
SERVER_VAR = "MOA_TEST_SERVER_CRED"  # named by api_key_env, not *_KEY either


def canary() -> tuple[str, str]:
    """(key, core): the key has `~` and `!` so no key-shaped pattern matches it (only the
    scrubbing of known values can remove it); `core` is what must appear nowhere."""
    core = "canary" + uuid.uuid4().hex
    return f"cn~{core}~!", core


def keyed_config(fake: FakeServer, var: str, *, fail: bool, name: str = "keyed") -> RunConfig:
    """Two proposers and an aggregator on the loopback server, all with api_key_env = var."""
    cfg = make_config(fake, ["k1", "k2"], aggregator="kagg", name=name)
    for spec in cfg.models():
        spec.api_key_env = var
    if fail:  # k2 fails echoing the Authorization header, as careless providers do
        fake.set("k2", fault="500", echo_auth=True)
    return cfg


def auth_header(request: dict) -> str | None:
    return {k.lower(): v for k, v in request["headers"].items()}.get("authorization")


def all_text(record) -> str:
    return "\n".join(
        [json.dumps(run_to_json(record)), run_to_markdown(record), run_to_html(record)]
    )


def db_bytes(db: Path) -> bytes:
    """The raw bytes of the database and its WAL and shared-memory files."""
    return b"".join(
        p.read_bytes() for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()
    )


# ---------------------------------------------------------------- the library


def test_session_keys_are_per_context_and_never_in_the_environment(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    key, core = canary()
    spec = ModelSpec(model="openai/gpt-4o-mini")
    with pytest.raises(llm.ModelInputError, match="needs OPENAI_API_KEY.*API keys"):
        llm.check_model(spec, "aggregator")
    with llm.session_keys({"OPENAI_API_KEY": key}):
        llm.check_model(spec, "aggregator")  # the session key counts as set
        assert llm.keys_set()["OPENAI_API_KEY"]
        assert llm.call_kwargs(spec, [], 5)["api_key"] == key
        assert llm.redact(f"oops {key} oops") == "oops [REDACTED] oops"
        seen: dict = {}
        # Another thread (another browser session's script or engine) does not see it.
        t = threading.Thread(target=lambda: seen.update(llm.keys_set()))
        t.start()
        t.join()
        assert seen["OPENAI_API_KEY"] is False
    assert "OPENAI_API_KEY" not in os.environ and not llm.keys_set()["OPENAI_API_KEY"]
    assert core not in json.dumps(dict(os.environ))
    # An api_base server never gets a provider key, session or not.
    local = ModelSpec(model="openai/x", api_base="http://127.0.0.1:1/v1")
    with llm.session_keys({"OPENAI_API_KEY": key}):
        assert llm.call_kwargs(local, [], 5)["api_key"] == llm.NO_KEY


# ---------------------------------------------------------------- the Run page


@pytest.fixture
def keyed_preset(fake, presets, db_path):  # noqa: F811
    monkey_free = {SESSION_VAR, SERVER_VAR} & set(os.environ)
    assert not monkey_free, "the test variables must not be set"
    cfg = keyed_config(fake, SESSION_VAR, fail=False, name="keyed")
    config_mod.save_preset(cfg, "keyed", presets)
    return fake


def _enter_key(at: AppTest, name: str, value: str) -> AppTest:
    at.text_input(key=KEYS.input_key(name)).input(value).run()
    assert not at.exception, at.exception
    return at


def test_a_session_key_is_sent_by_this_session_only_and_never_set_in_the_environment(
    keyed_preset, db_path
):
    fake = keyed_preset
    key, core = canary()
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    assert at.selectbox(key=K.PRESET).value == "keyed"
    # The expander asks for the variable the config names; the field is a password field.
    field = at.text_input(key=KEYS.input_key(SESSION_VAR))
    assert field.proto.type == field.proto.PASSWORD
    _enter_key(at, SESSION_VAR, key)
    # Taken, and the field emptied: the value is not sent back to the page.
    assert at.session_state[KEYS.SESSION_KEYS] == {SESSION_VAR: key}
    assert not any(KEYS.input_key(SESSION_VAR) == t.key for t in at.text_input)
    assert any(f"{SESSION_VAR}`: set for this session" in c.value for c in at.caption)
    run(at, "Which key do you see?")
    assert not errors(at), errors(at)
    auth = {auth_header(r) for r in fake.requests}
    assert auth == {f"Bearer {key}"}, auth
    assert SESSION_VAR not in os.environ
    assert core not in json.dumps(dict(os.environ))
    assert core not in html(at) and core not in " ".join(c.value for c in at.caption)
    record = Store(db_path).search_runs()[0]
    assert record.status == "ok"

    # A second browser session sees no key: its run is refused before any call.
    fake.requests.clear()
    other = AppTest.from_file(APP, default_timeout=30)
    other.run()
    assert KEYS.SESSION_KEYS not in other.session_state
    assert other.text_input(key=KEYS.input_key(SESSION_VAR)).value == ""
    run(other, "And you?")
    assert any(f"api_key_env names {SESSION_VAR}, which is not set" in e for e in errors(other))
    assert fake.requests == []

    # Forget drops it from the session.
    at.button(key=KEYS.FORGET_PREFIX + SESSION_VAR).click().run()
    assert at.session_state[KEYS.SESSION_KEYS] == {}


def test_the_canary_session_key_is_redacted_from_errors_db_and_exports(keyed_preset, db_path):
    fake = keyed_preset
    fake.set("k2", fault="500", echo_auth=True)
    key, core = canary()
    at = _enter_key(AppTest.from_file(APP, default_timeout=30).run(), SESSION_VAR, key)
    run(at, "Leak test, please.")
    shown = html(at) + "\n".join(errors(at)) + "\n".join(w.value for w in at.warning)
    assert "upstream k2 exploded" in shown  # the provider's message is shown…
    assert "[REDACTED]" in shown  # …with the echoed key cut out
    assert core not in shown
    assert any(auth_header(r) == f"Bearer {key}" for r in fake.requests)
    store = Store(db_path)
    record = store.get_run(store.search_runs()[0].id)
    assert any(c.status == "failed" for c in record.calls)
    assert core not in all_text(record)
    store.close()
    assert core.encode() not in db_bytes(db_path)


def test_the_canary_key_is_absent_from_a_whole_conversation(keyed_preset, db_path):
    """Two turns (the second is sent the first as history), a provider echoing the key: the key
    is in neither turn's record, the conversation exports, the page nor the database files."""
    from moa.export import conversation_to_json, conversation_to_markdown
    from moa.report import conversation_to_html

    fake = keyed_preset
    fake.set("k2", fault="500", echo_auth=True)
    key, core = canary()
    at = _enter_key(AppTest.from_file(APP, default_timeout=30).run(), SESSION_VAR, key)
    run(at, "Leak test, please.")
    at.chat_input(key=K.FOLLOW_UP).set_value("And a second turn?").run()
    assert not at.exception
    shown = html(at) + "\n".join(errors(at)) + "\n".join(w.value for w in at.warning)
    assert "upstream k2 exploded" in shown and core not in shown
    store = Store(db_path)
    (summary,) = store.search_conversations()
    conv = store.get_conversation(summary.id)
    assert [r.turn for r in conv.runs] == [1, 2]
    assert sum(auth_header(r) == f"Bearer {key}" for r in fake.requests) >= 4  # both turns keyed
    exported = "\n".join(
        [
            json.dumps(conversation_to_json(conv)),
            conversation_to_markdown(conv),
            conversation_to_html(conv),
        ]
    )
    assert "[REDACTED]" in exported and core not in exported
    store.close()
    assert core.encode() not in db_bytes(db_path)


# ---------------------------------------------------------------- a real server, a browser, the CLI

LINK = "() => document.querySelector('.moa-runhead a')?.getAttribute('href') ?? null"
browser = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")


@browser
@pytest.mark.browser
def test_canary_sweep_server_log_dom_url_screenshot_cli_and_exports(tmp_path):
    """One canary in the server's environment (api_key_env) and one typed into the page as a
    session key; both providers fail echoing the Authorization header. Neither canary may show
    up anywhere we can read back."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    server_key, server_core = canary()
    session_key, session_core = canary()
    cores = (server_core, session_core)
    db = tmp_path / "moa.db"
    presets_dir = tmp_path / "presets"
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)

    def clean(text: str, where: str) -> None:
        for core in cores:
            assert core not in text, f"a canary key leaked into {where}"

    with loopback_netns():
        fake = FakeServer().start()
        try:
            env_cfg = keyed_config(fake, SERVER_VAR, fail=True, name="server-key")
            config_mod.save_preset(env_cfg, "a-server-key", presets_dir)  # first: the default
            ses_cfg = keyed_config(fake, SESSION_VAR, fail=True, name="session-key")
            config_mod.save_preset(ses_cfg, "session-key", presets_dir)
            env = {
                "MOA_DB": str(db),
                "MOA_PRESETS_DIR": str(presets_dir),
                "MOA_PRESET": "",
                SERVER_VAR: server_key,
            }
            with AppServer(env) as server:
                server.wait_healthy(60)
                with playwright_api.sync_playwright() as p:
                    chromium = launch_chromium(p)
                    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(server.url)
                    page.get_by_role("button", name="Run").wait_for(timeout=30_000)

                    def run_prompt(prompt: str) -> None:
                        before = page.evaluate(LINK)
                        submit_prompt(page, prompt)
                        page.wait_for_function(
                            f"() => ({LINK})() && ({LINK})() !== {json.dumps(before)} && "
                            "document.querySelector('.moa-runhead .moa-ok, .moa-runhead .moa-failed')",
                            timeout=60_000,
                        )

                    # 1. The server's own key (environment, via api_key_env).
                    run_prompt("Server key leak test.")
                    page.get_by_text("upstream k2 exploded").first.wait_for(timeout=10_000)
                    # 2. A key typed into this session's password field.
                    page.get_by_test_id("stSelectbox").filter(has_text="Preset").click()
                    page.get_by_role("option", name="session-key", exact=True).click()
                    field = page.get_by_label(SESSION_VAR, exact=True)
                    field.fill(session_key)
                    field.press("Enter")
                    page.get_by_text("set for this session").wait_for(
                        state="attached", timeout=10_000
                    )
                    run_prompt("Session key leak test.")
                    page.get_by_text("upstream k2 exploded").first.wait_for(timeout=10_000)
                    assert "[REDACTED]" in page.locator("body").inner_text()
                    # The finished page (the sidebar back, the Run button enabled).
                    playwright_api.expect(page.get_by_role("button", name="Run")).to_be_enabled()
                    page.get_by_text("set for this session").wait_for(state="attached")

                    clean(page.url, "the page URL")
                    clean(page.content(), "the page's HTML")
                    # Form fields hold their value in a property, not in the markup.
                    values = page.evaluate(
                        "() => [...document.querySelectorAll('input, textarea')].map(e => e.value)"
                    )
                    clean(json.dumps(values), "a form field")
                    # A screenshot's pixels cannot be searched for text: it records the page,
                    # and the DOM it shows (checked right after it is taken) has no canary.
                    page.screenshot(path=artifacts / "secrets-canary.png", full_page=True)
                    clean(page.content(), "the page shown in the screenshot")
                    clean(page.locator("body").inner_text(), "the page's text")
                    chromium.close()
                auths = {auth_header(r) for r in fake.requests}
                assert {f"Bearer {server_key}", f"Bearer {session_key}"} <= auths
            clean(server.log.decode(errors="replace"), "the server log")

            # 3. The CLI, with the server key in its environment.
            cfg_file = tmp_path / "keyed.toml"
            cfg_file.write_text(config_mod.dumps(env_cfg))
            cli_env = {**os.environ, SERVER_VAR: server_key, "MOA_DB": str(db)}

            def moa(*args: str) -> subprocess.CompletedProcess:
                return subprocess.run(
                    [sys.executable, "-m", "moa", *args],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=180,
                    env=cli_env,
                )

            proc = moa("run", "CLI leak test.", "--config", str(cfg_file), "--json")
            assert proc.returncode in (0, 1), proc.stderr
            assert "upstream k2 exploded" in proc.stderr
            clean(proc.stdout + proc.stderr, "the CLI's output")
        finally:
            fake.stop()

        store = Store(db)
        runs = store.search_runs()
        assert len(runs) == 3
        for summary in runs:
            clean(all_text(store.get_run(summary.id)), f"the exports of run {summary.id}")
        # The CLI's exports (the same functions; one run is enough): the session-key run.
        session_run = next(r.id for r in runs if r.prompt.startswith("Session key"))
        for fmt in ("md", "json", "html"):
            out = moa("export", session_run, "--format", fmt)
            assert out.returncode == 0, out.stderr
            clean(out.stdout + out.stderr, f"`moa export --format {fmt}`")
        clean(moa("history", "--json").stdout, "`moa history --json`")
        store.close()
    for core in cores:
        assert core.encode() not in db_bytes(db), "a canary key reached the database files"


def test_history_reaggregation_uses_the_session_key(keyed_preset, db_path):
    fake = keyed_preset
    key, core = canary()
    at = _enter_key(AppTest.from_file(APP, default_timeout=30).run(), SESSION_VAR, key)
    run(at, "First run.")
    run_id = Store(db_path).search_runs()[0].id
    fake.requests.clear()
    at.switch_page("pages/1_History.py")
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception, at.exception
    at.button(key="re_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [auth_header(r) for r in fake.requests] == [f"Bearer {key}"]
    assert SESSION_VAR not in os.environ and core not in html(at)


def test_an_evaluation_thread_sees_the_session_keys(monkeypatch):
    from types import SimpleNamespace

    from moa.ui import evaluation as E

    seen: dict = {}

    def fake_run(store, prepared, on_progress, cancel):
        seen.update(llm.keys_set())
        return SimpleNamespace(eval_id="x")

    monkeypatch.setattr(E.ev, "run_evaluation_sync", fake_run)
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    prepared = SimpleNamespace(eval_id=None, total=0, done=0)
    with llm.session_keys({"GROQ_API_KEY": "gsk-session-only-123456"}):
        live = E.LiveEval(prepared).start(None)
    assert live.done.wait(10) and live.error is None, live.error
    assert seen["GROQ_API_KEY"] is True
    assert not llm.keys_set()["GROQ_API_KEY"] and "GROQ_API_KEY" not in os.environ
