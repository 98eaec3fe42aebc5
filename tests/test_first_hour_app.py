# ruff: noqa: F811  (fixtures imported from tests.test_app are used as parameters)
"""Issue 14 "a new user's first hour", through AppTest: labels, personas, "(modified)", stop
reasons, prices, validation at its field, presets rename/delete, the History table, compare,
Insights' cost panel, and how local proposers are described."""

from __future__ import annotations

import re

from streamlit.testing.v1 import AppTest

from moa import config as config_mod
from moa import engine
from moa.config import ModelSpec, RunConfig
from moa.records import CallRecord, RunRecord, new_run_id
from moa.store import Store, StoreWriter
from moa.ui import state as K
from moa.ui.fieldnames import error_slot, humanize
from tests.appserver import ROOT
from tests.conftest import make_config
from tests.test_app import app, errors, html, loopback, plain, presets, run  # noqa: F401
from tests.test_pages import page as _page

HISTORY = str(ROOT / "pages" / "1_History.py")
INSIGHTS = str(ROOT / "pages" / "2_Insights.py")


def _sidebar_texts(at: AppTest) -> list[tuple[str, str]]:
    """(kind, text) of the sidebar's markdown and error elements, in page order."""
    out = []

    def walk(node) -> None:
        kind = getattr(node, "type", "")
        if kind in ("markdown", "error", "caption"):
            out.append((kind, plain(node.value).strip("*")))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at.sidebar)
    return out


# ---------------------------------------------------------------- item 1: labels and personas


def test_a_new_model_takes_its_own_name_unless_the_user_typed_one(loopback, presets, db_path):
    cfg = make_config(loopback, ["alpha", "beta", "gamma"], name="loop")
    cfg.proposers[0].label, cfg.proposers[1].label = "Alpha precise", "Beta teacher"
    cfg.proposers[1].system_prompt = 'Explain simply, <b>"kindly"</b>.'
    cfg.aggregator.label = "Loop aggregator"
    config_mod.save_preset(cfg, "loop", presets)
    at = app()
    p0, p1, p2 = (f"p{i}" for i in at.session_state[K.PROPOSER_IDS])
    # Proposer 1 gets another model: the preset's label goes with the old one.
    at.selectbox(key=f"{p0}.model").set_value("openai/gamma").run()
    assert at.text_input(key=f"{p0}.label").value == ""
    # Proposer 3: the user typed a label first; it stays with the new model.
    at.text_input(key=f"{p2}.label").input("My pick").run()
    at.selectbox(key=f"{p2}.model").set_value("openai/beta").run()
    assert at.text_input(key=f"{p2}.label").value == "My pick"
    # The aggregator too.
    at.selectbox(key="agg.model").set_value("openai/beta").run()
    assert at.text_input(key="agg.label").value == ""
    run(at, "How do plants grow?")
    page = html(at)
    assert 'title="openai/gamma"' in page and "Alpha precise" not in page
    assert 'title="My pick"' in page and "Loop aggregator" not in page
    # Beta's persona is in effect: a chip on its card, its text on hover, escaped.
    beta_card = re.search(r'data-call="1-proposer-1".*?</div></div>', page, re.S).group(0)
    assert "system prompt" in beta_card and 'data-system-prompt="1"' in beta_card
    assert 'title="Explain simply, &lt;b&gt;&quot;kindly&quot;&lt;/b&gt;."' in beta_card
    assert page.count('data-system-prompt="1"') == 1
    # Stored under "<preset> (modified)", so Insights' preset filter keeps them apart.
    (summary,) = Store(db_path).search_runs()
    assert summary.name == "loop (modified)"
    record = Store(db_path).get_run(summary.id)
    assert [c.label for c in record.calls] == [
        "openai/gamma",
        "Beta teacher",
        "My pick",
        "openai/beta",
    ]


def test_save_as_preset_saves_what_the_form_shows_and_is_not_modified_after(loopback, presets):
    cfg = make_config(loopback, ["alpha", "beta"], name="loop")
    cfg.proposers[0].label = "Alpha precise"
    config_mod.save_preset(cfg, "loop", presets)
    at = app()
    p0 = f"p{at.session_state[K.PROPOSER_IDS][0]}"
    at.selectbox(key=f"{p0}.model").set_value("openai/beta").run()
    assert any("modified" in c.value for c in at.sidebar.caption)
    at.text_input(key=K.SAVE_NAME).input("mine").run()
    at.button(key=K.SAVE_BUTTON).click().run()
    saved = config_mod.load_preset("mine", presets)
    assert saved.proposers[0].model == "openai/beta" and saved.proposers[0].label is None
    assert saved.name == "mine"
    assert not any("modified" in c.value for c in at.sidebar.caption)


def test_the_fallback_aggregator_does_not_take_the_aggregators_name(loopback, presets):
    cfg = make_config(loopback, ["alpha"], name="loop")
    cfg.aggregator.label = "Chief writer"
    config_mod.save_preset(cfg, "loop", presets)
    at = app()
    at.checkbox(key="fb.enabled").check().run()
    assert at.text_input(key="fb.label").value == ""


# ---------------------------------------------------------------- item 2: stop reasons


def test_a_card_whose_call_stopped_at_max_tokens_says_so(loopback, presets, db_path):
    loopback.set("alpha", text=" ".join(f"w{i}" for i in range(40)), honour_max_tokens=True)
    cfg = make_config(loopback, ["alpha", "beta"], name="loop")
    cfg.proposers[0].max_tokens = 8
    config_mod.save_preset(cfg, "loop", presets)
    page = html(run(app(), "Count."))
    alpha = re.search(r'data-call="1-proposer-0".*?</div></div>', page, re.S).group(0)
    assert "Stopped at max_tokens (8)" in alpha
    assert page.count("Stopped at max_tokens") == 1  # beta and the aggregator finished
    (summary,) = Store(db_path).search_runs()
    calls = Store(db_path).get_run(summary.id).calls
    assert [c.finish_reason for c in calls] == ["length", "stop", "stop"]


# ---------------------------------------------------------------- item 3: local models' turns


def _stored_local_run(db_path) -> str:
    spec = ModelSpec(model="local/smollm2-135m", label="Small")
    cfg = RunConfig(proposers=[spec, spec, spec], aggregator=spec, name="local")
    usage = {"tokens_in": 20, "tokens_out": 5, "cost_usd": 0.0}  # local models cost $0
    calls = [
        CallRecord(
            1, "proposer", i, spec.model, f"Small {i}", status="ok", text="Plants grow.", **usage
        )
        for i in range(3)
    ]
    calls.append(
        CallRecord(2, "aggregator", 0, spec.model, "Small", status="ok", text="Grow.", **usage)
    )
    record = RunRecord(new_run_id(), cfg, "Why?", status="ok", calls=calls, wall_s=1.0)
    Store(db_path).save_run(record)
    return record.run_id


def test_local_proposers_are_described_as_taking_turns(loopback, db_path):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
    at.query_params["run"] = _stored_local_run(db_path)
    at.run()
    assert not at.exception
    assert "3 proposers, local models share the CPU" in html(at)
    assert "answering in parallel" not in html(at)
    # Remote proposers still answer in parallel.
    page = html(run(app(), "How do plants grow?"))
    assert "3 answering in parallel" in page


# ---------------------------------------------------------------- item 6: prices


def test_per_model_prices_reach_the_estimate_cards_history_and_insights(loopback, presets, db_path):
    cfg = make_config(loopback, ["alpha", "beta"], name="priced")
    for spec in (*cfg.proposers, cfg.aggregator):
        spec.input_cost_per_mtok, spec.output_cost_per_mtok = 1.0, 2.0
    config_mod.save_preset(cfg, "priced", presets)
    assert config_mod.load_preset("priced", presets).proposers[0].output_cost_per_mtok == 2.0
    at = app()
    at.selectbox(key=K.PRESET).set_value("priced").run()
    assert any("Estimated cost: at most $" in plain(c.value) for c in at.sidebar.caption)
    # The sidebar has the two prices, loaded from the preset.
    first = f"p{at.session_state[K.PROPOSER_IDS][0]}"
    assert at.number_input(key=f"{first}.input_cost_per_mtok").value == 1.0
    page = html(run(at, "How do plants grow?"))
    (summary,) = Store(db_path).search_runs()
    record = Store(db_path).get_run(summary.id)
    for call in record.calls:
        assert call.cost_usd == round((call.tokens_in * 1.0 + call.tokens_out * 2.0) / 1e6, 10)
    assert "cost <b>unknown</b>" not in page and "cost <b>$0.0000" in page
    assert summary.cost_usd == record.usage()["cost_usd"] > 0
    hist = _page(HISTORY)
    from moa.ui.render import fmt_cost

    assert hist.dataframe[0].value["cost"][0] == fmt_cost(summary.cost_usd) != "unknown"
    ins = _page(INSIGHTS)
    assert ins.get("plotly_chart") and not any("Cost per day" in i.value for i in ins.info)


def test_a_price_without_its_pair_is_named_in_the_sidebar_words(loopback):
    at = app()
    at.number_input(key="p0.input_cost_per_mtok").set_value(0.5).run()
    shown = [e for e in errors(at) if "Input $ / M tokens" in e]
    assert shown and "Proposer 1 › Input $ / M tokens is set but" in shown[0]
    with_pair = at.number_input(key="p0.output_cost_per_mtok").set_value(0.0).run()
    assert not any("M tokens" in e for e in errors(with_pair))


# ---------------------------------------------------------------- item 10: validation


def test_a_bad_field_is_named_as_the_sidebar_names_it_next_to_the_field(loopback):
    at = app()
    at.text_input(key="p0.api_base").input("ftp://example").run()
    texts = _sidebar_texts(at)
    where = next(i for i, (k, t) in enumerate(texts) if k == "error" and "API base" in t)
    assert texts[where][1].startswith("Proposer 1 › API base = 'ftp://example' is not an http(s)")
    assert "proposers[0]" not in " ".join(t for _, t in texts)
    # Right under Proposer 1's box: after its title, before Proposer 2's.
    titles = [i for i, (k, t) in enumerate(texts) if t.startswith("Proposer ") and k == "markdown"]
    assert titles[0] < where < titles[1]
    # The cost line at the bottom points up instead of repeating it.
    assert any("fix the setting marked in red above" in t for k, t in texts)
    # Fixed: the message is gone.
    at.text_input(key="p0.api_base").input(loopback.base_url).run()
    assert not any("API base" in e for e in errors(at))


def test_a_refused_run_names_the_field_and_the_message_clears_when_it_is_fixed(loopback, presets):
    cfg = make_config(loopback, ["alpha", "beta", "gamma"], name="bad")
    cfg.proposers[1].model = "local/no-such-model"
    config_mod.save_preset(cfg, "bad", presets)
    at = app()
    at.selectbox(key=K.PRESET).set_value("bad").run()
    ids = at.session_state[K.PROPOSER_IDS]
    run(at, "Hello?")
    shown = errors(at)
    assert any(e.startswith("Proposer 2: unknown local model 'local/no-such-model'") for e in shown)
    assert not any("proposers[1]" in e for e in shown)
    texts = _sidebar_texts(at)
    titles = [i for i, (k, t) in enumerate(texts) if t.startswith("Proposer ") and k == "markdown"]
    where = next(i for i, (k, t) in enumerate(texts) if k == "error" and "no-such-model" in t)
    assert titles[1] < where < titles[2]  # at Proposer 2's box
    assert loopback.requests == []
    at.selectbox(key=f"p{ids[1]}.model").set_value("openai/alpha").run()
    assert not any("no-such-model" in e for e in errors(at))


def test_the_cli_keeps_its_key_names():
    from moa.config import ConfigError

    try:
        config_mod.loads(
            '[aggregator]\nmodel="a/b"\n[[proposers]]\nmodel="a/b"\ninput_cost_per_mtok=1\n'
        )
    except ConfigError as e:
        assert "proposers[0].input_cost_per_mtok" in str(e)
    else:
        raise AssertionError("a lone price was accepted")
    assert humanize("proposers[2].max_tokens = 0 is out of range") == (
        "Proposer 3 › Max tokens = 0 is out of range"
    )
    assert humanize("aggregator: 'x' needs KEY; the aggregator reads") == (
        "Aggregator: 'x' needs KEY; the aggregator reads"
    )
    assert humanize("proposer_timeout_s = 0 is out of range") == (
        "Proposer timeout (s) = 0 is out of range"
    )
    assert error_slot("fallback_aggregator.api_base bad") == "fb"
    assert error_slot("the prompt is empty") is None


# ---------------------------------------------------------------- item 15: presets


def test_a_user_preset_can_be_renamed_and_deleted(loopback, presets):
    config_mod.save_preset(make_config(loopback, ["beta"], name="other"), "other", presets)
    at = app()
    at.selectbox(key=K.PRESET).set_value("other").run()
    at.text_input(key=K.RENAME_NAME).input("renamed").run()
    at.button(key=K.RENAME_BUTTON).click().run()
    assert not at.exception
    assert [plain(s.value) for s in at.success] == ["Renamed preset 'other' to 'renamed'."]
    assert sorted(p.stem for p in presets.glob("*.toml")) == ["loop", "renamed"]
    assert config_mod.load_preset("renamed", presets).name == "renamed"
    assert at.selectbox(key=K.PRESET).value == "renamed"
    # Delete asks first.
    at.button(key=K.DELETE_PRESET_BUTTON).click().run()
    assert (presets / "renamed.toml").exists()
    at.button(key=K.DELETE_PRESET_BUTTON).click().run()
    assert not at.exception
    assert not (presets / "renamed.toml").exists()
    assert "renamed" not in at.selectbox(key=K.PRESET).options
    # A rename onto an existing name is refused with a message.
    at.selectbox(key=K.PRESET).set_value("loop").run()
    config_mod.save_preset(make_config(loopback, ["beta"], name="x"), "x", presets)
    at.text_input(key=K.RENAME_NAME).input("x").run()
    at.button(key=K.RENAME_BUTTON).click().run()
    assert any("a preset named 'x' exists already" in e for e in errors(at))


def test_bundled_presets_are_read_only_with_a_clear_message(monkeypatch, db_path, server):
    monkeypatch.delenv("MOA_PRESETS_DIR", raising=False)
    monkeypatch.delenv("MOA_PRESET", raising=False)
    at = app()
    assert at.selectbox(key=K.PRESET).value == "local-quick"
    assert any("comes with MoA Studio and is read-only" in c.value for c in at.sidebar.caption)
    assert not any(b.key in (K.RENAME_BUTTON, K.DELETE_PRESET_BUTTON) for b in at.button)
    at.text_input(key=K.SAVE_NAME).input("local-quick").run()
    at.button(key=K.SAVE_BUTTON).click().run()
    assert any("is read-only" in e for e in errors(at))
    from moa.config import ConfigError

    for action in (
        lambda: config_mod.delete_preset("local-quick"),
        lambda: config_mod.rename_preset("local-demo", "mine"),
    ):
        try:
            action()
        except ConfigError as e:
            assert "comes with MoA Studio and is read-only" in str(e)
        else:
            raise AssertionError("a bundled preset was changed")
    assert (config_mod.PRESETS_DIR / "local-quick.toml").exists()


# ---------------------------------------------------------------- items 4, 11, 12, 7: History etc.


def _filled(fake, db_path):
    fake.set("alpha", text="Water is what plants need most.")
    fake.set("beta", text="Plants need light to grow.")
    fake.set("gamma", text="Salt your pasta water generously.")
    fake.set("delta", fault="500")
    fake.set(
        "agg",
        text="Plants need water and light; sunflowers love both. Plants grow purple hats at night.",
    )
    store = Store(db_path)
    writer = StoreWriter(store)
    plants = engine.run_sync(
        make_config(fake, ["alpha", "beta"], name="garden"), "What do plants need?", on_event=writer
    )
    fake.set("agg", text="Cook pasta in plenty of salted water; taste it often.")
    cooking = engine.run_sync(
        make_config(fake, ["gamma", "delta", "alpha"], name="kitchen"),
        "How to cook pasta?",
        on_event=writer,
        limits=engine.Limits(max_retries=0),
    )
    return store, plants, cooking


def test_history_status_shows_failed_proposers_and_short_columns_come_first(fake, db_path):
    store, plants, cooking = _filled(fake, db_path)
    at = _page(HISTORY)
    df = at.dataframe[0].value
    columns = list(df.columns)
    assert columns.index("title") > max(columns.index(c) for c in ("status", "cost", "tokens"))
    status = dict(zip(df["id"], df["status"], strict=True))
    assert status[cooking.conversation_id] == "ok · 1 of 3 failed"
    assert status[plants.conversation_id] == "ok"


def test_history_marks_and_filters_reaggregations_and_evaluation_runs(fake, db_path):
    from moa.ui import history as H

    store, plants, cooking = _filled(fake, db_path)
    fake.set("judge", text="Light and water.")
    again = H.reaggregate(store, plants, "openai/judge", fake.base_url, None)
    # An evaluation's answer: a normal run linked from eval_items (as moa.evaluate stores it).
    store.db["evals"].insert({"id": "e1", "name": "eval", "status": "ok"})
    store.db["eval_items"].insert(
        {"eval_id": "e1", "question_id": "q1", "contender": "c", "run_id": cooking.run_id}
    )
    at = _page(HISTORY)
    df = at.dataframe[0].value
    kinds = dict(zip(df["id"], df["kind"], strict=True))
    assert kinds == {
        again.conversation_id: "↻ re-aggregation",
        cooking.conversation_id: "⚖ evaluation",
        plants.conversation_id: "",
    }
    at.selectbox(key="hist_kind").select("re-aggregation").run()
    assert list(at.dataframe[0].value["id"]) == [again.conversation_id]
    assert any(c.value.startswith("1 conversation matches ·") for c in at.caption)
    at.selectbox(key="hist_kind").select("evaluation").run()
    assert list(at.dataframe[0].value["id"]) == [cooking.conversation_id]
    at.selectbox(key="hist_kind").select("run").run()
    assert list(at.dataframe[0].value["id"]) == [plants.conversation_id]
    assert [r.id for r in store.search_runs(kind="run")] == [plants.run_id]


def test_history_search_finds_a_word_prefix_as_the_user_types(fake, db_path):
    store, plants, cooking = _filled(fake, db_path)
    at = _page(HISTORY)
    at.text_input(key="hist_search").input("sunfl").run()
    assert list(at.dataframe[0].value["id"]) == [plants.conversation_id]
    at.text_input(key="hist_search").input('plenty "salt').run()
    assert list(at.dataframe[0].value["id"]) == [cooking.conversation_id]
    # A finished word (a space after it) is matched whole: "sunfl " finds nothing.
    assert [r.id for r in store.search_runs("sunfl")] == [plants.run_id]
    assert store.search_runs("sunfl ") == []
    assert store.search_runs('NEAR( "x" OR') == []  # operators are still plain text


def test_compare_cards_are_titled_by_run_and_new_sentences_name_the_closest(fake, db_path):
    store, plants, cooking = _filled(fake, db_path)
    at = _page(HISTORY)
    at.multiselect(key="hist_compare").select(plants.conversation_id).select(
        cooking.conversation_id
    ).run()
    shown = "\n".join(h.value for h in at.html)
    assert "What do plants need?" in shown and "How to cook pasta?" in shown
    assert "garden · 2 proposers → agg" in shown and "kitchen · 3 proposers → agg" in shown
    at = _page(HISTORY, plants.run_id)
    page = "\n".join(h.value for h in at.html)
    novel = re.findall(r'class="moa-seg moa-new" style="" title="([^"]*)"', page)
    assert novel and any("\nClosest: beta (0.37)" in t for t in novel), novel


def test_insights_cost_per_day_says_unknown_or_zero_instead_of_an_empty_chart(fake, db_path):
    _filled(fake, db_path)
    at = _page(INSIGHTS)
    assert any(i.value.startswith("Cost per day: unknown.") for i in at.info)
    _stored_local_run(db_path)
    at = _page(INSIGHTS)
    at.selectbox(key="ins_preset").select("local").run()
    assert any(i.value.startswith("Cost per day: $0.") for i in at.info)
    assert all("Cost per day by model" not in str(c.proto) for c in at.get("plotly_chart"))
