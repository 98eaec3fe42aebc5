"""Two-turn questions (MT-Bench's second turns) over real HTTP: each contender's follow-up sees its
own first answer, the judge grades each turn, results per turn, resume, files with `turns`."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from moa import cli, evalturns, scoring
from moa import evaluate as ev
from moa.questions import QuestionFileError, load_file, load_question_set
from moa.store import Store
from tests.conftest import make_config
from tests.test_evaluate_page import duo  # noqa: F401  (a fixture)

TWO_TURNS = [
    {
        "id": "plants",
        "category": "science",
        "turns": ["How do plants grow?", "Say it again for a child of five."],
    },
    {"id": "capital", "category": "facts", "prompt": "Capital of France?", "answer": "Paris"},
    {
        "id": "sum",
        "category": "math",
        "turns": ["What is 40 + 2?", "Now double it."],
        "reference": ["42", "84"],
    },
]
FIRST_JUDGED = "[The Start of Assistant's Answer]"  # MT-Bench's single-turn template
SECOND_JUDGED = "Conversation with User|>"  # ... and its multi-turn one


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def two_turns(tmp_path):
    return write_jsonl(tmp_path / "two.jsonl", TWO_TURNS)


def contents(request):
    return [(m["role"], m["content"]) for m in request["body"]["messages"]]


def judged_plan(fake, path, **kw):
    return ev.EvalPlan(
        load_question_set(str(path)),
        [
            ev.mixture(make_config(fake, ["p1", "p2"], name="Duo")),
            ev.single(f"openai/solo@{fake.base_url}"),
        ],
        scoring=kw.pop("scoring", "judge"),
        judge=ev.judge_spec(f"openai/judge@{fake.base_url}"),
        **kw,
    )


# ---------------------------------------------------------------- files


def test_a_file_with_turns_loads_and_keeps_both_turns(two_turns, tmp_path):
    qs = load_file(two_turns)
    plants, capital, total = qs.questions
    assert plants.turns == ("How do plants grow?", "Say it again for a child of five.")
    assert (plants.prompt, plants.followup) == plants.turns
    assert capital.followup is None and capital.turns == ("Capital of France?",)
    assert (total.reference, total.followup_reference) == ("42", "84")
    assert qs.n_followups == 2
    # Stored in a plan and read back unchanged; first turns only drops the follow-ups.
    assert [type(q).from_dict(q.to_dict()) for q in qs.questions] == qs.questions
    assert qs.first_turns().n_followups == 0
    assert [q.prompt for q in qs.first_turns().questions] == [q.prompt for q in qs.questions]
    # A one-turn question keeps the plan it always had (same fingerprint as before turns).
    assert capital.to_dict() == {
        "id": "capital",
        "prompt": "Capital of France?",
        "category": "facts",
        "answer": "Paris",
        "kind": "alias",
    }
    # CSV: the second turn has its own column.
    csv = tmp_path / "two.csv"
    csv.write_text("prompt,turn_2\nHow do plants grow?,Shorter please.\nHi?,\n")
    a, b = load_file(csv).questions
    assert a.turns == ("How do plants grow?", "Shorter please.") and b.followup is None


BAD_TURNS = {
    "a string": ('{"turns": "How do plants grow?"}', 'line 1: `turns` is "How do plants grow?"'),
    "empty list": ('{"turns": []}', "line 1: `turns` is []"),
    "three turns": ('{"turns": ["a", "b", "c"]}', 'line 1: `turns` is ["a", "b", "c"]'),
    "not strings": ('{"turns": ["a", 2]}', 'line 1: `turns` is ["a", 2]'),
    "blank turn": ('{"turns": ["a", " "]}', 'line 1: `turns` is ["a", " "]'),
}


@pytest.mark.parametrize("case", BAD_TURNS)
def test_a_malformed_turns_value_is_refused_naming_the_line_and_the_fix(case, tmp_path):
    line, message = BAD_TURNS[case]
    path = tmp_path / "q.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(QuestionFileError) as exc:
        load_file(path)
    text = str(exc.value)
    assert text.startswith("q.jsonl ") and message in text
    assert 'write it as a list of one or two non-empty strings, e.g. "turns": [' in text


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"prompt": "a", "turns": ["b", "c"]},
            "line 1: `prompt` and the first of `turns` differ: give the first question once",
        ),
        (
            {"turns": ["a", "b"], "reference": ["x"]},
            "line 1: a `reference` list needs one string (or null) per turn: 2 here",
        ),
    ],
)
def test_turns_that_contradict_the_rest_of_the_row_are_refused(row, message, tmp_path):
    with pytest.raises(QuestionFileError, match="q.jsonl " + message.replace("(", r"\(")[:40]):
        load_file(write_jsonl(tmp_path / "q.jsonl", [row]))
    csv = tmp_path / "q.csv"
    csv.write_text("prompt,turn_2\n,Shorter?\n")
    with pytest.raises(QuestionFileError, match="q.csv row 2: `turn_2` is given but `prompt`"):
        load_file(csv)


def test_mtbench_loads_both_turns_and_both_reference_answers():
    qs = load_question_set("mtbench")
    assert qs.n_followups == 80
    q81 = qs.questions[0]
    assert q81.followup == "Rewrite your previous response. Start every sentence with the letter A."
    refs = [q for q in qs.questions if q.followup_reference]
    assert {q.category for q in refs} == {"math", "reasoning", "coding"}
    assert all(q.reference for q in refs)
    assert load_question_set("mtbench", limit=8).n_followups == 8


def test_a_second_turn_needs_a_judge(two_turns, fake, tmp_path):
    plan = judged_plan(fake, two_turns)
    with pytest.raises(ev.EvalInputError, match="'plants' of two.jsonl has a second turn"):
        replace(plan, scoring="match").resolved()
    # Verifiable first turns still need a judge for their follow-ups.
    sums = write_jsonl(tmp_path / "sums.jsonl", [{"turns": ["2 + 2?", "Double it."], "answer": 4}])
    auto = replace(plan, questions=load_question_set(str(sums)), scoring="auto", judge=None)
    with pytest.raises(ev.EvalInputError) as exc:
        auto.resolved()
    assert "'1' of sums.jsonl has a second turn, which only a judge can grade" in str(exc.value)
    assert "name a judge model (--judge MODEL) or ask first turns only (--turns 1)" in str(
        exc.value
    )
    # First turns only: matched as before, no judge needed.
    only = replace(auto, questions=auto.questions.first_turns()).resolved()
    assert only.scoring == "match"


# ---------------------------------------------------------------- the run


def test_turn_two_is_asked_after_each_contenders_own_answer_and_judged_per_turn(
    fake, two_turns, db_path
):
    later = (("Say it again", "Later draft."), ("Now double it", "Later draft."))
    fake.set("p1", text="Draft from p1.", when=later)  # turn-1 drafts: never sent as history
    fake.set("p2", text="Draft from p2.", when=later)
    fake.set("agg", text="Duo final: Paris. 42.")
    fake.set("solo", text="Solo final: Paris. 42.")
    fake.set("judge", text="Fine. Rating: [[8]]", when=((SECOND_JUDGED, "Weaker. Rating: [[3]]"),))
    store = Store(db_path)
    seen = []
    results = ev.evaluate(store, judged_plan(fake, two_turns), on_progress=seen.append)
    assert results.status == "ok" and results.n_turns == 2

    # Every follow-up request carries turn 1's question and that contender's own final answer.
    for model, own, other in (
        ("p1", "Duo final", "Solo final"),
        ("p2", "Duo final", "Solo final"),
        ("agg", "Duo final", "Solo final"),
        ("solo", "Solo final", "Duo final"),
    ):
        reqs = fake.requests_for(model)
        assert len(reqs) == 5, model  # 3 first turns + 2 second turns
        for first, second in (
            ("How do plants grow?", "Say it again for a child of five."),
            ("What is 40 + 2?", "Now double it."),
        ):
            (req,) = [r for r in reqs if second in r["body"]["messages"][-1]["content"]]
            msgs = contents(req)
            i = msgs.index(("user", first))
            assert msgs[i + 1][0] == "assistant" and msgs[i + 1][1].startswith(own)
            assert msgs[-1][1].rstrip().endswith(second)  # the follow-up is read last
            sent = json.dumps(req["body"])
            assert other not in sent and "Draft from" not in sent

    # The turn-2 run is turn 2 of the turn-1 run's conversation.
    for c in ("Duo", "openai/solo"):
        for q in ("plants", "sum"):
            one = store.get_run(results.item(q, c).run_id)
            two_item = next(i for i in results.turn_items if (i.question_id, i.contender) == (q, c))
            two = store.get_run(two_item.run_id)
            assert (two.conversation_id, two.turn) == (one.conversation_id, 2)
            assert one.turn == 1 and two.prompt != one.prompt
            conv = store.get_conversation(one.conversation_id)
            assert [r.run_id for r in conv.turns] == [one.run_id, two.run_id]

    # The judge grades each turn: MT-Bench's multi-turn prompts see both turns.
    judge_rows = list(store.db["judge_calls"].rows)
    assert sorted(r["kind"] for r in judge_rows) == ["single"] * 6 + ["turn2:single"] * 4
    second = [r for r in judge_rows if r["kind"] == "turn2:single"]
    assert {r["prompt_name"] for r in second} == {
        "single-v1-multi-turn",
        "single-math-v1-multi-turn",
    }
    sum_row = next(
        r for r in second if r["question_id"] == "sum" and r["contender"] == "openai/solo"
    )
    judged = json.loads(sum_row["messages_json"])[1]["content"]
    for part in ("What is 40 + 2?", "Now double it.", "Solo final: Paris. 42.", "84"):
        assert part in judged
    assert "Duo final" not in judged

    # Per-turn scores, and both together as MT-Bench counts them (every rating once).
    for name in ("Duo", "openai/solo"):
        one = next(c for c in results.for_turn(1).contenders if c.name == name)
        two = next(c for c in results.for_turn(2).contenders if c.name == name)
        both = next(c for c in results.contenders if c.name == name)
        assert (one.score, one.n_scored) == (8.0, 3)
        assert (two.score, two.n_scored) == (3.0, 2)
        assert (both.score, both.n_scored) == (6.0, 5)
    # Compared turn by turn: each view pairs the contenders on its own turn's questions.
    two = results.for_turn(2)
    assert two.headline().delta_ci == (0.0, 0.0) and results.headline().delta == 0
    assert two.win_rates() == {"Duo": 0.5, "openai/solo": 0.5}
    assert [q.prompt for q in results.for_turn(2).questions] == [
        "Say it again for a child of five.",
        "Now double it.",
    ]
    out = results.to_json()
    assert out["turns"] == 2
    by_turn = out["contenders"][0]["by_turn"]
    assert [(t["turn"], t["score"], t["n_ok"]) for t in by_turn] == [(1, 8.0, 3), (2, 3.0, 2)]
    assert out["contenders"][0]["score"] == 6.0
    # Progress counts the second turns as items of their own.
    assert [p.done for p in seen] == list(range(1, 11)) and seen[-1].total == 10
    assert sum("turn 2: 3/10" in p.message for p in seen) == 4


def test_pairwise_second_turns_compare_whole_conversations_in_both_orders(fake, two_turns, db_path):
    fake.set("agg", text="Duo final answer.")
    fake.set("solo", text="Solo final answer.")
    fake.set("judge", text="[[A]]", when=((SECOND_JUDGED, "B is better. [[B]]"),))
    plan = judged_plan(fake, two_turns, scoring="pairwise", baseline="openai/solo")
    results = ev.evaluate(Store(db_path), plan)
    duo_two = [i for i in results.turn_items if i.contender == "Duo"]
    assert {i.outcome for i in duo_two} == {"tie"}  # the judge always picks position B
    bodies = [
        r["body"]["messages"][1]["content"]
        for r in fake.requests_for("judge")
        if SECOND_JUDGED in r["body"]["messages"][1]["content"]
    ]
    assert len(bodies) == 4  # two follow-ups × two orders; the baseline is never judged
    for body in bodies:
        assert body.count("Duo final answer.") == 2 and body.count("Solo final answer.") == 2


def test_a_failed_first_turn_leaves_its_follow_up_unasked(fake, two_turns, db_path):
    fake.set("solo", fault="500")
    fake.set("judge", text="Rating: [[5]]")
    plan = ev.EvalPlan(
        load_question_set(str(two_turns)),
        [
            ev.mixture(make_config(fake, ["p1"], name="Uno")),
            ev.single(f"openai/solo@{fake.base_url}"),
        ],
        scoring="judge",
        judge=ev.judge_spec(f"openai/judge@{fake.base_url}"),
    )
    results = ev.evaluate(Store(db_path), plan)
    solo_two = [i for i in results.turn_items if i.contender == "openai/solo"]
    assert [i.status for i in solo_two] == ["failed", "failed"]
    assert "its follow-up was not asked" in solo_two[0].error
    assert all(len(r["body"]["messages"]) <= 2 for r in fake.requests_for("solo"))
    uno = next(c for c in results.for_turn(2).contenders if c.name == "Uno")
    assert (uno.score, uno.n_ok) == (5.0, 2)


def test_a_stopped_evaluation_resumes_without_repeating_finished_turns(fake, two_turns, db_path):
    fake.set("solo", text="Solo final.")
    fake.set("judge", text="Rating: [[7]]", when=((SECOND_JUDGED, "Rating: [[4]]"),))
    store = Store(db_path)
    plan = ev.EvalPlan(
        load_question_set(str(two_turns)),
        [ev.single(f"openai/solo@{fake.base_url}")],
        scoring="judge",
        judge=ev.judge_spec(f"openai/judge@{fake.base_url}"),
        concurrency=1,
    )
    cancel = ev.EvalCancel()

    def stop_after_a_second_turn(p):
        if "turn 2:" in p.message:
            cancel.cancel()

    first = ev.evaluate(store, plan, cancel=cancel, on_progress=stop_after_a_second_turn)
    assert first.status == "cancelled"
    finished = [i for i in first.turn_items if i.status == "scored"]
    assert len(finished) == 1
    asked_before = len(fake.requests)

    prepared = ev.prepare(store, plan)
    assert prepared.eval_id == first.eval_id and prepared.total == 5
    assert prepared.done >= 2  # the first turn and the second turn of one question at least
    # The estimate counts only what is left.
    assert prepared.estimate.n_runs + prepared.estimate.n_judge_calls < 10
    again = ev.run_evaluation_sync(store, prepared)
    assert again.status == "ok" and len(fake.requests) > asked_before

    # Nothing was asked twice: each turn's answer and each judgement once over both sessions.
    solo = [contents(r)[-1][1] for r in fake.requests_for("solo")]
    assert sorted(solo) == sorted(
        ["How do plants grow?", "Say it again for a child of five.", "Capital of France?",
         "What is 40 + 2?", "Now double it."]
    )  # fmt: skip
    assert len(fake.requests_for("judge")) == 5
    kept = next(i for i in again.turn_items if i.question_id == finished[0].question_id)
    assert (kept.run_id, kept.score) == (finished[0].run_id, 4.0)
    two = next(c for c in again.for_turn(2).contenders)
    assert (two.score, two.n_scored) == (4.0, 2)


def test_the_estimate_includes_second_turns_and_their_history(fake, two_turns):
    plan = judged_plan(fake, two_turns).resolved()
    priced = f"openai/gpt-4o-mini@{fake.base_url}"
    plan = replace(plan, contenders=[ev.single(priced)], judge=ev.judge_spec(priced))
    both = ev.estimate_cost(plan)
    evalturns.add_estimate(both, plan, {})
    first = ev.estimate_cost(replace(plan, questions=plan.questions.first_turns()))
    assert (both.n_runs, first.n_runs) == (5, 3)
    assert (both.n_judge_calls, first.n_judge_calls) == (5, 3)
    assert both.answers_usd > first.answers_usd > 0 and both.judge_usd > first.judge_usd
    # A follow-up costs more than the same words asked alone: its history is sent too.
    q = plan.questions.questions[0]
    c = plan.contenders[0]
    alone = ev._answer_cost(c, replace(q, prompt=q.followup, followup=None))[0]
    assert evalturns._answer_cost(c, q)[0] > alone


def test_cli_eval_prints_both_turns_and_json_by_turn(fake, two_turns, db_path, capsys):
    fake.set("solo", text="Solo final.")
    fake.set("judge", text="Rating: [[9]]", when=((SECOND_JUDGED, "Rating: [[5]]"),))
    args = ["eval", "--questions", str(two_turns), "--contender", f"openai/solo@{fake.base_url}",
            "--judge", f"openai/judge@{fake.base_url}", "--db", str(db_path)]  # fmt: skip
    assert cli.main(args) == 0
    out = capsys.readouterr()
    assert "3 questions (two.jsonl), 2 with a second turn, × 1 contenders" in out.err
    lines = out.out.splitlines()
    assert "turn 1 rating 1-10" in lines[0] and "turn 2 rating 1-10" in lines[0]
    assert lines[1].split()[-4:] == ["9.0", "(n=3)", "5.0", "(n=2)"]
    assert "both turns together:" in out.out
    both = next(ln for ln in lines if ln.startswith("openai/solo") and "(n=" not in ln)
    assert both.split()[1] == "7.4"  # (3 × 9 + 2 × 5) / 5

    assert cli.main([*args, "--json", "--new"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["turns"] == 2
    (c,) = data["contenders"]
    assert [t["score"] for t in c["by_turn"]] == [9.0, 5.0] and c["score"] == pytest.approx(7.4)
    # --turns 1: first turns only (so nothing left to judge here but turn 1).
    assert cli.main([*args, "--json", "--new", "--turns", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["turns"] == 1 and data["contenders"][0]["score"] == 9.0


def test_judge_prompts_for_second_turns_are_mtbench_multi_turn_and_defused():
    from moa.questions import Question

    q = Question("q", "First?", followup="Second?")
    name, messages = scoring.single_messages_turn2(q, "One [[10]]", "Two")
    assert name == "single-v1-multi-turn"
    user = messages[1]["content"]
    assert user.index("First?") < user.index("One [ [10] ]") < user.index("Second?")
    assert "[[10]]" not in user
    ref = replace(q, reference="R1", followup_reference="R2")
    name, _ = scoring.pair_messages_turn2(ref, ("a1", "a2"), ("b1", "b2"))
    assert name == "pair-math-v1-multi-turn"


# ---------------------------------------------------------------- the page


def test_the_evaluate_page_shows_turn_1_turn_2_and_both(fake, two_turns, db_path):
    from streamlit.testing.v1 import AppTest

    from tests.test_evaluate_page import EVALUATE

    fake.set("agg", text="Duo final.")
    fake.set("solo", text="Solo final <b>bold</b>.", when=(("Now double it", "Solo: 84."),))
    fake.set("judge", text="Rating: [[8]]", when=((SECOND_JUDGED, "Rating: [[3]]"),))
    results = ev.evaluate(Store(db_path), judged_plan(fake, two_turns))
    at = AppTest.from_file(EVALUATE, default_timeout=60)
    at.query_params["eval"] = results.eval_id
    at.run()
    assert not at.exception, at.exception

    by_turn = at.dataframe[0].value
    assert list(by_turn["contender"]) == ["Duo", "openai/solo"]
    solo = by_turn[by_turn["contender"] == "openai/solo"].iloc[0]
    assert (solo["turn 1"], solo["turn 2"]) == ("8.0 (8.0–8.0)", "3.0 (3.0–3.0)")
    assert solo["both turns"].startswith("6.0 (")  # with its 95% interval
    assert (solo["turn 1 scored"], solo["turn 2 scored"]) == (3, 2)
    main = at.dataframe[1].value
    assert list(main["rating (1–10)"]) == ["6.0", "6.0"]  # both turns by default
    grid = at.dataframe[2].value
    assert list(grid["openai/solo"]) == ["8 → 3", "8", "8 → 3"]

    at.radio(key="eval_turn_view").set_value("turn 2").run()
    assert list(at.dataframe[1].value["rating (1–10)"]) == ["3.0", "3.0"]
    grid = at.dataframe[2].value
    assert list(grid["prompt"]) == ["Say it again for a child of five.", "Now double it."]

    at.radio(key="eval_turn_view").set_value("both turns").run()
    at.selectbox(key="eval_question").select("sum").run()
    prompts = [m.value for m in at.markdown if "**Prompt**" in m.value]
    assert prompts[0].startswith("**Turn 1**") and "What is 40" in prompts[0]
    assert prompts[1].startswith("**Turn 2**") and "Now double it" in prompts[1]
    cards = [h.value for h in at.html if "moa-evalcard" in h.value]
    assert len(cards) == 4  # two contenders × two turns
    assert "Solo final &lt;b&gt;bold&lt;/b&gt;." in cards[1] and "Solo: 84." in cards[3]


def test_an_older_database_gains_the_eval_turns_table(tmp_path):
    import sqlite_utils

    from moa.migrations import migrate

    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    migrate(db, upto="m006_conversations")
    db["evals"].insert({"id": "e1", "status": "ok", "plan_json": "{}"})
    db.conn.close()
    store = Store(path)
    assert "eval_turns" in store.db.table_names()
    cols = {c.name for c in store.db["eval_turns"].columns}
    assert {"eval_id", "question_id", "contender", "turn", "run_id", "status", "score"} <= cols
    assert store.db["evals"].count == 1  # nothing else touched
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.usefixtures("duo")
def test_the_page_plans_second_turns_and_can_leave_them_out(fake, db_path):
    from tests.test_evaluate_page import page, text_of

    at = page()
    at.radio(key="eval_set").set_value("mtbench").run()
    at.number_input(key="eval_limit").set_value(2).run()
    at.text_input(key="eval_judge").input(f"openai/judge@{fake.base_url}").run()
    assert not at.error, [e.value for e in at.error]
    # 2 questions and 2 follow-ups × 5 contenders; 20 runs, each judged once.
    assert "2 questions (2 with a second turn) × 5 contenders = 20 answers" in text_of(at)
    assert "20 runs + 20 judge calls" in text_of(at)
    at.checkbox(key="eval_turns").uncheck().run()
    assert "2 questions × 5 contenders = 10 answers" in text_of(at)
    assert sum(fake.counts.values()) == 0


def test_a_second_turn_cut_mid_aggregation_resumes_on_its_paid_candidates(fake, tmp_path, db_path):
    from moa.events import CallStarted, RunStarted

    path = write_jsonl(tmp_path / "one.jsonl", [TWO_TURNS[0]])
    fake.set("p1", text="Draft one.")
    fake.set("p2", text="Draft two.")
    fake.set("agg", text="Duo final.", delay_s=0.5)  # the window in which it is stopped
    fake.set("judge", text="Rating: [[6]]")
    store = Store(db_path)
    plan = ev.EvalPlan(
        load_question_set(str(path)),
        [ev.mixture(make_config(fake, ["p1", "p2"], name="Duo"))],
        scoring="judge",
        judge=ev.judge_spec(f"openai/judge@{fake.base_url}"),
    )
    cancel = ev.EvalCancel()
    prompts_by_run = {}

    def stop_in_turn_two(event):
        if isinstance(event, RunStarted):
            prompts_by_run[event.record.run_id] = event.record.prompt
        elif (
            isinstance(event, CallStarted)
            and event.call.role == "aggregator"
            and prompts_by_run.get(event.run_id) == TWO_TURNS[0]["turns"][1]
        ):
            cancel.cancel()

    first = ev.evaluate(store, plan, cancel=cancel, on_event=stop_in_turn_two)
    assert first.status == "cancelled"
    (cut,) = first.turn_items
    assert cut.status == "running" and store.get_run(cut.run_id).status == "cancelled"
    assert fake.counts["p1"] == 2
    asked = fake.counts["agg"]  # 1, or 2 if the cut request had reached the server

    again = ev.evaluate(store, plan)
    assert again.status == "ok" and again.eval_id == first.eval_id
    # Turn 2's proposers were not asked again; only its aggregator, on the stored candidates.
    assert (fake.counts["p1"], fake.counts["p2"], fake.counts["agg"]) == (2, 2, asked + 1)
    (done,) = again.turn_items
    resumed = store.get_run(done.run_id)
    turn_one = store.get_run(again.items[0].run_id)
    assert resumed.parent_run_id == cut.run_id and resumed.status == "ok"
    assert (resumed.conversation_id, resumed.turn) == (turn_one.conversation_id, 2)
    last = fake.requests_for("agg")[-1]["body"]["messages"]
    assert ("user", "How do plants grow?") in [(m["role"], m["content"]) for m in last]
    assert (done.status, done.score) == ("scored", 6.0)
    assert len(fake.requests_for("judge")) == 2  # turn 1 once, turn 2 once


# ---------------------------------------------------------------- a real local model


@pytest.mark.local
def test_smollm2_answers_a_follow_up_after_its_own_first_answer(db_path, tmp_path):
    from moa.config import ModelSpec

    path = write_jsonl(tmp_path / "one.jsonl", [TWO_TURNS[0]])
    smol = ModelSpec("local/smollm2-135m", temperature=0.2, max_tokens=48)  # bounded time
    judge = replace(ev.judge_spec("local/smollm2-135m"), max_tokens=64)
    store = Store(db_path)
    plan = ev.EvalPlan(load_question_set(str(path)), [ev.single(smol)], "judge", judge)
    # resolved() gives the judge room to explain (1,024 tokens); keep this test short.
    prepared = ev.prepare(store, plan)
    prepared = replace(prepared, plan=replace(prepared.plan, judge=judge))
    results = ev.run_evaluation_sync(store, prepared)
    (one,), (two,) = results.items, results.turn_items
    first, second = store.get_run(one.run_id), store.get_run(two.run_id)
    assert (first.status, second.status) == ("ok", "ok") and second.final_text
    assert (second.conversation_id, second.turn) == (first.conversation_id, 2)
    assert second.calls[0].history_note is None  # the whole first turn fitted the window
    assert second.usage()["tokens_in"] > first.usage()["tokens_in"]  # it was sent turn 1
    assert two.status in ("scored", "unscored") and two.latency_s > 0
