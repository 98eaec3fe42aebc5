"""How the last layer's candidates become the final answer: one small function per strategy.

Read it like llm-council's stages: after the proposer layers the engine calls
`STRATEGIES[config.strategy](runner, candidates)`; with `cascade = true` it first calls
`cascade(runner)`, which may answer without the panel. Each strategy makes its extra calls
through the engine's runner (`runner.call`), so every one is an ordinary CallRecord with a
role (`ranker`, `selector`, `critic`, `reviser`), its events, tokens, cost and timing; what the
strategy concluded goes into `record.outcome`, one section per kind of output (`cascade`,
`ranking`, `vote`, `selection`, `critique`), which the renderers draw section by section.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from moa import llm, prompts, scoring
from moa.config import ModelSpec, RunConfig
from moa.events import CallFailed, CallQueued
from moa.records import CallRecord

if TYPE_CHECKING:
    from moa.engine import _Runner

Candidates = list[tuple[int, CallRecord]]  # (position in record.proposer_calls, call)

EXPLANATIONS = {
    "synthesize": "The aggregator writes one answer from all the candidates (classic MoA).",
    "rank": "Each proposer (or the judge) ranks the anonymised candidates; the aggregator "
    "synthesises knowing the combined ranking.",
    "select": "The aggregator only picks the best candidate; it is returned verbatim.",
    "vote": "Short answers: the majority answer wins with no aggregator call; no majority "
    "falls back to select.",
    "critique": "The aggregator drafts, a critic lists errors and omissions, the aggregator "
    "revises (critique_rounds times).",
}
CASCADE_EXPLANATION = (
    "Two samples answer first; if they agree, that answer is returned and the panel never runs."
)
# Sections of `record.outcome`, in the order they happened; renderers draw each one they know.
SECTIONS = ("cascade", "ranking", "vote", "selection", "critique")
SELECTOR_MAX_TOKENS = 120  # "SELECTED: n" and one line of reason


def strategy_layer(config: RunConfig) -> int:
    """Strategy calls share the aggregator's layer number (after the last proposer layer)."""
    return config.layers + 1


def _ranker_spec(spec: ModelSpec, n: int) -> ModelSpec:
    # Low temperature and room for one reason per candidate; a persona prompt would only
    # distract from the ranking format.
    return replace(
        spec,
        temperature=min(spec.temperature, 0.2),
        max_tokens=max(spec.max_tokens, 48 * n + 48),
        system_prompt=None,
    )


def _selector_spec(spec: ModelSpec) -> ModelSpec:
    return replace(spec, temperature=0.0, max_tokens=min(spec.max_tokens, SELECTOR_MAX_TOKENS))


def rankers(config: RunConfig) -> list[ModelSpec]:
    """Who ranks: the judge alone if set, else every proposer."""
    return [config.judge] if config.judge is not None else list(config.proposers)


# ---------------------------------------------------------------- planning


def plan(runner: _Runner) -> None:
    """The calls a strategy is sure to make, added before they run so a UI shows them waiting.

    Calls that happen only on some paths (a fallback, vote's selector) are added when needed.
    """
    cfg, layer = runner.config, strategy_layer(runner.config)
    agg = cfg.aggregator
    if cfg.strategy == "rank":
        n = len(cfg.proposers)
        for i, spec in enumerate(rankers(cfg)):
            runner.add_call(
                CallRecord(layer, "ranker", i, spec.model, spec.display), _ranker_spec(spec, n)
            )
    if cfg.strategy in ("synthesize", "rank", "critique"):
        runner.add_call(CallRecord(layer, "aggregator", 0, agg.model, agg.display), agg)
    if cfg.strategy == "select":
        sel = _selector_spec(agg)
        runner.add_call(CallRecord(layer, "selector", 0, sel.model, sel.display), sel)
    if cfg.strategy == "critique":
        critic = cfg.critic or agg
        for r in range(cfg.critique_rounds):
            runner.add_call(CallRecord(layer, "critic", r, critic.model, critic.display), critic)
            runner.add_call(CallRecord(layer, "reviser", r, agg.model, agg.display), agg)


def estimate_extra(
    config: RunConfig, cost: Callable[[ModelSpec, int, int], float | None], prev_out: int
) -> tuple[float, list[str]]:
    """Upper bound of the strategy's calls beyond one aggregator (and its fallback).

    `cost(spec, tokens_out, tokens_in_beyond_the_prompt)` is the engine's bound of one call (the
    spec, so its own prices count).
    select and vote call a selector no dearer than the aggregator already counted; rank adds
    its rankers, critique its critic and reviser per round, a cascade_model its two samples
    (a single proposer's cascade: its second sample).
    """
    usd, unknown = 0.0, []

    def add(spec: ModelSpec, extra_in: int) -> None:
        nonlocal usd
        c = cost(spec, spec.max_tokens, extra_in)
        if c is None:
            unknown.append(spec.model)
        else:
            usd += c

    n = len(config.proposers)
    if config.strategy == "rank":
        for spec in rankers(config):
            add(_ranker_spec(spec, n), prev_out + 300)
    if config.strategy == "critique":
        agg = config.aggregator
        for _ in range(config.critique_rounds):
            critic = config.critic or agg
            add(critic, prev_out + agg.max_tokens + 300)
            add(agg, prev_out + agg.max_tokens + critic.max_tokens + 400)
    if config.cascade and config.cascade_model is not None:
        for _ in range(2):
            add(config.cascade_model, 0)
    elif config.cascade and n == 1:
        add(config.proposers[0], 0)  # the only proposer's second sample
    return usd, unknown


# ---------------------------------------------------------------- cascade


def cascade_pair(runner: _Runner) -> list[CallRecord]:
    """Plan the cascade's two calls, as layer-1 proposer calls so that both stay candidates
    if the panel runs: proposers 1 and 2, or two samples of `cascade_model` (extra candidates,
    numbered after the configured proposers), or of the only proposer (its answer and one
    more sample)."""
    cfg = runner.config
    n = len(cfg.proposers)
    if cfg.cascade_model is None and n >= 2:
        pair = [(i, spec, spec.display) for i, spec in enumerate(cfg.proposers[:2])]
    elif cfg.cascade_model is None:
        spec = cfg.proposers[0]
        pair = [(0, spec, spec.display), (1, spec, f"{spec.display} · sample 2")]
    else:
        spec = cfg.cascade_model
        pair = [(n + k, spec, f"{spec.display} · cascade {k + 1}") for k in range(2)]
    calls = []
    for index, spec, label in pair:
        call = CallRecord(1, "proposer", index, spec.model, label)
        runner.add_call(call, spec)
        calls.append(call)
    return calls


def extra_candidates(cfg: RunConfig, calls: list[CallRecord]) -> list[CallRecord]:
    """The cascade's calls that are not among the configured proposers' own (cascade_model
    samples, a single proposer's second sample): what the cascade added to the panel."""
    return [c for c in calls if c.index >= len(cfg.proposers)]


def short_answer(text: str) -> str | None:
    """A short answer's normalised form, read as the Evaluate scorer reads answers: the
    number it gives (scoring.extract_number), else its shortest plausible answer span."""
    number = scoring.extract_number(text)
    if number is not None:
        return f"{number:g}"
    spans = [s for s in scoring.exact_candidates(text) if len(s.split()) <= 6]
    return min(spans, key=len) if spans else None


def agreement(a: str, b: str) -> float:
    """The attribution agreement measure between two answers (shared phrasing, both ways)."""
    from moa.attribution import attribute

    return attribute("", [a, b]).agreement[0][1]


async def cascade(runner: _Runner, calls: list[CallRecord]) -> bool:
    """Two answers first. True: they agree, the first is the final answer, no panel runs."""
    record, cfg = runner.record, runner.config
    t0 = time.monotonic()
    messages = [runner.proposer_messages(c, []) for c in calls]
    await _gather(*(runner.call(c, m) for c, m in zip(calls, messages, strict=True)))
    phase_s = round(time.monotonic() - t0, 4)
    ok = [c for c in calls if c.status == "ok"]
    answers = [short_answer(c.text) if c.status == "ok" else None for c in calls]
    score = agreement(calls[0].text, calls[1].text) if len(ok) == 2 else None
    same_short = len(ok) == 2 and answers[0] is not None and answers[0] == answers[1]
    agree = len(ok) == 2 and (same_short or (score is not None and score >= cfg.cascade_agreement))
    section: dict[str, Any] = {
        "calls": [list(c.key) for c in calls],
        "answers": answers,
        "agreement": None if score is None else round(score, 3),
        "threshold": cfg.cascade_agreement,
        "same_short_answer": same_short,
        "escalated": not agree,
        "phase_s": phase_s,
    }
    outcome = _outcome(record)
    if agree:
        skipped = _skipped_panel(cfg, calls)
        usd, unknown = _upper_cost(skipped)
        section["saved_calls"] = len(skipped)
        section["saved_cost_usd"] = None if unknown else round(usd, 8)
        # The full run would have taken its layers and the aggregator; the pair took one stage.
        # Estimated with every stage as long as the pair's (the skipped calls never ran).
        section["saved_s_estimate"] = round(phase_s * cfg.layers, 2)
        section["reason"] = (
            "the two answers give the same short answer"
            if same_short
            else f"agreement {score:.2f} ≥ {cfg.cascade_agreement:g}"
        )
        outcome["cascade"] = section  # whole: a live view may read it at any moment
        outcome["final"] = list(calls[0].key)
        record.status = "ok"
        return True
    added = [c.cost_usd for c in extra_candidates(cfg, calls)]
    section["added_cost_usd"] = None if any(x is None for x in added) else round(sum(added), 8)
    section["added_s"] = phase_s  # the panel starts this much later than it would have
    section["reason"] = (
        f"{len(ok)} of 2 answers succeeded"
        if len(ok) < 2
        else f"agreement {score:.2f} < {cfg.cascade_agreement:g} and different short answers"
    )
    outcome["cascade"] = section
    return False


def _skipped_panel(cfg: RunConfig, pair: list[CallRecord]) -> list[tuple[ModelSpec, int]]:
    """(spec, tokens in) of the calls a full run would have made beyond the cascade's pair."""
    ran = {c.index for c in pair if c not in extra_candidates(cfg, pair)}
    out = [(p, 200) for i, p in enumerate(cfg.proposers) if i not in ran]
    out += [
        (p, 200 + 200 * len(cfg.proposers)) for _ in range(cfg.layers - 1) for p in cfg.proposers
    ]
    out.append((cfg.aggregator, 400 + 200 * len(cfg.proposers)))
    return out


def _upper_cost(calls: list[tuple[ModelSpec, int]]) -> tuple[float, list[str]]:
    usd, unknown = 0.0, []
    for spec, tokens_in in calls:
        cost = llm.cost_usd(spec.model, tokens_in, spec.max_tokens)
        if cost is None:
            unknown.append(spec.model)
        else:
            usd += cost
    return usd, unknown


# ---------------------------------------------------------------- the strategies


async def synthesize(runner: _Runner, candidates: Candidates) -> None:
    """Today's MoA: the aggregator writes the answer (its fallback if it fails)."""
    await runner.aggregate([c.text for _, c in candidates])


def _parse_check(
    parse: Callable[[str, int], Any], n: int, what: str
) -> Callable[[str], str | None]:
    """The engine's `check` for a ranking or selection reply: its failure reason, never a guess."""

    def check(text: str) -> str | None:
        try:
            parse(text, n)
        except prompts.ParseError as e:
            return f"unparseable {what}: {e}"
        return None

    return check


async def rank(runner: _Runner, candidates: Candidates) -> None:
    """Rankers rank the anonymised, shuffled candidates; the aggregator synthesises with the
    combined ranking (mean rank, Borda count, spread of ranks)."""
    record, n = runner.record, len(candidates)
    texts = [c.text for _, c in candidates]
    calls = [c for c in record.calls if c.role == "ranker"]
    shuffle = random.Random(record.run_id)  # the same run id shows the same orders
    orders = []
    for call in calls:
        order = list(range(n))  # shown number j+1 is candidate order[j]
        shuffle.shuffle(order)
        call.params["order"] = order
        orders.append(order)

    await _gather(
        *(
            runner.call(
                call,
                runner.with_history(
                    call, prompts.ranking_messages(runner.prompt, [texts[k] for k in order])
                ),
                check=_parse_check(prompts.parse_ranking, n, "ranking"),
            )
            for call, order in zip(calls, orders, strict=True)
        )
    )
    rankings = []  # per ranker that parsed: local candidate indexes, best first
    per_ranker = []
    for call, order in zip(calls, orders, strict=True):
        entry: dict[str, Any] = {"call": list(call.key), "label": call.label, "order": order}
        if call.status == "ok":
            shown = prompts.parse_ranking(call.text, n)
            entry["ranking"] = [candidates[order[j - 1]][0] for j in shown]
            rankings.append([order[j - 1] for j in shown])
        else:
            entry["ranking"], entry["error"] = None, call.error
        per_ranker.append(entry)
    rows = combine_rankings(rankings, n)
    note = None
    if rankings:
        # In the candidates' own numbers, as the aggregator sees them.
        note = prompts.ranking_note(
            "\n".join(
                f"- candidate {r['local'] + 1}: mean rank {r['mean_rank']:.2f}, Borda {r['borda']}"
                for r in rows
            )
        )
    for row in rows:
        pos, call = candidates[row.pop("local")]
        row.update(candidate=pos, label=call.label)
    _outcome(record)["ranking"] = {"rankers": per_ranker, "rows": rows, "n_parsed": len(rankings)}
    await runner.aggregate(texts, note=note)


def combine_rankings(rankings: list[list[int]], n: int) -> list[dict[str, Any]]:
    """Mean rank, Borda points (n-1 for first … 0 for last) and spread per candidate, best
    first. `rankings` hold local candidate indexes, best first; rows name them as `local`."""
    rows = []
    for k in range(n):
        ranks = [r.index(k) + 1 for r in rankings]
        rows.append(
            {
                "local": k,
                "ranks": ranks,
                "mean_rank": round(statistics.fmean(ranks), 3) if ranks else None,
                "borda": sum(n - x for x in ranks),
                "spread": (max(ranks) - min(ranks)) if ranks else None,
                "stdev": round(statistics.pstdev(ranks), 3) if ranks else None,
            }
        )
    rows.sort(key=lambda r: (r["mean_rank"] is None, r["mean_rank"] or 0, -r["borda"], r["local"]))
    return rows


async def select(runner: _Runner, candidates: Candidates) -> None:
    """The aggregator picks one candidate; the final answer is that candidate verbatim."""
    record, n = runner.record, len(candidates)
    texts = [c.text for _, c in candidates]
    layer = strategy_layer(runner.config)
    check = _parse_check(prompts.parse_selection, n, "selection")

    tried = []
    for idx, spec in enumerate(
        filter(None, (runner.config.aggregator, runner.config.fallback_aggregator))
    ):
        call = next((c for c in record.calls if c.key == (layer, "selector", idx)), None)
        if call is None:
            sel = _selector_spec(spec)
            call = CallRecord(layer, "selector", idx, sel.model, sel.display)
            runner.add_call(call, sel)
            runner.emit(CallQueued(record.run_id, call))
        messages = runner.with_history(call, prompts.selection_messages(runner.prompt, texts))
        await runner.call(call, messages, check=check)
        tried.append(call)
        if call.status == "ok":
            pick, reason = prompts.parse_selection(call.text, n)
            pos, chosen = candidates[pick - 1]
            _outcome(record)["selection"] = {
                "call": list(call.key),
                "candidate": pos,
                "label": chosen.label,
                "reason": reason,
            }
            _outcome(record)["final"] = list(chosen.key)
            record.status = "ok"
            return
    record.status = "failed"
    record.error = "; ".join(f"selector {c.label} {c.status}: {c.error}" for c in tried)


async def vote(runner: _Runner, candidates: Candidates) -> None:
    """Each candidate's short answer is a vote; a strict majority wins with no aggregator
    call, otherwise the aggregator selects."""
    record, n = runner.record, len(candidates)
    answers = [short_answer(c.text) for _, c in candidates]
    counts = Counter(a for a in answers if a is not None)
    top, votes = counts.most_common(1)[0] if counts else (None, 0)
    winner = top if votes * 2 > n else None
    _outcome(record)["vote"] = {
        "votes": [
            {"candidate": pos, "label": c.label, "answer": a}
            for (pos, c), a in zip(candidates, answers, strict=True)
        ],
        "tally": [{"answer": a, "votes": k} for a, k in counts.most_common()],
        "winner": winner,
        "majority_needed": n // 2 + 1,
    }
    if winner is not None:
        chosen = next(c for (_, c), a in zip(candidates, answers, strict=True) if a == winner)
        _outcome(record)["final"] = list(chosen.key)
        record.status = "ok"
        return
    await select(runner, candidates)


async def critique(runner: _Runner, candidates: Candidates) -> None:
    """Critic-Refiner on top of MoA: draft, then `critique_rounds` of critique and revision."""
    record, texts = runner.record, [c.text for _, c in candidates]
    draft = await runner.aggregate(texts)
    steps: list[dict[str, Any]] = [{"step": "draft", "call": list(draft.key)}]
    section: dict[str, Any] = {"steps": steps, "stopped": None}
    _outcome(record)["critique"] = section
    if draft.status != "ok":
        return  # aggregate() has failed the run with the reason
    current, layer = draft, strategy_layer(runner.config)
    system = runner.system_prompt  # the user's own instructions; no persona prompts
    for r in range(runner.config.critique_rounds):
        critic = next(c for c in record.calls if c.key == (layer, "critic", r))
        reviser = next(c for c in record.calls if c.key == (layer, "reviser", r))
        await runner.call(
            critic,
            runner.with_history(
                critic, prompts.critique_messages(runner.prompt, texts, current.text, system)
            ),
        )
        steps.append({"step": "critique", "call": list(critic.key)})
        if critic.status != "ok":
            section["stopped"] = f"round {r + 1}: critic {critic.status}: {critic.error}"
            break
        await runner.call(
            reviser,
            runner.with_history(
                reviser,
                prompts.revision_messages(runner.prompt, texts, current.text, critic.text, system),
            ),
        )
        steps.append({"step": "revision", "call": list(reviser.key)})
        if reviser.status != "ok":
            section["stopped"] = f"round {r + 1}: reviser {reviser.status}: {reviser.error}"
            break
        current = reviser
    for c in record.calls:
        if c.role in ("critic", "reviser") and c.status == "waiting":
            c.status, c.error = "cancelled", f"not run: {section['stopped']}"
            runner.emit(CallFailed(record.run_id, c))
    # The last good text is the answer: a failed critique round keeps the previous one.
    _outcome(record)["final"] = list(current.key)
    record.status = "ok"


STRATEGIES: dict[str, Callable[[_Runner, Candidates], Awaitable[None]]] = {
    "synthesize": synthesize,
    "rank": rank,
    "select": select,
    "vote": vote,
    "critique": critique,
}


def _outcome(record) -> dict[str, Any]:
    """The run's outcome dict, filled in place (a live view holds the same dict)."""
    if record.outcome is None:
        record.outcome = {}
    return record.outcome


async def _gather(*aws: Awaitable[Any]) -> None:
    import asyncio

    await asyncio.gather(*aws)


# ---------------------------------------------------------------- plain-text summary


def streams_final(config: RunConfig) -> bool:
    """Whether the aggregator's stream is the final answer (a terminal may print it live)."""
    return config.strategy in ("synthesize", "rank") and not config.cascade


def summary_lines(outcome: dict[str, Any] | None, labels: dict[int, str]) -> list[str]:
    """The outcome as plain text lines, one block per section (CLI and Markdown export).

    `labels` maps a candidate's position in proposer_calls to its label."""
    out: list[str] = []
    o = outcome or {}

    def name(pos: Any) -> str:
        return f"#{pos + 1} {labels.get(pos, '?')}" if isinstance(pos, int) else "?"

    if c := o.get("cascade"):
        verdict = "escalated to the panel" if c.get("escalated") else "answered without the panel"
        out.append(f"cascade: {verdict} ({c.get('reason')})")
        if c.get("escalated"):
            out.append(
                f"  added: {c.get('added_s')} s before the panel, "
                f"cost {_usd(c.get('added_cost_usd'))}"
            )
        else:
            out.append(f"  saved: {c.get('saved_calls')} calls, ≤ {_usd(c.get('saved_cost_usd'))}")
    if r := o.get("ranking"):
        out.append(f"ranking: {r.get('n_parsed')} of {len(r.get('rankers', []))} rankings parsed")
        out.append("  candidate | mean rank | Borda | spread | ranks")
        for row in r.get("rows", []):
            mean = "-" if row.get("mean_rank") is None else f"{row['mean_rank']:.2f}"
            out.append(
                f"  {name(row.get('candidate'))} | {mean} | {row.get('borda')} | "
                f"{row.get('spread') if row.get('spread') is not None else '-'} | "
                f"{', '.join(str(x) for x in row.get('ranks', []))}"
            )
        for rk in r.get("rankers", []):
            if rk.get("error"):
                out.append(f"  ranker {rk.get('label')}: {rk['error']}")
    if v := o.get("vote"):
        out.append(
            "vote: " + ", ".join(f"{t['answer']!r} × {t['votes']}" for t in v.get("tally", []))
        )
        for row in v.get("votes", []):
            out.append(f"  {name(row.get('candidate'))}: {row.get('answer')!r}")
        if v.get("winner") is not None:
            out.append(f"  majority: {v['winner']!r} (no aggregator called)")
        else:
            out.append(f"  no strict majority (needed {v.get('majority_needed')}): select")
    if s := o.get("selection"):
        out.append(f"selected: {name(s.get('candidate'))} — {s.get('reason') or '(no reason)'}")
    if c := o.get("critique"):
        out.append("critique: " + " → ".join(step["step"] for step in c.get("steps", [])))
        if c.get("stopped"):
            out.append(f"  stopped: {c['stopped']}")
    return out


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.6f}"
