"""The History and Insights pages through AppTest, on a database filled by loopback runs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from streamlit.testing.v1 import AppTest

from moa import analysis, engine, export
from moa.export import ImportError_, run_to_json
from moa.store import Store, StoreWriter
from moa.ui import history as H
from tests.appserver import ROOT
from tests.conftest import make_config

HISTORY = str(ROOT / "pages" / "1_History.py")
INSIGHTS = str(ROOT / "pages" / "2_Insights.py")


@pytest.fixture
def filled(fake, db_path):
    """Two runs: one about plants (alpha+beta), one about cooking (gamma only)."""
    fake.set("alpha", text="Water is what plants need most.")
    fake.set("beta", text="Plants need light to grow.")
    fake.set("gamma", text="Salt your pasta water generously.")
    fake.set("delta", fault="empty")  # a failed call, for the failures chart
    fake.set("agg", text="Plants need water and light; sunflowers love both.")
    store = Store(db_path)
    writer = StoreWriter(store)
    plants = engine.run_sync(
        make_config(fake, ["alpha", "beta"], name="garden"), "What do plants need?", on_event=writer
    )
    fake.set("agg", text="Cook pasta in plenty of salted water; taste it often.")
    cooking = engine.run_sync(
        make_config(fake, ["gamma", "delta"], name="kitchen"), "How to cook pasta?", on_event=writer
    )
    fake.requests.clear()
    return store, plants, cooking


def page(path: str, run_id: str | None = None) -> AppTest:
    at = AppTest.from_file(path, default_timeout=30)
    if run_id:
        at.query_params["run"] = run_id
    at.run()
    assert not at.exception, at.exception
    return at


def table_ids(at: AppTest) -> list[str]:
    """The conversations listed (a run logged alone is the one-turn conversation c<run id>)."""
    return list(at.dataframe[0].value["id"])


def cid(record) -> str:
    return record.conversation_id


def shown_html(at: AppTest) -> str:
    return "\n".join(h.value for h in at.html)


def test_search_and_filters_narrow_the_table(filled):
    _, plants, cooking = filled
    at = page(HISTORY)
    assert set(table_ids(at)) == {cid(plants), cid(cooking)}
    at.text_input(key="hist_search").input("sunflowers").run()
    assert table_ids(at) == [cid(plants)]
    at.text_input(key="hist_search").input("").run()
    at.selectbox(key="hist_model").select("openai/gamma").run()
    assert table_ids(at) == [cid(cooking)]
    at.selectbox(key="hist_model").select("All").run()
    at.selectbox(key="hist_status").select("failed").run()
    assert not at.dataframe and "No conversations match" in at.info[0].value


def test_opening_a_run_shows_its_final_answer(filled):
    _, plants, _ = filled
    at = page(HISTORY)
    at.selectbox(key="hist_open").select(cid(plants)).run()
    assert not at.exception
    assert at.query_params["conversation"] in ([cid(plants)], cid(plants))
    assert "sunflowers love both" in shown_html(at)
    # The link form opens it too.
    assert "sunflowers love both" in shown_html(page(HISTORY, plants.run_id))


def test_reaggregate_calls_only_the_new_aggregator(filled, fake):
    store, plants, _ = filled
    fake.set("judge", text="Light and water, said the judge.")
    at = page(HISTORY, plants.run_id)
    at.text_input(key=f"re_model_{plants.run_id}").input("openai/judge")
    at.button(key="re_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    models = [r["body"]["model"] for r in fake.requests]
    assert models == ["judge"]
    new_id = at.query_params["run"]
    new_id = new_id[0] if isinstance(new_id, list) else new_id
    assert new_id != plants.run_id
    new = store.get_run(new_id)
    assert (
        new.parent_run_id == plants.run_id and new.final_text == "Light and water, said the judge."
    )
    assert "said the judge" in shown_html(at)
    # The re-aggregation is a branch of the run's conversation that ends at the new turn.
    branch = store.get_conversation(new.conversation_id)
    assert (branch.parent_id, branch.branch_turn, [r.run_id for r in branch.turns]) == (
        cid(plants),
        1,
        [new_id],
    )


def test_reaggregate_with_a_bad_model_is_an_error_not_a_call(filled, fake):
    _, plants, _ = filled
    at = page(HISTORY, plants.run_id)
    at.text_input(key=f"re_model_{plants.run_id}").input("")
    at.button(key="re_go").click().run()
    assert at.error and not fake.requests


def test_delete_asks_then_removes_the_run(filled):
    store, plants, cooking = filled
    at = page(HISTORY, plants.run_id)
    at.button(key="hist_delete").click().run()
    assert store.get_run(plants.run_id) is not None  # only asked so far
    at.button(key="hist_delete_yes").click().run()
    assert not at.exception
    assert store.get_run(plants.run_id) is None
    assert table_ids(at) == [cid(cooking)]


def test_export_import_round_trip(filled, tmp_path):
    store, plants, _ = filled
    data = json.dumps(run_to_json(plants))
    other = Store(tmp_path / "other.db")
    rec = H.import_json(other, data)
    assert other.get_run(plants.run_id).final_text == plants.final_text == rec.final_text
    with pytest.raises(H.ImportRefused):
        H.import_json(store, data)  # the id is already there
    with pytest.raises(ImportError_):
        H.import_json(other, b"{not json")


def test_compare_shows_a_word_diff(filled):
    _, plants, cooking = filled
    at = page(HISTORY)
    at.multiselect(key="hist_compare").select(cid(plants)).select(cid(cooking)).run()
    assert not at.exception
    shown = shown_html(at)
    assert "<ins" in shown and "<del" in shown and "sunflowers" in shown
    # Each run's candidates and their shares of its final answer, as on the run's own view.
    store = filled[0]
    for rec, names in ((plants, ["alpha", "beta"]), (cooking, ["gamma"])):
        attr = analysis.for_run(store.get_run(rec.run_id), store).attribution
        for name, share in zip(names, attr.share, strict=True):
            assert f"<b>{name}</b> {share:.0%}" in shown
        assert f"<b>new</b> {attr.novel_share:.0%}" in shown
    assert "<b>delta</b>" not in shown  # failed: the aggregator never saw it
    assert "&lt;b&gt;" in H.word_diff_html("a", "a <b>")


def test_insights_charts_and_empty_database(filled, tmp_path, monkeypatch):
    at = page(INSIGHTS)
    # shares, speed, tokens, failures; the loopback models have no price: a note, not a $0 chart
    assert len(at.get("plotly_chart")) == 4
    assert any("Cost unknown" in c.value and "openai/alpha" in c.value for c in at.caption)
    assert at.dataframe
    at.selectbox(key="ins_preset").select("garden").run()
    assert not at.exception and len(at.get("plotly_chart")) == 3  # no failures in "garden"
    monkeypatch.setenv("MOA_DB", str(tmp_path / "empty.db"))
    at = page(INSIGHTS)
    assert at.info and not at.get("plotly_chart")


def test_paging_fifty_a_page(filled):
    store, plants, _ = filled
    for i in range(51):
        store.save_run(replace(plants, run_id=f"{i:020x}", conversation_id=None))
    at = page(HISTORY)
    assert len(table_ids(at)) == 50
    assert any("53 conversations match" in c.value and "page 1 of 2" in c.value for c in at.caption)
    at.number_input(key="hist_page").set_value(2).run()
    assert not at.exception and len(table_ids(at)) == 3
    at.text_input(key="hist_search").input("pasta").run()  # one page now: back to page 1
    assert not at.exception and len(table_ids(at)) == 1
    assert any("1 conversation matches" in c.value for c in at.caption)
    assert H.fmt_count(10_001) == "10,000+" and H.fmt_count(9_999) == "9,999"


@pytest.fixture
def chat(fake, db_path):
    """A two-turn conversation and a one-turn one."""
    from moa import conversation

    store = Store(db_path)
    writer = StoreWriter(store)
    cfg = make_config(fake, ["alpha", "beta"], name="garden")
    fake.set("agg", text="Plants need water and light.")
    one = engine.run_sync(cfg, "What do plants need?", on_event=writer)
    conv = store.get_conversation(one.conversation_id)
    plan = conversation.plan_turn(conv, "And cacti?")
    fake.set("agg", text="Cacti need little water and much light.")
    two = engine.run_sync(
        cfg,
        "And cacti?",
        on_event=writer,
        history=plan.history,
        conversation_id=plan.conversation_id,
        turn=plan.turn,
    )
    fake.set("agg", text="Boil pasta in salted water.")
    other = engine.run_sync(make_config(fake, ["gamma"]), "How to cook pasta?", on_event=writer)
    fake.requests.clear()
    return store, one, two, other


def test_history_opens_a_whole_conversation_and_acts_on_one_turn(chat):
    store, one, two, other = chat
    at = page(HISTORY)
    assert table_ids(at) == [other.conversation_id, one.conversation_id]
    rows = at.dataframe[0].value
    assert list(rows.columns[:4]) == ["status", "turns", "cost", "tokens"]  # short ones first
    assert list(rows["turns"]) == [1, 2]
    at.text_input(key="hist_search").input("cacti").run()  # a later turn finds it
    assert table_ids(at) == [one.conversation_id]
    at.selectbox(key="hist_open").select(one.conversation_id).run()
    shown = shown_html(at)
    assert 'data-turn="1"' in shown and 'data-turn="2"' in shown
    assert "Plants need water and light." in shown and "much light" in shown
    # The turn picker defaults to the latest turn; its actions work on that run.
    assert at.selectbox(key=f"hist_turn_{one.conversation_id}").value == two.run_id
    # Rename.
    at.text_input(key=f"hist_title_{one.conversation_id}").input("Plant care")
    at.button(key="hist_rename_go").click().run()
    assert store.conversation_summary(one.conversation_id).title == "Plant care"
    # Delete the whole conversation, after a confirmation.
    at.button(key="hist_delete_conv").click().run()
    assert store.get_run(two.run_id) is not None
    at.button(key="hist_delete_conv_yes").click().run()
    assert not at.exception
    assert store.get_conversation(one.conversation_id) is None
    assert store.get_run(one.run_id) is None and store.get_run(two.run_id) is None
    at.text_input(key="hist_search").input("").run()
    assert table_ids(at) == [other.conversation_id]


def test_history_compares_conversations_turn_by_turn(chat):
    _, one, _, other = chat
    at = page(HISTORY)
    at.multiselect(key="hist_compare").select(one.conversation_id).select(
        other.conversation_id
    ).run()
    assert not at.exception
    shown = shown_html(at)
    assert 'data-turn="1"' in shown and 'data-turn="2"' in shown
    assert "much light" in shown and "(no such turn)" in [c.value for c in at.caption]


def test_a_conversation_export_imports_through_the_history_helper(chat, tmp_path):
    store, one, _, _ = chat
    conv = store.get_conversation(one.conversation_id)
    data = json.dumps(export.conversation_to_json(conv))
    other = Store(tmp_path / "other.db")
    imported = H.import_json(other, data)
    assert [r.prompt for r in other.get_conversation(imported.id).turns] == [
        "What do plants need?",
        "And cacti?",
    ]
    with pytest.raises(H.ImportRefused, match="already in"):
        H.import_json(other, data)
