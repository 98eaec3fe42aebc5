"""Provider faults through the real Run page, the answer-length cap and the fallback aggregator.

Each fault of the loopback server (tests/fakeserver.py) is run through app.py with AppTest and
checked three ways: the run's status, the provider's message on the page (keys redacted) and
the stored run with whatever had arrived.
"""

from __future__ import annotations

import functools
import json
import time

import pytest
from streamlit.testing.v1 import AppTest

from moa import attribution, cli, engine, export, report
from moa import config as config_mod
from moa.config import ConfigError, ModelSpec
from moa.records import CallRecord
from moa.store import Store, StoreWriter
from moa.ui import state as K
from moa.ui.render import RENDER_MAX_CHARS, call_card
from tests.conftest import make_config
from tests.fakeserver import FakeServer, default_text, huge_text
from tests.test_app import APP, html, run

ALPHA = "Water is what plants need most. Light drives photosynthesis."
BETA = "Plants need light to grow. Good soil gives them nutrients."
AGG = "Water is what plants need most. Plants need light to grow. Talk to your plants."
SECRET = "sk-loopsecret-0123456789abcdefXYZ"  # the aggregator's key, echoed back by a 500
CUT = engine.CUT_NOTE.format(engine.MAX_ANSWER_CHARS)


@pytest.fixture
def page(fake, tmp_path, monkeypatch, db_path):
    """Opens the Run page on a 'faults' preset: proposers alpha and beta, aggregator agg."""
    folder = tmp_path / "presets"
    folder.mkdir()
    monkeypatch.setenv("MOA_PRESETS_DIR", str(folder))
    monkeypatch.setenv("MOA_PRESET", "faults")
    monkeypatch.setenv("LOOP_KEY", SECRET)
    # The app runs with the engine's default Limits: same retries, shorter backoff.
    monkeypatch.setattr(engine, "Limits", functools.partial(engine.Limits, backoff_base_s=0.01))
    fake.set("alpha", text=ALPHA)
    fake.set("beta", text=BETA)
    fake.set("agg", text=AGG)

    def open_page(timeout_s: float | None = None, fallback: str | None = None) -> AppTest:
        cfg = make_config(fake, ["alpha", "beta"], name="faults", timeout_s=timeout_s)
        cfg.aggregator.api_key_env = "LOOP_KEY"
        if fallback:
            cfg.fallback_aggregator = ModelSpec(
                model=f"openai/{fallback}", api_base=fake.base_url, label=fallback
            )
        config_mod.save_preset(cfg, "faults", folder)
        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
        assert not at.exception, at.exception
        assert at.selectbox(key=K.PRESET).value == "faults"
        return at

    return open_page


def stored(db_path):
    store = Store(db_path)
    runs = store.search_runs()
    assert len(runs) == 1
    return store.get_run(runs[0].id)


def card(page_html: str, key: str) -> str:
    """The markup of one call's card (`key` like "1-proposer-1")."""
    start = page_html.index(f'data-call="{key}"')
    # Up to the next card, or the next element (html() joins them with new lines; a new
    # line inside a hover title is never followed by '<', which is escaped there).
    ends = [page_html.find(m, start) for m in ('<div class="moa-card', "\n<")]
    return page_html[start : min([e for e in ends if e > 0], default=len(page_html))]


# ---------------------------------------------------------------- faults through the Run page


def test_500_from_the_aggregator_fails_the_run_and_keeps_the_candidates(page, fake, db_path):
    fake.set("agg", fault="500", echo_auth=True)
    at = run(page(), "How do plants grow?")
    shown = html(at)
    agg_card = card(shown, "2-aggregator-0")
    assert 'data-status="failed"' in agg_card and "attempts <b>4</b>" in agg_card
    # The provider's own words, on the card and in the run's alert; the echoed key is not.
    assert "HTTP 500: OpenAIException - upstream agg exploded" in agg_card
    assert "aggregator agg failed: HTTP 500" in shown
    assert SECRET not in shown and "Bearer [REDACTED]" in agg_card
    assert len(fake.requests_for("agg")) == 4  # retried 3 times with backoff, then given up
    record = stored(db_path)
    assert record.status == "failed" and "aggregator agg failed" in record.error
    assert [(c.status, c.text) for c in record.proposer_calls] == [("ok", ALPHA), ("ok", BETA)]
    agg = record.aggregator_call
    assert agg.status == "failed" and agg.attempts == 4 and "HTTP 500" in agg.error
    assert SECRET not in agg.error + record.error
    assert record.final_text is None


def test_429_with_retry_after_is_retried_then_the_run_succeeds(page, fake, db_path):
    fake.set("beta", text=BETA, fault="429", fail_times=2, retry_after="0.2")
    at = run(page(), "How do plants grow?")
    shown = html(at)
    beta = card(shown, "1-proposer-1")
    assert 'data-status="ok"' in beta and "attempts <b>3</b>" in beta
    requests = fake.requests_for("beta")
    assert len(requests) == 3
    # Retry-After (0.2 s) was honoured between the attempts, not the 0.01 s backoff.
    assert requests[2]["t"] - requests[0]["t"] >= 0.4
    record = stored(db_path)
    assert record.status == "ok" and record.final_text == AGG
    assert record.proposer_calls[1].attempts == 3 and record.proposer_calls[1].text == BETA


@pytest.mark.parametrize(
    "fault, message, partial",
    [
        ("reset", "Connection reset by peer", "Water is what "),
        ("malformed", "Expecting property name", "Water is what "),
        ("empty", "the model returned an empty answer", ""),
    ],
)
def test_a_broken_aggregator_stream_fails_the_run_with_what_arrived(
    page, fake, db_path, fault, message, partial
):
    fake.set("agg", text=AGG, fault=fault, fault_after_words=3)
    at = run(page(), "How do plants grow?")
    shown = html(at)
    agg_card = card(shown, "2-aggregator-0")
    assert 'data-status="failed"' in agg_card
    assert message in agg_card  # the provider's (or the engine's) message on the card
    assert partial in agg_card
    record = stored(db_path)
    assert record.status == "failed" and message in record.error
    agg = record.aggregator_call
    assert (agg.status, agg.text) == ("failed", partial)
    assert all(c.status == "ok" for c in record.proposer_calls)


def test_a_hanging_stream_times_out_with_its_partial_text(page, fake, db_path):
    fake.set("beta", text=BETA, fault="hang", fault_after_words=3)
    t = time.monotonic()
    at = run(page(timeout_s=1.0), "How do plants grow?")
    assert time.monotonic() - t < 15
    beta = card(html(at), "1-proposer-1")
    assert 'data-status="timeout"' in beta
    assert "no complete answer within 1 s (timeout_s)" in beta and "Plants need light" in beta
    record = stored(db_path)
    assert record.status == "ok"  # the other proposer answered: the run goes on
    assert record.proposer_calls[1].status == "timeout"
    assert record.proposer_calls[1].text == "Plants need light "


@pytest.mark.parametrize("model, key", [("beta", "1-proposer-1"), ("agg", "2-aggregator-0")])
def test_a_1_mb_answer_is_cut_stored_and_drawn_without_freezing(page, fake, db_path, model, key):
    seed = {"beta": BETA, "agg": AGG}[model]
    fake.set(model, text=seed, fault="huge")  # 1.2 MB in 8 KB deltas
    at = page()
    t = time.monotonic()
    run(at, "How do plants grow?")
    elapsed = time.monotonic() - t
    print(f"\n1 MB answer from {model} through the Run page: {elapsed:.2f} s")
    assert elapsed < 20, f"the 1 MB run took {elapsed:.1f} s"
    shown = html(at)
    big_card = card(shown, key)
    total = engine.MAX_ANSWER_CHARS + len(CUT)
    assert 'data-status="ok"' in big_card
    assert f"showing the first {RENDER_MAX_CHARS:,} of {total:,} characters" in big_card
    # Markup for the first 50k characters (with the hover titles of its sentences), not for
    # a megabyte; the Markdown view of the final answer is cut the same way.
    assert len(big_card) < 8 * RENDER_MAX_CHARS  # ~240k for a candidate, ~370k for the final
    assert len(shown) < 16 * RENDER_MAX_CHARS
    assert all(len(m.value) <= RENDER_MAX_CHARS for m in at.markdown)
    record = stored(db_path)
    assert record.status == "ok"
    big = next(c for c in record.calls if c.label == model)
    assert big.status == "ok" and len(big.text) == total and big.text.endswith(CUT)
    assert big.text.startswith(seed)
    if model == "agg":
        assert record.final_text == big.text
        assert any("the full text is in the JSON export" in c.value for c in at.caption)


# ---------------------------------------------------------------- the fallback aggregator


def test_the_fallback_aggregator_set_in_the_sidebar_writes_the_final_answer(page, fake, db_path):
    fake.set("agg", fault="500")
    # The same model id served healthy by a second server: AppTest cannot type a new model id
    # into the picker, but it can change the fallback's endpoint.
    other = FakeServer().start()
    try:
        other.set("agg", text="Plants need light to grow. Water is what plants need most.")
        at = page()
        assert at.checkbox(key="fb.enabled").value is False
        at.checkbox(key="fb.enabled").check().run()
        # It starts as a copy of the aggregator (endpoint included): change what differs.
        assert at.selectbox(key="fb.model").value == "openai/agg"
        assert at.text_input(key="fb.api_base").value == fake.base_url
        at.text_input(key="fb.api_base").input(other.base_url).run()
        at.text_input(key="fb.label").input("backup").run()
        shown = html(run(at, "How do plants grow?"))
        assert len(other.requests_for("agg")) == 1
    finally:
        other.stop()
    assert 'data-status="failed"' in card(shown, "2-aggregator-0")
    backup = card(shown, "2-aggregator-1")
    assert 'data-status="ok"' in backup and "fallback aggregator" in backup
    assert "written by the fallback aggregator, backup" in shown
    assert "moa-legend" in backup  # the highlights belong to the answer that was kept
    record = stored(db_path)
    assert record.status == "ok" and record.error is None
    assert [(c.index, c.label, c.status) for c in record.aggregator_calls] == [
        (0, "agg", "failed"),
        (1, "backup", "ok"),
    ]
    assert record.aggregator_call.index == 1
    assert record.final_text == "Plants need light to grow. Water is what plants need most."
    assert record.config.fallback_aggregator.api_base == other.base_url


def test_a_preset_with_a_fallback_loads_into_the_sidebar(page, fake):
    at = page(fallback="backup")
    assert at.checkbox(key="fb.enabled").value is True
    assert at.selectbox(key="fb.model").value == "openai/backup"
    at.checkbox(key="fb.enabled").uncheck().run()
    assert not at.exception
    assert "modified" in " ".join(c.value for c in at.caption)


def _fallback_run(fake, tmp_path, agg_fault="500", backup_fault=None):
    fake.set("a", text=ALPHA)
    fake.set("b", text=BETA)
    fake.set("agg", fault=agg_fault)
    fake.set("backup", text=AGG, fault=backup_fault)
    cfg = make_config(fake, ["a", "b"])
    cfg.fallback_aggregator = ModelSpec(model="openai/backup", api_base=fake.base_url)
    store = Store(tmp_path / "moa.db")
    writer, seen = StoreWriter(store), []
    record = engine.run_sync(
        cfg,
        "How do plants grow?",
        limits=engine.Limits(max_retries=0),
        on_event=lambda e: (seen.append(e), writer(e)),
    )
    return record, store, seen


def test_the_engine_calls_the_fallback_only_when_the_aggregator_fails(fake, tmp_path):
    record, store, _ = _fallback_run(fake, tmp_path, agg_fault=None)
    assert record.status == "ok" and fake.requests_for("backup") == []
    assert [c.index for c in record.aggregator_calls] == [0]

    fake.reset()
    record, store, seen = _fallback_run(fake, tmp_path)
    assert record.status == "ok" and record.final_text == AGG
    failed, backup = record.aggregator_calls
    assert (failed.key, failed.status) == ((2, "aggregator", 0), "failed")
    assert (backup.key, backup.status, backup.label) == (
        (2, "aggregator", 1),
        "ok",
        "openai/backup",
    )
    assert record.aggregator_call is backup
    # It sees the same candidates as the aggregator did.
    agg_user = fake.requests_for("agg")[0]["body"]["messages"]
    assert fake.requests_for("backup")[0]["body"]["messages"] == agg_user
    started = [e.call.key for e in seen if type(e).__name__ == "CallStarted"]
    assert started[-2:] == [(2, "aggregator", 0), (2, "aggregator", 1)]
    # Stored, exported, imported and reported with both aggregator calls.
    again = store.get_run(record.run_id)
    assert [c.to_dict() for c in again.aggregator_calls] == [
        c.to_dict() for c in record.aggregator_calls
    ]
    assert again.final_text == AGG
    data = export.run_to_json(again)
    assert (data["final"]["model"], data["final"]["text"]) == ("openai/backup", AGG)
    assert [c["model"] for c in data["failed_aggregators"]] == ["openai/agg"]
    back = export.load_json_export(json.dumps(data))
    assert [c.to_dict() for c in back.calls] == [c.to_dict() for c in again.calls]
    assert export.run_to_json(back) == data
    page_html = report.run_to_html(again)
    assert "The fallback aggregator openai/backup" in page_html and "upstream agg" in page_html
    assert "fallback aggregator" in export.run_to_markdown(again)


def test_when_the_fallback_fails_too_the_run_fails_naming_both(fake, tmp_path):
    record, store, _ = _fallback_run(fake, tmp_path, backup_fault="empty")
    assert record.status == "failed" and record.final_text is None
    assert "aggregator agg failed" in record.error
    assert "fallback aggregator openai/backup failed: the model returned an empty answer" in (
        record.error
    )
    assert record.aggregator_call.index == 1  # the last one tried
    assert store.get_run(record.run_id).status == "failed"


def test_run_json_reports_the_fallback_model(fake, tmp_path, db_path, capsys, monkeypatch):
    monkeypatch.setattr(engine, "Limits", functools.partial(engine.Limits, backoff_base_s=0.01))
    fake.set("a", text=ALPHA)
    fake.set("agg", fault="500")
    fake.set("backup", text=AGG)
    cfg = make_config(fake, ["a"])
    cfg.fallback_aggregator = ModelSpec(model="openai/backup", api_base=fake.base_url)
    path = tmp_path / "fb.toml"
    path.write_text(config_mod.dumps(cfg))
    code = cli.main(["run", "Plants?", "--config", str(path), "--json", "--db", str(db_path)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "ok"
    assert (out["final"]["model"], out["final"]["text"]) == ("openai/backup", AGG)


# ---------------------------------------------------------------- the cap, in the engine


def test_an_answer_over_the_cap_is_cut_its_stream_closed_and_the_call_ok(fake):
    # 20 MB at ~4 MB/s: only a client that hangs up early ends this in well under 5 s.
    fake.set("big", fault="huge", huge_chars=20_000_000, token_delay_s=0.002)
    t = time.monotonic()
    record = engine.run_sync(make_config(fake, ["big"]), "Go on.")
    assert time.monotonic() - t < 4
    big = record.proposer_calls[0]
    assert big.status == "ok" and record.status == "ok"
    assert len(big.text) == engine.MAX_ANSWER_CHARS + len(CUT) and big.text.endswith(CUT)
    assert big.tokens_out is not None  # counted from what was kept, so the cost is known
    deadline = time.monotonic() + 3
    while not fake.aborted["big"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.aborted["big"] == 1 and fake.completed["big"] == 0  # the stream was closed


@pytest.mark.parametrize("length, cut", [(99, False), (100, False), (101, True)])
def test_the_cap_is_exact(fake, monkeypatch, length, cut):
    monkeypatch.setattr(engine, "MAX_ANSWER_CHARS", 100)
    fake.set("a", text="x" * length)
    call = engine.run_sync(make_config(fake, ["a"]), "Hi").proposer_calls[0]
    assert call.status == "ok"
    if cut:
        assert call.text == "x" * 100 + engine.CUT_NOTE.format(100)
    else:
        assert call.text == "x" * length


def test_attribution_of_a_1_mb_final_and_candidate_is_quick():
    big = huge_text(default_text("big", "How do plants grow"), 1_000_000)
    t = time.monotonic()
    result = attribution.attribute(big, [big, ALPHA])
    elapsed = time.monotonic() - t
    assert elapsed < 5, f"attribution of 1 MB took {elapsed:.1f} s"
    assert max(s.segment.end for s in result.segments) <= attribution.ATTRIBUTION_MAX_CHARS
    assert result.share[0] > 0.9


def test_a_card_draws_at_most_render_max_chars_of_a_long_text():
    text = "word " * 200_000
    call = CallRecord(1, "proposer", 0, "openai/a", "a", text=text, status="ok")
    markup = call_card(call)
    assert len(markup) < RENDER_MAX_CHARS + 2000
    assert f"showing the first {RENDER_MAX_CHARS:,} of {len(text):,} characters" in markup
    call.text = "short"
    assert "showing the first" not in call_card(call)


# ---------------------------------------------------------------- config


def test_fallback_aggregator_round_trips_through_toml_and_dicts(fake):
    cfg = make_config(fake, ["a"])
    cfg.fallback_aggregator = ModelSpec(model="openai/backup", label="Backup", max_tokens=64)
    text = config_mod.dumps(cfg)
    assert "[fallback_aggregator]" in text
    assert config_mod.loads(text) == cfg
    assert config_mod.from_dict(config_mod.to_dict(cfg)) == cfg
    assert [s.model for s in cfg.models()][-1] == "openai/backup"
    cfg.fallback_aggregator = None
    assert "fallback_aggregator" not in config_mod.dumps(cfg)
    assert config_mod.loads(config_mod.dumps(cfg)).fallback_aggregator is None


BASE = '[aggregator]\nmodel = "openai/a"\n[[proposers]]\nmodel = "openai/b"\n'


@pytest.mark.parametrize(
    "extra, message",
    [
        ('fallback_aggregator = "openai/c"\n', "fallback_aggregator must be a table"),
        ('[fallback_aggregator]\nmodle = "x"\n', "fallback_aggregator: unknown key 'modle'"),
        ("[fallback_aggregator]\ntemperature = 0.2\n", "fallback_aggregator.model is missing"),
        (
            '[fallback_aggregator]\nmodel = "openai/c"\ntemperature = 9\n',
            "fallback_aggregator.temperature = 9 is out of range",
        ),
        (
            '[fallback_aggregator]\nmodel = "openai/c"\napi_base = "localhost:1234"\n',
            "fallback_aggregator.api_base = 'localhost:1234' is not an http(s) URL",
        ),
    ],
)
def test_a_bad_fallback_aggregator_is_refused_naming_the_key(extra, message):
    toml = extra + BASE if extra.startswith("fallback") else BASE + extra  # keys before tables
    with pytest.raises(ConfigError) as info:
        config_mod.loads(toml)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "api_base, message",
    [
        ("ftp://host/v1", "is not an http(s) URL"),
        ("http://", "is not an http(s) URL"),
        ("127.0.0.1:8000/v1", "is not an http(s) URL"),
        ("http://local host:8000/v1", "contains a space"),
        ("http://user:hunter2@host/v1", "holds credentials (user:password@)"),
        ("http://host:99999/v1", "no valid host[:port]"),
        ("http://host:abc/v1", "no valid host[:port]"),
        ("http://ho$t/v1", "no valid host[:port]"),
        ("http://host/v1?key=1", "has a query or fragment"),
    ],
)
def test_a_malformed_api_base_is_refused_naming_the_key_and_the_fix(api_base, message):
    toml = BASE + f'[[proposers]]\nmodel = "openai/c"\napi_base = "{api_base}"\n'
    with pytest.raises(ConfigError) as info:
        config_mod.loads(toml)
    text = str(info.value)
    assert "proposers[1].api_base" in text and message in text
    assert "hunter2" not in text  # a password is never repeated back
    assert "http(s)://host[:port][/path]" in text or "api_key_env" in text


@pytest.mark.parametrize(
    "api_base", ["http://127.0.0.1:11434/v1", "https://api.example.com", "http://[::1]:8000/v1"]
)
def test_good_api_bases_are_accepted(api_base):
    toml = BASE + f'[[proposers]]\nmodel = "openai/c"\napi_base = "{api_base}"\n'
    assert config_mod.loads(toml).proposers[1].api_base == api_base


def test_cli_overrides_are_checked_too(fake):
    cfg = make_config(fake, ["a"])
    with pytest.raises(ConfigError, match="holds credentials"):
        cfg.with_overrides(proposers=["openai/x@http://u:p@127.0.0.1:1/v1"])
