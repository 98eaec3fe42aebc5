"""A run's strategy outcome as HTML: one renderer per kind of output (cascade decision, ranking
table, vote table, selection, critique steps), shared by the app (st.html) and the HTML report.

Everything from a model or a user is escaped here; styles are inline so the same markup works
inside Streamlit and in the standalone report (whose CSP allows inline styles only).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from moa.records import RunRecord

_TABLE = "border-collapse:collapse;font-size:.85rem;margin:.25rem 0 .5rem"
_CELL = "border:1px solid #e5e7eb;padding:3px 8px;text-align:left"
_BOX = (
    "border:1px solid #e5e7eb;border-radius:8px;padding:.6rem .8rem;margin:.4rem 0;"
    "background:#f8fafc"
)
_EXCERPT_CHARS = 400


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(head: list[str], rows: list[list[object]]) -> str:
    th = "".join(f'<th style="{_CELL}">{esc(h)}</th>' for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td style="{_CELL}">{esc(v)}</td>' for v in row) + "</tr>"
        for row in rows
    )
    return f'<table class="moa-outcome-table" style="{_TABLE}"><tr>{th}</tr>{body}</table>'


def _box(kind: str, title: str, inner: str) -> str:
    return (
        f'<div class="moa-outcome" data-outcome="{esc(kind)}" style="{_BOX}">'
        f"<b>{esc(title)}</b>{inner}</div>"
    )


def _candidate(record: RunRecord, pos: Any) -> str:
    calls = record.proposer_calls
    if isinstance(pos, int) and 0 <= pos < len(calls):
        return f"#{pos + 1} {calls[pos].label}"
    return "?"


def _call(record: RunRecord, key: Any):
    return next((c for c in record.calls if list(c.key) == list(key or [])), None)


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.6f}"


def cascade_html(record: RunRecord, c: dict[str, Any]) -> str:
    agreement = "-" if c.get("agreement") is None else f"{c['agreement']:.2f}"
    answers = " · ".join(str(a) if a is not None else "(none)" for a in c.get("answers", []))
    if c.get("escalated"):
        verdict = "Escalated: the full panel ran"
        money = (
            f"Added: {c.get('added_s', 0):.2f} s before the panel started, "
            f"cost {_usd(c.get('added_cost_usd'))}."
        )
    else:
        verdict = "Answered without the panel"
        money = (
            f"Saved: {c.get('saved_calls', 0)} calls, ≤ {_usd(c.get('saved_cost_usd'))} "
            "(upper bound: their max_tokens)"
        )
        if c.get("saved_s_estimate") is not None:
            money += (
                f", about {c['saved_s_estimate']:.1f} s (estimate: each skipped stage as long "
                "as the two answers took)"
            )
        money += "."

    return _box(
        "cascade",
        f"Cascade · {verdict}",
        f"<div>{esc(c.get('reason', ''))}</div>"
        f"<div>Short answers: {esc(answers)} · agreement {esc(agreement)} "
        f"(threshold {esc(c.get('threshold'))})</div><div>{esc(money)}</div>",
    )


def ranking_html(record: RunRecord, r: dict[str, Any]) -> str:
    rows = []
    for row in r.get("rows", []):
        mean = "-" if row.get("mean_rank") is None else f"{row['mean_rank']:.2f}"
        spread = "-" if row.get("spread") is None else row["spread"]
        ranks = ", ".join(str(x) for x in row.get("ranks", [])) or "-"
        rows.append(
            [_candidate(record, row.get("candidate")), mean, row.get("borda"), spread, ranks]
        )
    failed = "".join(
        f'<div class="moa-error">{esc(rk.get("label"))}: {esc(rk.get("error"))}</div>'
        for rk in r.get("rankers", [])
        if rk.get("error")
    )
    n = len(r.get("rankers", []))
    return _box(
        "ranking",
        f"Ranking · {r.get('n_parsed', 0)} of {n} rankings parsed",
        _table(["candidate", "mean rank", "Borda", "spread (controversy)", "ranks given"], rows)
        + failed,
    )


def vote_html(record: RunRecord, v: dict[str, Any]) -> str:
    rows = [
        [_candidate(record, x.get("candidate")), x.get("answer") or "(none)"]
        for x in v.get("votes", [])
    ]
    tally = " · ".join(f"{t['answer']} × {t['votes']}" for t in v.get("tally", []))
    if v.get("winner") is not None:
        verdict = f"Majority: {v['winner']} (no aggregator called)"
    else:
        verdict = f"No strict majority (needed {v.get('majority_needed')}): the aggregator selects"
    return _box(
        "vote",
        f"Vote · {verdict}",
        _table(["candidate", "short answer"], rows) + f"<div>Tally: {esc(tally)}</div>",
    )


def selection_html(record: RunRecord, s: dict[str, Any]) -> str:
    who = _call(record, s.get("call"))
    by = f" by {who.label}" if who is not None else ""
    return _box(
        "selection",
        f"Selected{by}: {_candidate(record, s.get('candidate'))} ✓",
        f"<div>{esc(s.get('reason') or '(no reason given)')}</div>"
        "<div>The final answer is this candidate verbatim.</div>",
    )


def critique_html(record: RunRecord, c: dict[str, Any]) -> str:
    names = {"draft": "Draft", "critique": "Critique", "revision": "Revision"}
    steps = []
    for step in c.get("steps", []):
        call = _call(record, step.get("call"))
        if call is None:
            continue
        text = call.text[:_EXCERPT_CHARS] + ("…" if len(call.text) > _EXCERPT_CHARS else "")
        steps.append(
            f'<div style="margin:.3rem 0"><b>{esc(names.get(step.get("step"), step.get("step")))}'
            f"</b> · {esc(call.label)} · {esc(call.status)}"
            f'<div style="white-space:pre-wrap;color:#374151">{esc(text or call.error or "")}</div>'
            "</div>"
        )
    stopped = (
        f'<div class="moa-error">Stopped: {esc(c["stopped"])}</div>' if c.get("stopped") else ""
    )
    arrow = " → ".join(names.get(s.get("step"), "?") for s in c.get("steps", []))
    return _box("critique", f"Critique · {arrow}", "".join(steps) + stopped)


# One renderer per section of `record.outcome`, in the order they happen in a run.
SECTIONS: dict[str, Callable[[RunRecord, dict[str, Any]], str]] = {
    "cascade": cascade_html,
    "ranking": ranking_html,
    "vote": vote_html,
    "selection": selection_html,
    "critique": critique_html,
}


def outcome_html(record: RunRecord) -> str:
    """Every section the run's outcome has, drawn by its renderer ("" when there is none)."""
    outcome = record.outcome or {}
    return "".join(
        fn(record, outcome[key])
        for key, fn in SECTIONS.items()
        if isinstance(outcome.get(key), dict)
    )


FINAL_BADGES = {
    "selection": "✓ selected: the final answer is this text verbatim",
    "vote": "✓ majority answer: the final answer is this text verbatim",
    "cascade": "✓ the cascade's answer: the panel did not run",
}


def final_badge(record: RunRecord) -> str:
    """For a final answer that is a candidate's own text: why (markup for its card)."""
    final = record.final_call
    if final is None or final.role in ("aggregator", "reviser") or not record.final_text:
        return ""
    outcome = record.outcome or {}
    why = next((FINAL_BADGES[k] for k in ("selection", "vote", "cascade") if k in outcome), "")
    return (
        f'<div class="moa-selected" style="font-weight:600;color:#047857;margin:.2rem 0">'
        f"{esc(why)}</div>"
        if why
        else ""
    )
