"""A long conversation on the Run page: the newest turns keep their buttons, older ones are
folded into one element with a link each, and the lazy expanders run nothing until opened."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from bench.conversation import build
from moa.store import Store
from moa.ui.chat import WIDGET_TURNS
from tests.appserver import ROOT

APP = str(ROOT / "app.py")


def test_older_turns_fold_into_one_element_with_links(db_path, monkeypatch):
    monkeypatch.setenv("MOA_PRESET", "")
    store = Store(db_path)
    cid = build(store, WIDGET_TURNS + 3)
    runs = [r.run_id for r in store.get_conversation(cid).turns]
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["conversation"] = cid
    at.run()
    assert not at.exception, at.exception
    html = "".join(h.proto.body for h in at.get("html"))
    # The three oldest turns: folded together, each with its message, final answer and a link.
    folded = [h.proto.body for h in at.get("html") if 'class="moa-oldturn"' in h.proto.body]
    assert len(folded) == 1
    for turn, rid in enumerate(runs[:3], start=1):
        assert f'href="?run={rid}">Open turn {turn}:' in folded[0]
        assert f'data-turn="{turn}" data-run="{rid}"' in folded[0]
    # The newest turns keep their buttons; the folded ones have none.
    branch_keys = {b.key for b in at.button if b.key and b.key.startswith("branch-")}
    assert branch_keys == {f"branch-{rid}" for rid in runs[3:]}
    # Every turn's final answer is on the page; only the latest is drawn whole (with charts).
    assert html.count('class="moa-runhead moa-collapsed"') == len(runs) - 1
    assert len(at.get("plotly_chart")) == 4
    # A `?run=` link of a folded turn draws that turn whole, with its buttons.
    at.query_params.clear()
    at.query_params["run"] = runs[0]
    at.run()
    assert not at.exception, at.exception
    assert any(b.key == f"branch-{runs[0]}" for b in at.button)
    assert any(b.key == f"edit-{runs[0]}" for b in at.button)
