"""MoA Studio, the Evaluate page: is the mixture worth its cost, against single models?

Pick a question set and contenders (a preset's MoA, each of its models alone, Self-MoA, any
model), see the estimate, run with a progress bar; then the results table, the headline, quality
against cost and latency with the Pareto front, per category and per question down to the runs.
"""

from __future__ import annotations

import time

import streamlit as st

from moa import config as config_mod
from moa import evaluate as ev
from moa.config import ConfigError
from moa.questions import QuestionFileError, QuestionSet, load_question_set
from moa.store import Store, StoreError
from moa.ui import evaluation as E
from moa.ui.config_form import default_preset
from moa.ui.keys import activate as activate_session_keys
from moa.ui.nav import page_nav
from moa.ui.render import esc, fmt_cost, fmt_s, inject_css, markdown_escape, run_chip
from moa.ui.resources import (
    PAGE_ICON,
    copy_secrets_to_env,
    get_store,
    presets_dir,
    wait_for_litellm,
)

LIVE = "eval_live"  # the session's LiveEval (running, or the last one)
MESSAGE = "eval_message"  # why the last Start was refused, or how the last evaluation ended
OPEN = "eval_open"
SETS = {
    "verifiable": "Bundled verifiable questions (76: arithmetic, units, facts; scored by match)",
    "mtbench": "MT-Bench (80 questions, each with a second turn; graded by a judge model)",
    "file": "My own file (.jsonl or .csv: prompt or turns, optional answer and category)",
}
AGGREGATOR = "(each preset's aggregator)"
STRATEGY_CHOICES = [
    *config_mod.STRATEGIES,
    *(f"{s}+cascade" for s in config_mod.STRATEGIES),
]
REFRESH_S = 0.5


# ---------------------------------------------------------------- the plan


def questions_input() -> QuestionSet | None:
    choice = st.radio("Question set", list(SETS), format_func=SETS.get, key="eval_set")
    limit = st.number_input(
        "Questions (0 = all; a subset is spread over the categories)",
        min_value=0,
        max_value=2000,
        value=12,
        key="eval_limit",
    )
    if choice == "file":
        up = st.file_uploader("Question file", type=["jsonl", "csv"], key="eval_file")
        if up is None:
            st.caption(
                'One question a line, e.g. `{"prompt": "What is 7 × 8?", "answer": 56, '
                '"category": "arithmetic"}`; in CSV the header names the same columns.'
            )
            return None
        questions = E.uploaded_questions(up.name, up.getvalue())
    else:
        questions = load_question_set(choice)
    return second_turns_input(questions).limited(limit or None)


def second_turns_input(questions: QuestionSet) -> QuestionSet:
    """Questions with a second turn: ask it (each contender's follow-up sees its own first
    answer, and the judge grades it MT-Bench style), or first turns only."""
    n = questions.n_followups
    if not n:
        return questions
    ask = st.checkbox(
        f"Ask the second turns too ({n} of {len(questions.questions)} questions have one)",
        value=True,
        key="eval_turns",
    )
    return questions if ask else questions.first_turns()


def contenders_input() -> list[ev.Contender]:
    names = config_mod.list_presets(presets_dir())
    default = default_preset(names)
    chosen = st.multiselect(
        "Presets (each one's mixture is a contender)",
        names,
        default=[default] if default else [],
        key="eval_presets",
    )
    configs = [config_mod.load_preset(name, presets_dir()) for name in chosen]
    c1, c2 = st.columns(2)
    alone = c1.checkbox("each of its models alone", value=True, key="eval_alone")
    with_self = c2.checkbox("Self-MoA (one model sampled N times)", value=True, key="eval_self")
    model, n, temperature = None, None, ev.SELF_MOA_TEMPERATURE
    if with_self and configs:
        models = list(dict.fromkeys(s.model for cfg in configs for s in cfg.models()))
        s1, s2, s3 = st.columns([2, 1, 1])
        picked = s1.selectbox("Self-MoA model", [AGGREGATOR, *models], key="eval_self_model")
        model = None if picked == AGGREGATOR else picked
        n = s2.number_input("samples (0 = as many as proposers)", 0, 8, 0, key="eval_self_n")
        temperature = s3.slider("temperature", 0.1, 2.0, ev.SELF_MOA_TEMPERATURE, 0.1, key="eval_t")
    # Each chosen strategy of each chosen preset is one more contender (`preset@strategy`).
    strategies = st.multiselect(
        "Strategies (each one of each preset is a contender: quality against cost and latency "
        "per strategy)",
        STRATEGY_CHOICES,
        key="eval_strategies",
        help="synthesize · rank · select · vote · critique; +cascade runs the panel only when "
        "two samples disagree (the results show how often it escalated).",
    )
    extra = st.text_area(
        "More contenders: model ids (`provider/model`, `model@http://host/v1`), preset names or "
        "`self-moa:MODEL`, separated by commas or lines",
        key="eval_extra",
        height=68,
    )
    contenders: list[ev.Contender] = []
    for cfg in configs:
        contenders += ev.from_preset(
            cfg,
            alone=alone,
            with_self_moa=with_self,
            self_moa_model=model,
            n=n or None,
            temperature=temperature,
        )
    for cfg in configs:
        for label in strategies:
            strategy, _, cascade = label.partition("+")
            contenders.append(ev.with_strategy(ev.mixture(cfg), strategy, bool(cascade)))
    contenders += [ev.parse_contender(text) for text in E.split_models(extra)]
    return ev.unique_names(contenders)


def plan_input() -> ev.EvalPlan | None:
    """The form; the plan it describes (None until a question file is uploaded)."""
    questions = questions_input()
    contenders = contenders_input()
    c1, c2, c3 = st.columns([1, 2, 1.4])
    scoring = c1.selectbox("Scoring", ev.SCORINGS, key="eval_scoring")
    judge = c2.text_input(
        "Judge model (for MT-Bench, your own open questions, judge or pairwise scoring)",
        key="eval_judge",
        placeholder="e.g. openai/gpt-4o-mini or local/qwen2.5-coder-1.5b",
    )
    baseline = None
    if scoring == "pairwise" and contenders:
        baseline = c3.selectbox("Baseline", [c.name for c in contenders], key="eval_baseline")
    c1, c2 = st.columns(2)
    concurrency = c1.number_input(
        "Answers in flight (local models run one at a time anyway)", 1, 64, 4, key="eval_conc"
    )
    budget = c2.number_input(
        "Budget cap, USD (0 = none): refused before starting if the estimate is over",
        min_value=0.0,
        value=0.0,
        step=0.5,
        key="eval_budget",
    )
    if questions is None:
        return None
    return ev.EvalPlan(
        questions,
        contenders,
        scoring=scoring,
        judge=ev.judge_spec(judge) if judge.strip() else None,
        baseline=baseline,
        concurrency=int(concurrency),
        max_cost_usd=budget or None,
    )


def new_evaluation(store: Store, running: bool) -> None:
    if store.read_only:  # an evaluation writes every answer: say so before any setup
        st.error(markdown_escape(store.read_only))
        return
    try:
        plan = plan_input()
        if plan is None:
            return
        fresh = st.checkbox(
            "Start afresh (by default an unfinished evaluation of the same plan resumes)",
            key="eval_fresh",
        )
        with st.spinner("Loading the model library (first time only)…"):
            wait_for_litellm(60)
        prepared = ev.prepare(store, plan, resume=not fresh)
    except (QuestionFileError, ConfigError, ev.EvalInputError, StoreError) as e:
        st.error(markdown_escape(str(e)))
        return
    plan, est = prepared.plan, prepared.estimate
    n_q, n_c = len(plan.questions.questions), len(plan.contenders)
    n_2 = plan.questions.n_followups
    text = (
        f"{n_q} question{'s' if n_q != 1 else ''}"
        + (f" ({n_2} with a second turn)" if n_2 else "")
        + f" × {n_c} contender{'s' if n_c != 1 else ''} = "
        f"{prepared.total} answer{'s' if prepared.total != 1 else ''} · scoring **{plan.scoring}**"
        + (f" by {markdown_escape(plan.judge.model)}" if plan.judge else "")
        + f" · left to do: {est.n_runs} runs + {est.n_judge_calls} judge calls, estimated "
        f"≤ {markdown_escape(est.describe())}"
    )
    if prepared.eval_id:
        text += f" · resumes {prepared.eval_id} ({prepared.done} done)"
    st.markdown(text)
    st.caption(" · ".join(markdown_escape(c.name) for c in plan.contenders))
    if st.button("Start evaluation", type="primary", disabled=running, key="eval_start"):
        try:
            store.check_writable()  # it may have turned read-only since the page opened
        except StoreError as e:
            st.error(markdown_escape(str(e)))
            return
        st.session_state[LIVE] = E.LiveEval(prepared).start(store)
        st.session_state.pop(MESSAGE, None)
        st.rerun()


# ---------------------------------------------------------------- running


def follow(store: Store, live: E.LiveEval) -> None:
    """Progress bar and partial results until the evaluation ends (script thread)."""
    st.subheader("Running")
    bar = st.progress(0.0)
    line = st.empty()
    if st.button("Stop", key="eval_stop"):
        live.cancel.cancel()
    partial = st.empty()
    shown_at = 0.0
    while True:
        finished = live.done.is_set()
        bar.progress(min(1.0, live.fraction))
        line.caption(("stopping… " if live.cancel.requested else "") + live.describe())
        if live.eval_id and (finished or time.monotonic() - shown_at > 2):
            shown_at = time.monotonic()
            try:
                rows = E.results_rows(ev.load_results(store, live.eval_id))
                partial.dataframe(rows, hide_index=True, width="stretch")
            except (ev.EvalInputError, StoreError):
                pass
        if finished:
            break
        _ = st.session_state.get(LIVE)  # a click (Stop) interrupts here
        live.done.wait(REFRESH_S)
    if live.error:
        st.session_state[MESSAGE] = ("error", f"The evaluation stopped: {live.error}")
    elif live.results is not None:
        r = live.results
        items = r.items + r.turn_items
        finished = sum(i.status in ("scored", "failed", "unscored") for i in items)
        total = (len(r.questions) + sum(q.followup is not None for q in r.questions)) * len(
            r.contenders
        )
        text = f"Evaluation {r.eval_id}: {r.status}" + (f" — {r.error}" if r.error else "")
        if r.status in ("cancelled", "interrupted"):
            text = (
                f"Evaluation stopped with {finished} of {total} answers kept. "
                "Resume it below: the kept answers are not asked again."
            )
        st.session_state[MESSAGE] = ("success" if r.status == "ok" else "warning", text)
    if live.eval_id:
        st.session_state[OPEN] = live.eval_id
        st.query_params["eval"] = live.eval_id
    st.rerun()


# ---------------------------------------------------------------- results


def pick_evaluation(evals: list) -> str | None:
    if not evals:
        st.info(
            "No evaluation yet. Pick a question set and contenders above and start one: the "
            "bundled verifiable questions on the `local-demo` preset need no API key."
        )
        return None
    labels = {
        e.id: f"{e.created_at[:16].replace('T', ' ')} · {e.name} · {e.status} · "
        f"{e.n_scored}/{e.n_questions * e.n_contenders} scored"
        for e in evals
    }
    wanted = st.query_params.get("eval")
    if wanted in labels and st.session_state.get(OPEN) != wanted:
        st.session_state[OPEN] = wanted
    if st.session_state.get(OPEN) not in labels:
        st.session_state[OPEN] = evals[0].id
    picked = st.selectbox("Evaluation", list(labels), format_func=labels.get, key=OPEN)
    if picked != wanted:
        st.query_params["eval"] = picked
    return picked


def show_results(store: Store, eval_id: str, running: bool) -> None:
    results = ev.load_results(store, eval_id)
    judge = f" · judge {results.judge_model}" if results.judge_model else ""
    n_q = len(results.questions)
    st.html(
        f'<div class="moa-runhead">{run_chip(results.status)}'
        f'<span class="moa-runname">{esc(results.name)}</span>'
        f'<span class="moa-sep">·</span>{esc(results.question_set)}, {n_q} '
        f'question{"s" if n_q != 1 else ""}<span class="moa-sep">·</span>'
        f"scoring {esc(results.scoring)}{esc(judge)}"
        f'<span class="moa-sep">·</span>{esc(results.created_at[:19].replace("T", " "))}</div>'
    )
    if results.error:
        st.warning(markdown_escape(results.error))
    resumable = results.status in ("interrupted", "cancelled") and not running
    if resumable and st.button("Resume this evaluation", key="eval_resume"):
        try:
            prepared = ev.prepare(store, None, eval_id=eval_id)
        except ev.EvalInputError as e:
            st.error(markdown_escape(str(e)))
        else:
            st.session_state[LIVE] = E.LiveEval(prepared).start(store)
            st.rerun()

    results = turn_view(results)
    head = results.headline()
    if head is not None:
        st.success(markdown_escape(head.describe()))
    else:
        st.caption(
            "The headline compares an MoA contender with the best single model: add both to see it."
        )
    if results.judge_cost_usd:
        st.caption(f"Judge calls cost {fmt_cost(results.judge_cost_usd)}, counted separately.")
    st.dataframe(E.results_rows(results), hide_index=True, width="stretch")

    left, right = st.columns(2)
    free = all(c.cost_usd == 0 for c in results.contenders if c.n_ok)
    with left:
        cost_fig = None if free else E.quality_chart(results, "cost")
        if cost_fig is not None:
            st.plotly_chart(cost_fig, key="eval_cost_chart")
            front_caption(results, "cost")
        if free:
            st.info("Every contender cost $0 (local models): here latency is the price.")
        unpriced = [c.name for c in results.contenders if c.n_ok and c.cost_usd is None]
        if unpriced:
            st.caption(
                markdown_escape(
                    "Quality vs cost leaves out contenders whose price is unknown (never "
                    f"counted as $0): {', '.join(unpriced)}"
                )
            )
    with right:
        speed_fig = E.quality_chart(results, "latency")
        if speed_fig is not None:
            st.plotly_chart(speed_fig, key="eval_speed_chart")
            front_caption(results, "latency")
    cat_fig = E.category_chart(results)
    if cat_fig is not None:
        st.plotly_chart(cat_fig, key="eval_cat_chart")

    st.subheader("Per question")
    st.dataframe(E.question_rows(results), hide_index=True, width="stretch")
    drill_down(store, results)


def turn_view(results: ev.EvalResults) -> ev.EvalResults:
    """Two-turn questions: the per-turn table, and which turn the rest of the page shows."""
    if results.n_turns < 2:
        return results
    st.markdown("**By turn** (turn 2 is the follow-up, asked after each contender's own answer)")
    st.dataframe(E.turn_rows(results), hide_index=True, width="stretch")
    choice = st.radio(
        "Show",
        ["both turns", "turn 1", "turn 2"],
        horizontal=True,
        key="eval_turn_view",
        help="Both turns together is MT-Bench's score: every rating of either turn counts once.",
    )
    return results if choice == "both turns" else results.for_turn(int(choice[-1]))


def front_caption(results: ev.EvalResults, x: str) -> None:
    front = results.pareto_front(x)
    if front:
        what = "cheaper" if x == "cost" else "faster"
        st.caption(
            markdown_escape(
                f"Pareto front (no contender is both better and {what}): "
                + " → ".join(c.name for c in front)
            )
        )


def drill_down(store: Store, results: ev.EvalResults) -> None:
    if results.turn_items:  # both turns: the question's turns one after the other
        by_id = {q.id: q for q in results.questions}
        turns = [results.for_turn(1), results.for_turn(2)]
    else:
        by_id, turns = {q.id: q for q in results.questions}, [results]
    qid = st.selectbox(
        "Open a question: every contender's stored run side by side",
        ["", *by_id],
        format_func=lambda i: "—" if not i else f"{i} · {E._short(by_id[i].prompt, 70)}",
        key="eval_question",
    )
    if not qid:
        return
    for n, view in enumerate(turns, start=1):
        q = next((x for x in view.questions if x.id == qid), None)
        if q is not None:
            question_cards(store, view, q, f"Turn {n}" if len(turns) > 1 else "")


def question_cards(store: Store, results: ev.EvalResults, q, turn: str) -> None:
    """One question (one turn of it): its prompt, reference and every contender's answer."""
    qid = q.id
    head = f"**{turn}** · " if turn else ""
    st.markdown(f"{head}**Prompt** ({markdown_escape(q.category)}): {markdown_escape(q.prompt)}")
    if q.reference or q.answer is not None:
        ref = q.answer if q.answer is not None else q.reference
        aliases = f" (also accepted: {', '.join(map(str, q.aliases))})" if q.aliases else ""
        st.markdown(f"**Reference**: {markdown_escape(str(ref) + aliases)}")
    kind = ev.SCORE_KINDS[results.scoring]
    per_row = 4
    contenders = results.contenders
    for start in range(0, len(contenders), per_row):
        cols = st.columns(per_row)
        for col, c in zip(cols, contenders[start : start + per_row], strict=False):
            item = results.item(qid, c.name)
            record = store.get_run(item.run_id) if item and item.run_id else None
            bits = [E.item_mark(item, kind)]
            if item and item.extracted:
                bits.append(f"extracted {item.extracted}")
            if item and item.latency_s is not None:
                bits.append(fmt_s(item.latency_s))
            if item and item.cost_usd is not None:
                bits.append(fmt_cost(item.cost_usd))
            link = (
                f'<a href="/History?run={esc(item.run_id)}" target="_blank" '
                f'rel="noopener noreferrer">open run ↗</a>'
                if item and item.run_id
                else ""
            )
            text = record.final_text if record else None
            if text is None and item and item.error:
                text = f"(failed: {item.error})"
            col.html(
                '<div class="moa-evalcard" style="border:1px solid #e2e8f0;border-radius:10px;'
                'padding:.6rem .75rem;height:100%">'
                f'<div style="font-weight:650">{esc(c.name)}</div>'
                f'<div style="color:#64748b;font-size:.8rem">{esc(" · ".join(bits))} {link}</div>'
                '<div style="white-space:pre-wrap;font-size:.88rem;margin-top:.35rem;'
                f'max-height:22rem;overflow:auto">{esc(text or "(no answer)")}</div></div>'
            )


# ---------------------------------------------------------------- the page


def main() -> None:
    st.set_page_config(page_title="MoA Studio · Evaluate", page_icon=PAGE_ICON, layout="wide")
    inject_css()
    page_nav()
    copy_secrets_to_env()
    activate_session_keys()  # keys typed on the Run page serve evaluations too
    st.title("Evaluate")
    st.caption(
        "Is the mixture worth its cost? Score a preset's MoA against each of its models alone, "
        "Self-MoA and any other model, on questions with known answers or with a judge."
    )
    try:
        store = get_store()
    except StoreError as e:
        st.error(markdown_escape(str(e)))
        return
    message = st.session_state.pop(MESSAGE, None)
    if message:
        getattr(st, message[0])(markdown_escape(message[1]))
    live: E.LiveEval | None = st.session_state.get(LIVE)
    running = live is not None and live.running
    evals = ev.list_evaluations(store, limit=200)
    with st.expander("New evaluation", expanded=not evals and not running):
        new_evaluation(store, running)
    if running:
        follow(store, live)
        return
    st.subheader("Results")
    eval_id = pick_evaluation(evals)
    if eval_id:
        show_results(store, eval_id, running)


main()
