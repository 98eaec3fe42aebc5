"""An evaluation's second turns (MT-Bench style): each contender's follow-up, asked in the
conversation of its own first answer, and judged on the whole two-turn conversation.

A question with a `followup` is put to every contender as turn 1, then turn 2 of one
conversation: the turn-2 run is sent the turn-1 question and that contender's own turn-1 final
answer as history (a single model's history is its own first answer) and is stored as turn 2 of
the turn-1 run's conversation. The judge grades it with MT-Bench's multi-turn prompts (it reads
both turns and rates the second answer). Second-turn items live in `eval_turns` (migration
m011), their judge calls in `judge_calls` with a kind starting `turn2:`; an interrupted
evaluation resumes without repeating a finished turn. `moa.evaluate` calls `second_turn` after
an item's first turn, `add_estimate` from `prepare`, and `load_items` from `load_results`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from moa import conversation, engine, llm, prompts, scoring
from moa.questions import Question
from moa.records import RunRecord, new_run_id

if TYPE_CHECKING:
    from moa.evalstore import EvalStore
    from moa.evaluate import Contender, EvalEstimate, EvalPlan, ItemResult, _Evaluation

TURN = 2
JUDGE_PREFIX = "turn2:"


def judge_kind(kind: str) -> str:
    """The judge_calls kind of a second-turn judgement (`single` → `turn2:single`)."""
    return JUDGE_PREFIX + kind


# ---------------------------------------------------------------- plan: progress and estimate


def stored_progress(
    turn_items: dict[tuple[str, str, int], dict[str, Any]],
) -> tuple[int, int, float]:
    """(finished, failed, spent on answers) of the second turns already stored."""
    done = sum(1 for v in turn_items.values() if v["status"] in ("scored", "failed"))
    failed = sum(1 for v in turn_items.values() if v["status"] == "failed")
    spent = sum(v["cost_usd"] or 0 for v in turn_items.values() if v["status"] != "running")
    return done, failed, spent


def n_items(plan: EvalPlan) -> int:
    """Second-turn items: every contender answers every follow-up."""
    return plan.questions.n_followups * len(plan.contenders)


def add_estimate(
    est: EvalEstimate, plan: EvalPlan, turn_items: dict[tuple[str, str, int], dict[str, Any]]
) -> None:
    """Add the second turns not finished yet to `est`: each answer with its history (the
    first question and, as an upper bound, a first answer of max_tokens), and its judging."""
    calls = {"match": 0, "judge": 1, "pairwise": 2}[plan.scoring]
    for q in plan.questions.questions:
        if q.followup is None:
            continue
        for c in plan.contenders:
            status = (turn_items.get((q.id, c.name, TURN)) or {}).get("status")
            if status in ("scored", "failed"):
                continue
            if status not in ("answered", "unscored"):
                est.n_runs += 1
                usd, unknown = _answer_cost(c, q)
                est.answers_usd += usd
                est.unknown_models += unknown
            if calls and not (plan.scoring == "pairwise" and c.name == plan.baseline):
                est.n_judge_calls += calls
                cost = _judge_cost(plan, c, q)
                if cost is None:
                    est.unknown_models.append(plan.judge.model)
                else:
                    est.judge_usd += cost * calls
    est.unknown_models = sorted(set(est.unknown_models))


def _answer_cost(c: Contender, q: Question) -> tuple[float, list[str]]:
    from moa.evaluate import _cost, _has_price

    assert q.followup is not None
    answer_bound = c.final_spec.max_tokens  # the first answer, sent back as history

    def history_in(model: str) -> int:
        return llm.count_tokens(model, text=q.prompt) + answer_bound

    if c.kind == "single":
        spec = c.config.proposers[0]
        messages = prompts.proposer_messages(q.followup, spec.system_prompt)
        cost = _cost(
            spec,
            lambda: llm.count_tokens(spec.model, messages) + history_in(spec.model),
            spec.max_tokens,
        )
        return (0.0, [spec.model]) if cost is None else (cost, [])
    remote = [s for s in c.config.models() if not s.model.startswith("local/")]
    if not remote:
        return 0.0, []
    if not any(_has_price(s) for s in remote):
        return 0.0, list(dict.fromkeys(s.model for s in remote))
    est = engine.estimate_cost(c.config, q.followup)
    usd = est.usd
    cfg = c.config
    called = [*cfg.proposers * cfg.layers, cfg.aggregator]
    if cfg.fallback_aggregator is not None:
        called.append(cfg.fallback_aggregator)
    for spec in called:  # every call of the turn is sent the history
        extra = llm.cost_usd(spec, history_in(spec.model), 0)
        usd += extra or 0.0
    return usd, est.unknown_models


def _judge_cost(plan: EvalPlan, c: Contender, q: Question) -> float | None:
    """One multi-turn judge call: both questions, references and both answers (twice in pairs)."""
    from moa.evaluate import _cost

    judge = plan.judge
    assert judge is not None
    answers = 2 * c.final_spec.max_tokens
    if plan.scoring == "pairwise":
        base = next(x for x in plan.contenders if x.name == plan.baseline)
        answers += 2 * base.final_spec.max_tokens
    text = "\n".join(filter(None, (q.prompt, q.followup, q.reference, q.followup_reference)))
    return _cost(
        judge,
        lambda: llm.count_tokens(judge.model, text=text) + 500 + answers,
        judge.max_tokens,
    )


# ---------------------------------------------------------------- the run


def baseline_futures(
    plan: EvalPlan, loop: asyncio.AbstractEventLoop
) -> dict[str, asyncio.Future[tuple[str, str] | None]]:
    """Pairwise: per question, the baseline's (first answer, second answer) once it has them."""
    return {q.id: loop.create_future() for q in plan.questions.questions if q.followup}


def release_baseline(ev: _Evaluation, q: Question, c: Contender) -> None:
    """The baseline's item ended without a second answer: the comparisons waiting on it go on."""
    fut = ev.baseline_followups.get(q.id)
    if c.name == ev.plan.baseline and fut is not None and not fut.done():
        fut.set_result(None)


async def second_turn(ev: _Evaluation, q: Question, c: Contender) -> None:
    """Ask `q.followup` in the conversation of `c`'s first answer, then score the answer."""
    key = (q.id, c.name, TURN)
    item = ev.turn_items.get(key) or {}
    if item.get("status") in ("scored", "failed"):
        if c.name == ev.plan.baseline and q.id in ev.baseline_followups:
            ev.baseline_followups[q.id].set_result(_stored_pair(ev, q, c, item))
        return
    if ev.cancel.requested:
        return
    first = _first_answer(ev, q, c)
    if first is None:
        row = ev.es.item(ev.eval_id, q.id, c.name)
        if row is None or row["status"] != "failed":
            return  # turn 1 was cancelled: both turns resume later
        ev.es.save_turn_item(
            ev.eval_id,
            q.id,
            c.name,
            TURN,
            category=q.category,
            status="failed",
            error="turn 1 has no answer, so its follow-up was not asked",
        )
        ev._finished(q, c, "failed", "turn 2 not asked (turn 1 failed)")
        return
    record = await _answer(ev, q, c, first, item)
    if record is None:  # cancelled: the item stays as it is, to resume later
        return
    text = record.final_text if record.status == "ok" else None
    if c.name == ev.plan.baseline and q.id in ev.baseline_followups:
        pair = (first.final_text or "", text) if text is not None else None
        ev.baseline_followups[q.id].set_result(pair)
    if text is None:
        ev._finished(q, c, "failed", f"turn 2 ✗ {record.error}")
        return
    await _score(ev, q, c, first.final_text or "", text)


def _first_answer(ev: _Evaluation, q: Question, c: Contender) -> RunRecord | None:
    """The contender's finished turn-1 run, if it has an answer."""
    row = ev.es.item(ev.eval_id, q.id, c.name)
    if row is None or not row.get("run_id") or row["status"] in ("running", "failed"):
        return None
    record = ev.store.get_run(row["run_id"])
    if record is None or record.status != "ok" or not record.final_text:
        return None
    return record


def _stored_pair(
    ev: _Evaluation, q: Question, c: Contender, item: dict[str, Any]
) -> tuple[str, str] | None:
    first = _first_answer(ev, q, c)
    second = ev.store.get_run(item["run_id"]) if item.get("run_id") else None
    if first is None or second is None or second.status != "ok" or not second.final_text:
        return None
    return first.final_text or "", second.final_text


async def _answer(
    ev: _Evaluation, q: Question, c: Contender, first: RunRecord, item: dict[str, Any]
) -> RunRecord | None:
    """The contender's second answer: adopted from a finished run, else (re)run; None if
    cancelled. The run is turn 2 of the first answer's conversation, sent that turn as history."""
    from moa.evaluate import _candidates_complete

    assert q.followup is not None
    record = ev.store.get_run(item["run_id"]) if item.get("run_id") else None
    if record is not None and record.status in ("ok", "failed"):
        _save_answer(ev, q, c, record, new=item.get("status") == "running")
        return record
    reuse = None
    if record is not None and c.kind != "single" and _candidates_complete(record):
        reuse = record  # only the aggregator had not finished: reuse the paid candidates
    history = conversation.sendable([first])
    run_cancel = ev.cancel._for_run()
    try:
        async with ev._slot(c.models):
            if ev.cancel.requested:
                return None
            run_id = new_run_id()
            # Linked before the first call, so a crash mid-run leaves a run to resume from.
            ev.es.save_turn_item(
                ev.eval_id, q.id, c.name, TURN, category=q.category, run_id=run_id, status="running"
            )
            record = await engine.run(
                c.config,
                q.followup,
                on_event=ev.on_event,
                cancel=run_cancel,
                limits=ev.limits,
                run_id=run_id,
                checked=True,
                single=c.kind == "single",
                reuse=reuse,
                history=history,
                conversation_id=first.conversation_id,
                turn=TURN,
            )
    finally:
        ev.cancel._done(run_cancel)
    if record.status == "cancelled":
        return None
    _save_answer(ev, q, c, record, new=True)
    return record


def _save_answer(
    ev: _Evaluation, q: Question, c: Contender, record: RunRecord, *, new: bool
) -> None:
    from moa.evaluate import _latency

    usage = record.usage()
    ok = record.status == "ok"
    if new:
        ev.answers_usd += usage["cost_usd"] or 0
    ev.es.save_turn_item(
        ev.eval_id,
        q.id,
        c.name,
        TURN,
        category=q.category,
        run_id=record.run_id,
        status="answered" if ok else "failed",
        error=None if ok else record.error,
        cost_usd=usage["cost_usd"],
        latency_s=_latency(record),
        tokens_out=usage["tokens_out"],
    )


# ---------------------------------------------------------------- scoring


async def _score(ev: _Evaluation, q: Question, c: Contender, first: str, second: str) -> None:
    """MT-Bench multi-turn judging: a 1-10 rating of the second answer, or the pairwise verdict
    on the second answers of two conversations (both orders)."""
    kind = ev.plan.scoring
    if kind == "pairwise" and c.name == ev.plan.baseline:
        _save_score(ev, q, c, status="scored", score=0.5, outcome="tie")
        ev._finished(q, c, "scored", "turn 2: baseline")
        return
    if kind == "judge":
        name, messages = scoring.single_messages_turn2(q, first, second)
        row = await ev._judge(q, c, judge_kind("single"), name, messages)
        if row is None:
            return
        rating = row.get("rating")
        _judged(ev, q, c, [row], rating, None, "no rating" if rating is None else None)
        return
    base = await ev.baseline_followups[q.id]
    if base is None:
        if ev.cancel.requested:
            return
        _save_score(
            ev,
            q,
            c,
            status="unscored",
            error=f"the baseline {ev.plan.baseline} has no second answer to compare with",
        )
        ev._finished(q, c, "unscored", "turn 2: no baseline answer")
        return
    mine = (first, second)
    a = await ev._judge(
        q, c, judge_kind("contender-first"), *scoring.pair_messages_turn2(q, mine, base)
    )
    b = await ev._judge(
        q, c, judge_kind("contender-second"), *scoring.pair_messages_turn2(q, base, mine)
    )
    if a is None or b is None:
        return
    outcome = scoring.combine_orders(a.get("verdict"), b.get("verdict"))
    score = None if outcome is None else scoring.OUTCOME_SCORE[outcome]
    _judged(ev, q, c, [a, b], score, outcome, "no verdict" if outcome is None else None)


def _save_score(ev: _Evaluation, q: Question, c: Contender, **values: Any) -> None:
    ev.es.save_turn_item(ev.eval_id, q.id, c.name, TURN, **values)


def _judged(
    ev: _Evaluation,
    q: Question,
    c: Contender,
    rows: list[dict[str, Any]],
    score: float | None,
    outcome: str | None,
    problem: str | None,
) -> None:
    from moa.evaluate import judged_values

    values, label = judged_values(rows, score, outcome, problem)
    _save_score(ev, q, c, **values)
    ev._finished(q, c, values["status"], f"turn 2: {label}")


# ---------------------------------------------------------------- results


def load_items(es: EvalStore, eval_id: str, order: dict[str, int]) -> list[ItemResult]:
    """The stored second-turn items as results, in question order."""
    from moa.evaluate import ItemResult

    rows = es.turn_items(eval_id).values()
    items = [
        ItemResult(
            question_id=v["question_id"],
            category=v["category"],
            contender=v["contender"],
            run_id=v["run_id"],
            status=v["status"],
            score=v["score"],
            outcome=v["outcome"],
            extracted=v["extracted"],
            error=v["error"],
            cost_usd=v["cost_usd"],
            latency_s=v["latency_s"],
            tokens_out=v["tokens_out"],
            judge_cost_usd=v["judge_cost_usd"],
            turn=v["turn"],
        )
        for v in rows
    ]
    return sorted(items, key=lambda i: (order.get(i.question_id, len(order)), i.contender))
