"""The Run page through AppTest (config form, validation, a loopback run, the saved-run view)."""

from __future__ import annotations

import os
import re
import time

import pytest
from streamlit.testing.v1 import AppTest

from moa import config as config_mod
from moa.records import CallRecord, RunRecord
from moa.store import Store
from moa.ui import state as K
from moa.ui.live import LiveRun
from moa.ui.render import Kept, call_card, run_header
from tests.appserver import ROOT
from tests.conftest import make_config

APP = str(ROOT / "app.py")
XSS = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture
def presets(tmp_path, monkeypatch, server):
    """An empty presets folder the app reads and writes (litellm is imported by `server`)."""
    folder = tmp_path / "presets"
    folder.mkdir()
    monkeypatch.setenv("MOA_PRESETS_DIR", str(folder))
    monkeypatch.delenv("MOA_PRESET", raising=False)
    return folder


@pytest.fixture
def loopback(fake, presets, db_path):
    """A 'loop' preset: three `openai/<name>` proposers and an aggregator on the fake server."""
    fake.set("alpha", text="Water is what plants need most. Light drives photosynthesis.")
    fake.set("beta", text="Plants need light to grow. Good soil gives them nutrients.")
    fake.set("gamma", text="Roots take up water from the soil. " + XSS)
    fake.set(
        "agg",
        text="Water is what plants need most. Plants need light to grow. "
        "Roots take up water from the soil. Also, talk to your plants kindly.",
    )
    cfg = make_config(fake, ["alpha", "beta", "gamma"], name="loop")
    config_mod.save_preset(cfg, "loop", presets)
    return fake


def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    return at


def plain(markdown: str) -> str:
    """Messages are Markdown-escaped (a backslash before punctuation): the text as shown."""
    return re.sub(r"\\(.)", r"\1", markdown)


def errors(at: AppTest) -> list[str]:
    return [plain(e.value) for e in at.error]


def html(at: AppTest) -> str:
    return "\n".join(h.value for h in at.html)


def run(at: AppTest, prompt: str) -> AppTest:
    """A new conversation's first turn, through the form (New conversation first if one is open)."""
    if any(b.key == K.NEW_CONVERSATION for b in at.button):
        at.button(key=K.NEW_CONVERSATION).click().run()
    at.text_area(key=K.PROMPT).input(prompt)
    at.button(key=K.RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    return at


# ---------------------------------------------------------------- configuration


def test_default_preset_is_local_quick_when_no_key_is_set(monkeypatch, db_path, server):
    monkeypatch.delenv("MOA_PRESETS_DIR", raising=False)
    monkeypatch.delenv("MOA_PRESET", raising=False)
    at = app()
    assert at.selectbox(key=K.PRESET).value == "local-quick"
    models = [at.selectbox(key=f"p{i}.model").value for i in range(3)]
    assert all(m.startswith("local/") for m in models)
    assert at.selectbox(key="agg.model").value.startswith("local/")
    assert "local/smollm2-135m" in at.selectbox(key="p0.model").options
    assert any("none (local models only)" in c.value for c in at.caption)
    assert any("Estimated cost" in c.value and "0" in c.value for c in at.caption)


def test_with_a_key_set_the_default_is_a_preset_that_uses_it(presets, monkeypatch, db_path):
    local = config_mod.load_preset("local-quick")
    config_mod.save_preset(local, "local-quick", presets)
    keyed = config_mod.loads(
        '[aggregator]\nmodel = "openai/gpt-4o-mini"\n[[proposers]]\nmodel = "openai/gpt-4o-mini"\n'
    )
    config_mod.save_preset(keyed, "openai-mini", presets)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-000")
    at = app()
    assert at.selectbox(key=K.PRESET).value == "openai-mini"
    assert "OPENAI_API_KEY" in " ".join(c.value for c in at.caption)
    assert "sk-test" not in html(at) + " ".join(c.value for c in at.caption)
    # Models of a provider whose key is set are suggested in the picker.
    assert "openai/gpt-4o" in at.selectbox(key="agg.model").options


def test_api_keys_from_secrets_reach_the_environment_but_never_the_page(
    presets, monkeypatch, db_path
):
    monkeypatch.setenv("GROQ_API_KEY", "")  # unset for the app; restored after the test
    at = AppTest.from_file(APP, default_timeout=30)
    at.secrets["GROQ_API_KEY"] = "gsk-secret-value-123456"
    at.run()
    assert not at.exception
    assert os.environ["GROQ_API_KEY"] == "gsk-secret-value-123456"
    shown = html(at) + " ".join(c.value for c in at.caption)
    assert "GROQ_API_KEY" in shown and "gsk-secret" not in shown


def test_add_and_remove_proposers_up_to_eight_and_set_layers(loopback):
    at = app()
    assert at.selectbox(key=K.PRESET).value == "loop"
    assert len(at.session_state[K.PROPOSER_IDS]) == 3
    at.button(key=K.ADD_PROPOSER).click().run()
    ids = at.session_state[K.PROPOSER_IDS]
    assert len(ids) == 4
    # A new proposer starts as a copy of the last one (model and endpoint), without its label.
    assert at.selectbox(key=f"p{ids[-1]}.model").value == "openai/gamma"
    assert at.text_input(key=f"p{ids[-1]}.api_base").value == loopback.base_url
    at.button(key=f"p{ids[0]}.remove").click().run()
    assert at.session_state[K.PROPOSER_IDS] == ids[1:]
    for _ in range(5):
        at.button(key=K.ADD_PROPOSER).click().run()
    assert len(at.session_state[K.PROPOSER_IDS]) == 8
    assert at.button(key=K.ADD_PROPOSER).disabled  # a 9th proposer cannot be added
    assert "8 of 8" in html(at)
    at.slider(key=K.LAYERS).set_value(3).run()
    assert not at.exception
    assert "modified" in " ".join(c.value for c in at.caption)


def test_the_last_proposer_cannot_be_removed(loopback):
    at = app()
    ids = at.session_state[K.PROPOSER_IDS]
    for slot in ids[:-1]:
        at.button(key=f"p{slot}.remove").click().run()
    assert at.button(key=f"p{ids[-1]}.remove").disabled


def test_empty_prompt_is_refused_with_a_message_and_nothing_saved(loopback, db_path):
    at = run(app(), "   ")
    assert errors(at) == ["the prompt is empty: type a question or task for the models"]
    assert loopback.requests == []
    assert not db_path.exists() or Store(db_path).count_runs() == 0


def test_a_bad_field_is_named_in_the_sidebar_and_refused_on_run(loopback):
    at = app()
    at.text_input(key="p0.api_base").input("ftp://example").run()
    assert any("Proposer 1 › API base" in e and "http(s) URL" in e for e in errors(at))
    run(at, "Hello?")
    assert any("Proposer 1 › API base" in e for e in errors(at))
    assert loopback.requests == []


def _preset(fake, presets, name: str, **changes) -> None:
    cfg = make_config(fake, ["alpha", "beta"], name=name)
    for key, value in changes.items():
        target, attr = key.split("__")
        spec = cfg.aggregator if target == "agg" else cfg.proposers[int(target[1:])]
        setattr(spec, attr, value)
    config_mod.save_preset(cfg, name, presets)


def test_unknown_model_id_is_refused_before_any_call(loopback, presets):
    _preset(loopback, presets, "bad-model", p1__model="nosuchprovider/model-x")
    at = app()
    at.selectbox(key=K.PRESET).set_value("bad-model").run()
    assert "nosuchprovider/model-x" in at.selectbox(key="p1.model").options  # typed ids stay
    run(at, "Hello?")
    assert any("'nosuchprovider/model-x' is not a model id litellm knows" in e for e in errors(at))
    assert loopback.requests == []


def test_budget_cap_refuses_a_run_whose_estimate_is_over_it(loopback, presets):
    # A model litellm has a price for, still served by the loopback server.
    _preset(loopback, presets, "priced", agg__model="openai/gpt-4o-mini")
    at = app()
    at.selectbox(key=K.PRESET).set_value("priced").run()
    assert any("Estimated cost: at most $" in plain(c.value) for c in at.caption)
    at.number_input(key=K.BUDGET).set_value(0.000001).run()
    assert any("over the budget cap" in e for e in errors(at))
    run(at, "Hello?")
    assert any("is over max_cost_usd" in e for e in errors(at))
    assert loopback.requests == []


def test_bad_preset_name_on_save_is_an_error_not_a_traceback(loopback, presets):
    at = app()
    at.text_input(key=K.SAVE_NAME).input("../evil").run()
    at.button(key=K.SAVE_BUTTON).click().run()
    assert not at.exception
    assert any("preset name '../evil' is not allowed" in e for e in errors(at))
    assert sorted(p.name for p in presets.parent.rglob("*.toml")) == ["loop.toml"]


def test_save_as_preset_writes_the_form_and_selects_it(loopback, presets):
    at = app()
    at.slider(key=K.LAYERS).set_value(2).run()
    at.text_input(key=K.SAVE_NAME).input("my mix").run()
    at.button(key=K.SAVE_BUTTON).click().run()
    assert [plain(s.value) for s in at.success] == ["Saved preset 'my mix'."]
    assert at.selectbox(key=K.PRESET).value == "my mix"
    saved = config_mod.load_preset("my mix", presets)
    assert saved.layers == 2 and [p.model for p in saved.proposers] == [
        "openai/alpha",
        "openai/beta",
        "openai/gamma",
    ]


def test_picking_a_preset_loads_it_into_the_form(loopback, presets):
    other = make_config(loopback, ["solo"], aggregator="writer", name="other", layers=2)
    config_mod.save_preset(other, "other", presets)
    at = app()
    at.selectbox(key=K.PRESET).set_value("other").run()
    ids = at.session_state[K.PROPOSER_IDS]
    assert len(ids) == 1
    assert at.selectbox(key=f"p{ids[0]}.model").value == "openai/solo"
    assert at.slider(key=K.LAYERS).value == 2
    assert at.selectbox(key="agg.model").value == "openai/writer"


def test_synthesis_prompt_resets_to_the_default(loopback):
    from moa.prompts import DEFAULT_AGGREGATOR_PROMPT

    at = app()
    at.text_area(key=K.SYNTHESIS).input("Just pick the best one.").run()
    at.button(key=K.RESET_SYNTHESIS).click().run()
    assert at.text_area(key=K.SYNTHESIS).value == DEFAULT_AGGREGATOR_PROMPT


# ---------------------------------------------------------------- a run


def test_a_run_streams_to_the_end_shows_what_was_kept_and_is_saved(loopback, db_path):
    at = app()
    at.slider(key=K.LAYERS).set_value(1).run()
    run(at, "How do plants grow?")
    page = html(at)
    # Every candidate and the final answer, done.
    for name in ("alpha", "beta", "gamma"):
        assert f'title="{name}"' in page
    assert page.count('data-status="ok"') == 4
    assert "Talk to your plants kindly" not in page  # the text is as the model wrote it
    assert "talk to your plants kindly" in page
    # The final answer is tinted by source: kept sentences name their candidate, the last is new.
    assert re.search(r'<span class="moa-seg" style="[^"]+" title="Kept from alpha \(score', page)
    assert 'class="moa-seg moa-new"' in page
    assert "moa-legend" in page and "moa-dropped" in page
    # Hostile text from a candidate is shown escaped.
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in page
    assert "<script>" not in page.replace("<style>", "")
    # It is in the store, and linked.
    runs = Store(db_path).search_runs()
    assert [(r.status, r.final_text) for r in runs] == [("ok", loopback.behaviours["agg"].text)]
    assert f'href="?run={runs[0].id}"' in page
    # The form kept its values while the sidebar was locked during the run.
    assert at.selectbox(key=K.PRESET).value == "loop"
    assert len(at.session_state[K.PROPOSER_IDS]) == 3
    # The page is now a conversation: a follow-up box, and New conversation brings back the form.
    assert at.chat_input(key=K.FOLLOW_UP).disabled is False
    conv_id = Store(db_path).get_run(runs[0].id).conversation_id
    assert at.query_params["conversation"] in ([conv_id], conv_id)
    assert at.session_state[K.LIVE].running is False


def test_two_layers_show_each_layer_then_the_aggregator(loopback, db_path):
    at = app()
    at.slider(key=K.LAYERS).set_value(2).run()
    page = html(run(at, "How do plants grow?"))
    assert "Layer 1 of 2" in page and "Layer 2 of 2" in page
    assert page.count('data-status="ok"') == 7  # 3 + 3 proposers and the aggregator
    assert 'data-call="2-proposer-2"' in page
    record = Store(db_path).get_run(Store(db_path).search_runs()[0].id)
    assert [c.layer for c in record.proposer_calls] == [1, 1, 1, 2, 2, 2]


def _late_layer_script() -> None:
    from moa.config import ModelSpec, RunConfig
    from moa.records import CallRecord, RunRecord
    from moa.ui.render import RunView

    spec = ModelSpec(model="openai/a", api_base="http://127.0.0.1:9/v1")
    cfg = RunConfig(proposers=[spec, spec], aggregator=spec, layers=2, cascade=True)
    record = RunRecord(run_id="r", config=cfg, prompt="q")
    record.calls = [CallRecord(1, "proposer", i, "openai/a", "a") for i in range(2)]
    view = RunView(record)  # laid out while only the cascade's pair was planned
    late = CallRecord(2, "proposer", 0, "openai/a", "a")
    late.status, late.text = "ok", "layer two"
    view.draw_call(late)
    view.flush()


def test_a_layer_planned_after_the_page_was_laid_out_gets_its_section():
    at = AppTest.from_function(_late_layer_script, default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    page = html(at)
    assert "Layer 2" in page and 'data-call="2-proposer-0"' in page


def test_an_escalated_layered_cascade_draws_the_layers_it_planned_late(loopback, db_path):
    # alpha and beta disagree, so the cascade escalates: layer 2 exists only from then on.
    at = app()
    at.slider(key=K.LAYERS).set_value(2).run()
    at.checkbox(key="cascade").check().run()
    page = html(run(at, "How do plants grow?"))
    assert "Layer 2" in page and 'data-call="2-proposer-2"' in page
    assert page.count('data-status="ok"') == 7  # 3 + 3 proposers and the aggregator
    record = Store(db_path).get_run(Store(db_path).search_runs()[0].id)
    assert record.outcome["cascade"]["escalated"] is True
    assert [c.layer for c in record.proposer_calls] == [1, 1, 1, 2, 2, 2]


def test_a_failing_proposer_is_shown_with_the_providers_message(loopback):
    loopback.set("beta", fault="500")
    at = run(app(), "How do plants grow?")
    page = html(at)
    assert 'data-status="failed"' in page
    assert "upstream beta exploded" in page
    assert page.count('data-status="ok"') == 3  # the run goes on without it


def test_the_stored_run_view_draws_the_same_run(loopback, db_path):
    live = run(app(), "How do plants grow?")
    run_id = Store(db_path).search_runs()[0].id
    live_final = next(h.value for h in live.html if "moa-final" in h.value)

    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception
    stored_final = next(h.value for h in at.html if "moa-final" in h.value)
    assert stored_final == live_final  # the same renderer, the same markup
    assert "How do plants grow?" in html(at)  # the prompt is shown in the stored view
    assert at.button(key=K.NEW_CONVERSATION)  # and it can be continued, or a new one started


def test_an_unknown_run_id_is_an_error(loopback):
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["run"] = "0123456789abcdef0123"
    at.run()
    assert errors(at) == ["no run with id '0123456789abcdef0123'"]


# ---------------------------------------------------------------- live plumbing, renderer


def test_live_run_cancel_keeps_what_arrived_and_the_store_has_it(fake, db_path):
    fake.set("slow", text=" ".join(f"w{i}" for i in range(100)), token_delay_s=0.05)
    store = Store(db_path)
    live = LiveRun(make_config(fake, ["slow"]), "Count.").start(store)
    assert live.started.wait(5)
    deadline = time.monotonic() + 10
    while "w3" not in live.record().proposer_calls[0].text and time.monotonic() < deadline:
        time.sleep(0.02)
    live.stop()
    assert live.wait(5)
    record = live.record()
    assert record.status == "cancelled"
    assert record.proposer_calls[0].status == "cancelled"
    assert record.proposer_calls[0].text.startswith("w0 w1 w2 w3")
    assert record.aggregator_call.status == "cancelled"
    stored = Store(db_path).get_run(live.run_id)
    assert stored.status == "cancelled"
    assert stored.proposer_calls[0].text == record.proposer_calls[0].text


def test_live_run_versions_only_report_calls_that_changed(fake, db_path):
    live = LiveRun(make_config(fake, ["a", "b"]), "Hi").start(Store(db_path))
    assert live.wait(10)
    drawn: dict = {}
    first = live.changes(drawn)
    assert {c.key for c, _ in first} == {
        (1, "proposer", 0),
        (1, "proposer", 1),
        (2, "aggregator", 0),
    }
    assert live.changes(drawn) == []  # nothing new since


def _record(fake, text: str, label: str = "a", **kw) -> RunRecord:
    call = CallRecord(1, "proposer", 0, "openai/a", label, text=text, status="ok", **kw)
    agg = CallRecord(2, "aggregator", 0, "openai/agg", "agg")
    return RunRecord("0123456789abcdef", make_config(fake, ["a"]), "Hi", calls=[call, agg])


def test_cards_and_header_escape_hostile_labels_text_and_errors(fake):
    record = _record(fake, XSS, label=XSS, error=XSS)
    record.config.name = record.error = XSS
    call = record.calls[0]
    call.model, call.status = XSS, "failed"
    for markup in (call_card(call), run_header(record)):
        assert "<script" not in markup and "<img" not in markup
        assert "&lt;script&gt;" in markup


def test_hover_titles_are_escaped(fake):
    from moa.attribution import attribute

    record = _record(fake, 'Say "hi" <b>loud</b>. Then stop.')
    kept = Kept(record, attribute('Say "hi" <b>loud</b>.', [record.proposer_calls[0].text]), [0])
    final = kept.final_html('Say "hi" <b>loud</b>.')
    column = kept.candidate_html(0)
    for markup in (final, column):
        assert "<b>" not in markup
        assert "&quot;hi&quot; &lt;b&gt;loud&lt;/b&gt;" in markup
        for title in re.findall(r'title="([^"]*)"', markup):
            assert "<" not in title


def test_after_a_run_the_sidebar_sends_every_setting_back_to_the_browser(loopback, presets):
    """While a run is live the sidebar's widgets leave the page. When they come back, a slow
    browser that has dropped their state would draw them with their defaults (a number input's
    minimum) and send those with the next Run; so the first redraw after a run carries every
    setting's value explicitly (`set_value`), and the browser shows what the run used."""
    at = run(app(), "How do plants grow?")
    kinds = ("selectbox", "text_input", "number_input", "slider", "checkbox", "text_area")
    names = (K.SAVE_NAME, K.RENAME_NAME)  # preset names to type, not settings
    settings = [w for kind in kinds for w in getattr(at.sidebar, kind) if w.key not in names]
    assert len(settings) > 30
    assert [w.key for w in settings if not w.proto.set_value] == []
    assert at.number_input(key=K.PROPOSER_TIMEOUT).value == 120.0
    assert at.number_input(key=K.field_key(K.AGGREGATOR_SLOT, "max_tokens")).value == 512
    # Only that once: later redraws leave the browser's values (a user's edits) alone.
    at.run()
    assert at.number_input(key=K.PROPOSER_TIMEOUT).proto.set_value is False
    # And the next run uses the preset as loaded.
    run(at, "And what about light?")
    preset = config_mod.to_dict(config_mod.load_preset("loop", presets))
    assert config_mod.to_dict(at.session_state[K.LIVE].config) == preset


def test_a_visit_to_another_page_keeps_the_forms_settings(loopback, db_path):
    """Streamlit drops a page's widget state when the user goes to another page; coming back,
    the number inputs would show their minimums (max_tokens 1, a 1 s timeout) and run so."""
    at = app()
    agg_tokens = K.field_key(K.AGGREGATOR_SLOT, "max_tokens")
    at.number_input(key=K.PROPOSER_TIMEOUT).set_value(300.0).run()
    at.number_input(key=agg_tokens).set_value(700).run()
    at.switch_page("pages/1_History.py").run()
    assert not at.exception, at.exception
    at.switch_page("app.py").run()
    assert at.number_input(key=K.PROPOSER_TIMEOUT).value == 300.0
    assert at.number_input(key=agg_tokens).value == 700
    assert at.selectbox(key=K.PRESET).value == "loop"
    run(at, "How do plants grow?")
    cfg = Store(db_path).get_run(Store(db_path).search_runs()[0].id).config
    assert (cfg.proposer_timeout_s, cfg.aggregator.max_tokens) == (300.0, 700)
    assert [p.model for p in cfg.proposers] == ["openai/alpha", "openai/beta", "openai/gamma"]


def _history_of(at: AppTest, run_id: str) -> AppTest:
    at.switch_page("pages/1_History.py")
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception, at.exception
    return at


def test_history_reruns_a_run_and_opens_its_config_in_the_run_page(loopback, db_path):
    at = app()
    at.number_input(key=K.field_key(K.AGGREGATOR_SLOT, "max_tokens")).set_value(640).run()
    at.text_area(key=K.SYSTEM).input("Answer briefly.")
    run(at, "How do plants grow?")
    store = Store(db_path)
    (first,) = store.search_runs()
    # Change the form, then open the first run's config from History: the form has it back.
    at.number_input(key=K.PROPOSER_TIMEOUT).set_value(500.0).run()
    at.button(key=f"{K.proposer_slot(at.session_state[K.PROPOSER_IDS][0])}.remove").click().run()
    _history_of(at, first.id).button(key="hist_open_config").click().run()
    assert not at.exception, at.exception
    assert at.text_area(key=K.PROMPT).value == "How do plants grow?"
    assert at.text_area(key=K.SYSTEM).value == "Answer briefly."
    assert len(at.session_state[K.PROPOSER_IDS]) == 3
    assert at.number_input(key=K.PROPOSER_TIMEOUT).value == 120.0
    assert at.number_input(key=K.field_key(K.AGGREGATOR_SLOT, "max_tokens")).value == 640
    assert len(store.search_runs()) == 1  # opened, not run
    # Re-run: a new run with the same config and prompt, shown live on the Run page.
    _history_of(at, first.id).button(key="hist_rerun").click().run()
    assert not at.exception, at.exception
    runs = store.search_runs()
    assert len(runs) == 2 and runs[0].id != first.id
    again = store.get_run(runs[0].id)
    assert (again.prompt, again.system_prompt, again.status) == (
        first.prompt,
        "Answer briefly.",
        "ok",
    )
    assert config_mod.to_dict(again.config) == config_mod.to_dict(store.get_run(first.id).config)
    assert f'data-run="{again.run_id}"' in html(at)


# ---------------------------------------------------------------- conversations


def follow_up(at: AppTest, message: str) -> AppTest:
    at.chat_input(key=K.FOLLOW_UP).set_value(message).run()
    assert not at.exception, at.exception
    return at


def conversation_id(at: AppTest) -> str:
    value = at.query_params["conversation"]
    return value[0] if isinstance(value, list) else value


def test_a_follow_up_is_turn_two_and_is_sent_turn_one(loopback, db_path):
    at = run(app(), "How do plants grow?")
    cid = conversation_id(at)
    loopback.requests.clear()
    loopback.set("agg", text="Shorter: water, light, soil.")
    follow_up(at, "Make it shorter.")
    assert conversation_id(at) == cid
    conv = Store(db_path).get_conversation(cid)
    assert [(r.turn, r.prompt, r.status) for r in conv.runs] == [
        (1, "How do plants grow?", "ok"),
        (2, "Make it shorter.", "ok"),
    ]
    sent = loopback.requests_for("alpha")[0]["body"]["messages"]
    assert sent[-3]["content"] == "How do plants grow?"
    assert sent[-2] == {"role": "assistant", "content": conv.runs[0].final_text}
    assert sent[-1] == {"role": "user", "content": "Make it shorter."}
    page = html(at)
    # Both turns are on the page: turn 1 folded to its final answer, turn 2 whole.
    assert 'data-turn="1"' in page and 'data-turn="2"' in page
    assert "moa-collapsed" in page and "Shorter: water, light, soil." in page
    assert page.count('data-status="ok"') >= 5  # turn 1's final + turn 2's four calls
    # The same conversation opened by its link draws the same turns.
    again = AppTest.from_file(APP, default_timeout=30)
    again.query_params["conversation"] = cid
    again.run()
    assert not again.exception
    finals = [h.value for h in at.html if "moa-final" in h.value]
    assert [h.value for h in again.html if "moa-final" in h.value] == finals
    # ?run=<turn 1> opens the same conversation with turn 1 drawn whole.
    turn1 = AppTest.from_file(APP, default_timeout=30)
    turn1.query_params["run"] = conv.runs[0].run_id
    turn1.run()
    assert not turn1.exception
    shown = html(turn1)
    assert f'data-conversation="{cid}"' in shown and 'data-turn="2"' in shown
    assert shown.index(f'data-run="{conv.runs[0].run_id}" data-run-status') < shown.index(
        'data-turn="2"'
    )


def test_retry_runs_a_failed_turn_again_in_its_place(loopback, db_path):
    at = run(app(), "How do plants grow?")
    loopback.set("agg", fault="empty")
    follow_up(at, "And trees?")
    cid = conversation_id(at)
    assert "the model returned an empty answer" in html(at)
    loopback.requests.clear()
    loopback.set("agg", text="Trees need the same, at a larger scale.")
    at.button(key=K.RETRY_BUTTON).click().run()
    assert not at.exception
    conv = Store(db_path).get_conversation(cid)
    assert [(r.turn, r.status) for r in conv.runs] == [(1, "ok"), (2, "failed"), (2, "ok")]
    # The retry was sent turn 1 only, not the failed attempt.
    sent = str(loopback.requests_for("alpha")[0]["body"]["messages"])
    assert "How do plants grow?" in sent and sent.count("And trees?") == 1
    page = html(at)
    assert "earlier attempt(s) at this turn" in page and "larger scale" in page


def test_continue_from_here_and_edit_start_branches(loopback, db_path):
    at = run(app(), "How do plants grow?")
    follow_up(at, "And trees?")
    cid = conversation_id(at)
    store = Store(db_path)
    first, second = store.get_conversation(cid).turns
    # Continue from turn 1: the next message starts a branch sharing turn 1.
    at.button(key=f"branch-{first.run_id}").click().run()
    assert 'data-turn="2"' not in html(at) and at.info
    loopback.requests.clear()
    follow_up(at, "And cacti?")
    branch_id = conversation_id(at)
    assert branch_id != cid
    branch = store.get_conversation(branch_id)
    assert [r.prompt for r in branch.turns] == ["How do plants grow?", "And cacti?"]
    assert (branch.parent_id, branch.branch_turn) == (cid, 2)
    assert "branched from" in html(at)
    assert "And trees?" not in str(loopback.requests_for("alpha")[0]["body"]["messages"])
    # Edit and re-run turn 2 of the original: another branch; the original is untouched.
    at.query_params.clear()
    at.query_params["conversation"] = cid
    at.run()
    at.button(key=f"edit-{second.run_id}").click().run()
    at.text_area(key=K.EDIT_TEXT).input("And shrubs?")
    at.button(key="run_edited").click().run()
    assert not at.exception
    edited = store.get_conversation(conversation_id(at))
    assert [r.prompt for r in edited.turns] == ["How do plants grow?", "And shrubs?"]
    assert [r.prompt for r in store.get_conversation(cid).turns] == [
        "How do plants grow?",
        "And trees?",
    ]
    assert {b.id for b in store.branches(cid)} == {branch_id, edited.id}


def test_new_conversation_brings_back_the_form_and_history_round_trip(loopback, db_path):
    at = run(app(), "How do plants grow?")
    cid = conversation_id(at)
    at.button(key=K.NEW_CONVERSATION).click().run()
    assert "conversation" not in at.query_params
    assert at.text_area(key=K.PROMPT) and not at.chat_input
    assert at.text_area(key=K.PROMPT).value == ""  # not the last conversation's first message
    at.run()  # and it stays empty on the next redraw
    assert at.text_area(key=K.PROMPT).value == ""
    # Back to the conversation by session state: another page visit keeps it (address too).
    at.session_state[K.CONVERSATION] = cid
    at.run()
    assert conversation_id(at) == cid and at.chat_input(key=K.FOLLOW_UP)


def test_an_unknown_conversation_id_is_an_error(loopback):
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["conversation"] = "c0123456789abcdef0123"
    at.run()
    assert not at.exception
    assert errors(at) == ["no conversation with id 'c0123456789abcdef0123'"]
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["conversation"] = "<script>"
    at.run()
    assert errors(at) == ["no conversation with id '<script>'"]


def test_run_history_run_keeps_the_prompt_the_modified_hint_and_the_conversation(loopback):
    at = app()
    at.number_input(key="agg.max_tokens").set_value(77).run()
    assert any("modified" in c.value for c in at.caption)
    # A prompt submitted but refused (a bad api_base): it stays in the form.
    at.text_input(key="p0.api_base").input("not a url").run()
    at.text_area(key=K.PROMPT).input("A prompt typed, not yet run")
    at.button(key=K.RUN_BUTTON).click().run()
    assert any("API base" in e for e in errors(at))  # in the sidebar's words
    at.switch_page("pages/1_History.py").run()
    assert not at.exception
    at.switch_page("app.py").run()
    assert not at.exception
    assert at.text_area(key=K.PROMPT).value == "A prompt typed, not yet run"
    assert at.text_input(key="p0.api_base").value == "not a url"
    at.text_input(key="p0.api_base").input(loopback.base_url).run()
    assert at.number_input(key="agg.max_tokens").value == 77
    assert any("modified" in c.value for c in at.caption)
    assert at.selectbox(key=K.PRESET).value == "loop"
    # After a run the Run page is its conversation, and comes back to it.
    run(at, "How do plants grow?")
    assert not errors(at), errors(at)
    cid = conversation_id(at)
    at.switch_page("pages/1_History.py").run()
    at.switch_page("app.py").run()
    assert not at.exception
    assert conversation_id(at) == cid and 'data-turn="1"' in html(at)
