"""The Evaluate page through AppTest: plan, estimate, run, results, drill-down, resume, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from moa import config as config_mod
from moa import evaluate as ev
from moa.questions import load_question_set
from moa.store import Store
from tests.appserver import ROOT
from tests.conftest import make_config

EVALUATE = str(ROOT / "pages" / "3_Evaluate.py")
XSS = "<img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture
def duo(fake, tmp_path, monkeypatch, db_path):
    """A 'duo' preset on the loopback server; on the first three verifiable questions (one
    per category) the aggregator is right twice, 'alpha' once, 'beta' never."""
    qs = load_question_set("verifiable", limit=3).questions
    answers = [str(q.answer) for q in qs]
    fake.set("alpha", text=f"I think it is {answers[0]}.")  # right on the first only
    fake.set("beta", text="No idea. " + XSS)
    fake.set("agg", text=f"Either {answers[1]} or {answers[2]}, I'd say {answers[1]}.")
    folder = tmp_path / "presets"
    folder.mkdir()
    config_mod.save_preset(make_config(fake, ["alpha", "beta"], name="Duo"), "duo", folder)
    monkeypatch.setenv("MOA_PRESETS_DIR", str(folder))
    monkeypatch.setenv("MOA_PRESET", "duo")
    return qs


def page(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(EVALUATE, default_timeout=60)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def text_of(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption]
    parts += [h.value for h in at.html] + [s.value for s in at.success]
    return "\n".join(parts)


def errors(at: AppTest) -> str:
    """The error messages as the user reads them (markdown escapes removed)."""
    return " ".join(e.value for e in at.error).replace("\\", "")


def start(at: AppTest, limit: int = 3) -> AppTest:
    at.number_input(key="eval_limit").set_value(limit).run()
    assert not at.error, [e.value for e in at.error]
    at.button(key="eval_start").click().run()
    assert not at.exception, at.exception
    return at


def test_an_evaluation_runs_from_the_page_and_shows_its_results(duo, fake, db_path):
    at = page()
    assert "No evaluation yet" in at.info[0].value
    # The plan and its estimate show before anything is called.
    at.number_input(key="eval_limit").set_value(3).run()
    assert "3 questions × 5 contenders = 15 answers" in text_of(at)
    assert fake.counts["alpha"] == 0
    start(at)

    store = Store(db_path)
    (summary,) = ev.list_evaluations(store)
    results = ev.load_results(store, summary.id)
    assert results.status == "ok"
    names = [c.name for c in results.contenders]
    assert names == ["duo", "alpha", "beta", "agg", "Self-MoA agg ×2"]
    # The page opened the finished evaluation: headline, table, charts, per question.
    assert at.query_params["eval"] in ([summary.id], summary.id)
    head = at.success[-1].value
    assert "duo vs best single contender" in head and "points accuracy" in head
    table = at.dataframe[0].value
    assert list(table["contender"]) == names
    duo_row = table[table["contender"] == "duo"].iloc[0]
    assert duo_row["accuracy"] == "67%" and duo_row["answered"] == 3
    assert table[table["contender"] == "beta"].iloc[0]["accuracy"] == "0%"
    # Quality vs latency and by category; no price is known for the loopback models, so no
    # quality-vs-cost chart, and the page says why.
    assert len(at.get("plotly_chart")) == 2
    assert "whose price is unknown" in text_of(at) and "duo, alpha, beta" in text_of(at)
    per_question = at.dataframe[1].value
    assert list(per_question["id"]) == [q.id for q in duo]
    assert list(per_question["alpha"]) == ["✓", "✗", "✗"]

    # Drill down: every contender's stored run for that question, side by side, escaped.
    at.selectbox(key="eval_question").select(duo[0].id).run()
    cards = [h.value for h in at.html if "moa-evalcard" in h.value]
    assert len(cards) == len(names)
    beta = next(c for c in cards if ">beta<" in c)
    assert "&lt;img src=x" in beta and "<img" not in beta
    run_ids = {i.run_id for i in results.items if i.question_id == duo[0].id}
    assert all(f"/History?run={rid}" in "".join(cards) for rid in run_ids)


def test_refusals_name_the_problem_and_call_nothing(duo, fake, db_path):
    at = page()
    at.selectbox(key="eval_scoring").select("judge").run()
    assert "needs a judge model" in errors(at)
    at.selectbox(key="eval_scoring").select("pairwise").run()
    at.text_input(key="eval_judge").input("openai/nosuch-model-xyz").run()
    assert "judge" in errors(at) and "nosuch-model-xyz" in errors(at)
    at.selectbox(key="eval_scoring").select("auto").run()
    at.text_input(key="eval_judge").input("").run()
    at.multiselect(key="eval_presets").set_value([]).run()
    assert "no contenders" in errors(at)
    at.text_area(key="eval_extra").input("openai/gpt-4o").run()
    assert "needs OPENAI_API_KEY" in errors(at)
    assert sum(fake.counts.values()) == 0 and not ev.list_evaluations(Store(db_path))


def test_a_budget_below_the_estimate_is_refused(duo, fake, db_path, monkeypatch):
    at = page()
    at.text_area(key="eval_extra").input(f"openai/gpt-4o@{fake.base_url}").run()
    at.number_input(key="eval_budget").set_value(0.0001).run()
    assert "over the budget" in errors(at)
    assert sum(fake.counts.values()) == 0


def test_a_stopped_evaluation_resumes_from_the_page_without_repeating_calls(duo, fake, db_path):
    store = Store(db_path)
    cfg = config_mod.load_preset("duo", Path(os.environ["MOA_PRESETS_DIR"]))
    plan = ev.EvalPlan(load_question_set("verifiable", limit=3), ev.from_preset(cfg), concurrency=1)
    cancel = ev.EvalCancel()
    ev.evaluate(store, plan, cancel=cancel, on_progress=lambda p: p.done >= 2 and cancel.cancel())
    (summary,) = ev.list_evaluations(store)
    assert summary.status == "cancelled"
    before = sum(fake.counts.values())

    at = page({"eval": summary.id})
    assert "cancelled" in text_of(at)
    at.button(key="eval_resume").click().run()
    assert not at.exception, at.exception
    results = ev.load_results(store, summary.id)
    assert results.status == "ok" and len(ev.list_evaluations(store)) == 1
    # 3 questions × (Duo: 3 calls, alpha, beta, agg: 1 each, Self-MoA: 3) = 27 calls in all.
    assert sum(fake.counts.values()) == 27
    assert before < 27
