"""A self-contained HTML report of one run (or every turn of a conversation): highlights, shares, agreement, timeline, candidates.

It opens offline and runs no JavaScript at all: every piece of model text, prompt, label and
error is HTML-escaped, and a Content-Security-Policy forbids scripts as a second wall.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from moa import config as config_mod
from moa import strategy_html
from moa.palette import NOVEL, colour, tint
from moa.records import CallRecord, RunRecord

if TYPE_CHECKING:
    from moa.conversation import Conversation

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def esc(text: object) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def highlight(text: str, spans: list[tuple[int, int, str, str]]) -> str:
    """`text` escaped, with (start, end, css style, hover title) spans wrapped around its pieces."""
    out, pos = [], 0
    for start, end, style, title in sorted(spans):
        if start < pos:  # overlapping spans: keep the first
            continue
        out.append(esc(text[pos:start]))
        out.append(
            f'<span class="seg" style="{esc(style)}" title="{esc(title)}">{esc(text[start:end])}</span>'
        )
        pos = end
    out.append(esc(text[pos:]))
    return "".join(out)


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _fmt(value: float | None, unit: str = "s", digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f} {unit}".strip()


def _cost(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.6f}"


def final_answer_html(record: RunRecord, attr, ids: list[int]) -> str:
    """The final answer with each segment tinted by its main source; new segments underlined."""
    final = record.final_text
    if not final or attr is None:
        return esc(final or "")
    calls = record.proposer_calls
    spans = []
    for seg in attr.segments:
        s = seg.segment
        if seg.novel or not seg.sources:
            spans.append(
                (
                    s.start,
                    s.end,
                    f"border-bottom: 2px dashed {NOVEL}",
                    "new: the aggregator's own words",
                )
            )
            continue
        main = calls[ids[seg.sources[0].candidate]]
        parts = []
        for src in seg.sources:
            cand = calls[ids[src.candidate]]
            matched = attr.candidate_segments[src.candidate][src.segment_index].segment.text
            parts.append(f"from {cand.label} (score {src.score:.2f}): “{_short(matched)}”")
        spans.append((s.start, s.end, f"background: {tint(main.index)}", "\n".join(parts)))
    return highlight(final, spans)


def candidate_html(record: RunRecord, position: int, attr, ids: list[int]) -> str:
    """A candidate's text with kept segments tinted and dropped ones dimmed."""
    call = record.proposer_calls[position]
    if attr is None or position not in ids:
        return esc(call.text)
    local = ids.index(position)
    spans = []
    for cs in attr.candidate_segments[local]:
        s = cs.segment
        if cs.kept:
            spans.append(
                (s.start, s.end, f"background: {tint(call.index)}", f"kept (score {cs.score:.2f})")
            )
        else:
            spans.append((s.start, s.end, "opacity: 0.45", f"dropped (best match {cs.score:.2f})"))
    return highlight(call.text, spans)


def _chip(status: str) -> str:
    colours = {
        "ok": "#16a34a",
        "failed": "#dc2626",
        "timeout": "#d97706",
        "cancelled": "#6b7280",
        "interrupted": "#6b7280",
        "running": "#2563eb",
        "waiting": "#9ca3af",
    }
    return f'<span class="chip" style="background:{colours.get(status, "#6b7280")}">{esc(status)}</span>'


def _shares_html(record: RunRecord, attr, ids: list[int]) -> str:
    if attr is None:
        return ""
    calls = record.proposer_calls
    rows = []
    for local, pos in enumerate(ids):
        c = calls[pos]
        pct = attr.share[local] * 100
        rows.append(
            f'<div class="bar-row"><span class="bar-label">{esc(c.label)}</span>'
            f'<span class="bar" style="width:{pct:.1f}%;background:{colour(c.index)}"></span>'
            f'<span class="bar-value">{pct:.0f}%</span></div>'
        )
    pct = attr.novel_share * 100
    rows.append(
        f'<div class="bar-row"><span class="bar-label">new (aggregator)</span>'
        f'<span class="bar" style="width:{pct:.1f}%;background:{NOVEL}"></span>'
        f'<span class="bar-value">{pct:.0f}%</span></div>'
    )
    grid = ""
    if len(ids) > 1:
        head = "".join(f"<th>{esc(calls[p].label)}</th>" for p in ids)
        body = []
        for a, pa in enumerate(ids):
            cells = "".join(
                f'<td style="background:rgba(76,120,168,{attr.agreement[a][b]:.2f})">{attr.agreement[a][b]:.2f}</td>'
                for b in range(len(ids))
            )
            body.append(f"<tr><th>{esc(calls[pa].label)}</th>{cells}</tr>")
        grid = (
            "<h3>Agreement between candidates</h3>"
            f'<table class="grid"><tr><th></th>{head}</tr>{"".join(body)}</table>'
        )
    return f"<h2>What the aggregator kept</h2>{''.join(rows)}{grid}"


def _timeline_html(record: RunRecord) -> str:
    timed = [c for c in record.calls if c.start_s is not None and c.latency_s is not None]
    if not timed:
        return ""
    end = max(c.start_s + c.latency_s for c in timed) or 1.0
    rows = []
    for c in timed:
        left, width = c.start_s / end * 100, c.latency_s / end * 100
        wait = (c.ttft_s or c.latency_s) / end * 100
        name = f"L{c.layer} {c.label}"
        if c.role == "aggregator":
            name = f"fallback aggregator {c.label}" if c.index else "aggregator"
        elif c.role != "proposer":
            name = f"{c.role} {c.index + 1} {c.label}"
        col = (
            NOVEL if c.role in ("aggregator", "selector", "critic", "reviser") else colour(c.index)
        )
        rows.append(
            f'<div class="tl-row"><span class="bar-label">{esc(name)}</span><span class="tl-track">'
            f'<span class="tl-wait" style="left:{left:.2f}%;width:{wait:.2f}%"></span>'
            f'<span class="tl-gen" style="left:{left + wait:.2f}%;width:{max(width - wait, 0.3):.2f}%;background:{col}"></span>'
            f'</span><span class="bar-value">{_fmt(c.latency_s)}</span></div>'
        )
    return (
        "<h2>Where the time went</h2><p class='muted'>Light: waiting for the first token; dark: "
        f"streaming. Total {end:.2f} s.</p>{''.join(rows)}"
    )


def _candidate_card(record: RunRecord, position: int, call: CallRecord, attr, ids) -> str:
    meta = (
        f"{_fmt(call.latency_s)} · first token {_fmt(call.ttft_s)} · {call.tokens_out or 0} tokens · "
        f"{_cost(call.cost_usd)}"
    )
    error = f'<div class="error">{esc(call.error)}</div>' if call.error else ""
    return (
        f'<div class="card" style="border-top:4px solid {colour(call.index)}">'
        f"<div class='card-head'><b>{esc(call.label)}</b> {_chip(call.status)}</div>"
        f"<div class='muted'>{esc(call.model)} · layer {call.layer}</div>"
        f"<div class='muted'>{esc(meta)}</div>{error}"
        f"<div class='text'>{candidate_html(record, position, attr, ids)}</div></div>"
    )


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#111827;padding:0 1rem;line-height:1.5}
h1{font-size:1.5rem;margin-bottom:.25rem}h2{font-size:1.15rem;margin-top:2rem}
.muted{color:#6b7280;font-size:.85rem}.text{white-space:pre-wrap;margin-top:.5rem}
.box{border:1px solid #e5e7eb;border-radius:8px;padding:1rem;background:#fafafa}
.final{white-space:pre-wrap;font-size:1.02rem}.seg{border-radius:3px;padding:1px 0}
.chip{color:#fff;border-radius:999px;padding:1px 8px;font-size:.75rem;margin-left:.4rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1rem}
.card{border:1px solid #e5e7eb;border-radius:8px;padding:.75rem;background:#fff}
.error{color:#b91c1c;font-size:.85rem;margin-top:.25rem;white-space:pre-wrap}
.bar-row,.tl-row{display:flex;align-items:center;gap:.5rem;margin:.2rem 0}
.bar-label{width:14rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;font-size:.85rem}
.bar{height:14px;border-radius:3px;display:inline-block;min-width:2px}.bar-value{font-size:.8rem;color:#374151}
.tl-track{position:relative;flex:1;height:14px;background:#f3f4f6;border-radius:3px}
.tl-wait,.tl-gen{position:absolute;top:0;height:14px;border-radius:3px}.tl-wait{background:#d1d5db}
.grid{border-collapse:collapse;font-size:.8rem}.grid td,.grid th{border:1px solid #e5e7eb;padding:4px 8px}
.legend span{display:inline-block;margin-right:1rem;font-size:.85rem}
.swatch{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.3rem;vertical-align:middle}
pre{background:#f3f4f6;padding:.75rem;border-radius:6px;overflow:auto}
section.turn{border-top:3px solid #cbd5e1;margin-top:2rem;padding-top:.5rem}
h2.turn-title{font-size:1.3rem}
"""


def _document(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{STYLE}</style></head>
<body>
{body}
<p class="muted">Exported from MoA Studio.</p>
</body></html>
"""


def _strategy_section(record: RunRecord) -> str:
    """The strategy's own output (ranking, vote, selection, critique, cascade), if any."""
    markup = strategy_html.outcome_html(record)
    if not markup:
        return ""
    return f"<h2>Strategy: {esc(record.config.strategy_label)}</h2>{markup}"


def run_to_html(record: RunRecord, analysis=None, store=None) -> str:
    """One run as a self-contained page; with `store`, its highlights come from the cache."""
    title = _short(record.prompt, 80)
    body = _run_body(record, analysis, store)
    return _document(f"MoA run: {title}", f"<h1>{esc(title)}</h1>\n{body}")


def conversation_to_html(conv: Conversation, store=None) -> str:
    """Every run of a conversation, in order, each with its highlights: one self-contained page."""
    title = _short(conv.title, 80)
    head = f"<h1>{esc(title)}</h1>\n<div class='muted'>Conversation {esc(conv.id)} · {len(conv.turns)} turn(s)"
    if conv.parent_id:
        head += f" · branched from {esc(conv.parent_id)} at turn {conv.branch_turn}"
    head += "</div>"
    turns = "".join(
        f'<section class="turn"><h2 class="turn-title">Turn {run.turn}: {esc(_short(run.prompt, 80))}'
        f"</h2>\n{_run_body(run, store=store)}</section>"
        for run in conv.runs
    )
    return _document(f"MoA conversation: {title}", head + turns)


def _run_body(record: RunRecord, analysis=None, store=None) -> str:
    from moa import analysis as analysis_mod
    from moa import panel_view

    if analysis is None:
        analysis = analysis_mod.for_run(record, store)
    attr, ids = analysis.attribution, analysis.candidate_ids
    panel_section = ""
    if attr is not None:
        panel_section = (
            f"<h2>The panel</h2>{panel_view.matcher_line(analysis)}"
            f"{panel_view.panel_html(record, analysis)}"
        )
    usage = record.usage()
    calls = record.proposer_calls
    legend = "".join(
        f'<span><i class="swatch" style="background:{colour(c.index)}"></i>{esc(c.label)}</span>'
        for c in calls
        if c.layer == record.last_layer
    )
    legend += f'<span><i class="swatch" style="border-bottom:2px dashed {NOVEL}"></i>new</span>'
    agg = record.aggregator_call
    if record.final_text:
        final = f'<div class="box final">{final_answer_html(record, attr, ids)}</div>'
    else:
        final = f'<div class="box error">No final answer: {esc(agg.error if agg else record.error)}</div>'
    for failed in record.aggregator_calls:
        if failed is not agg:  # the fallback aggregator answered: say what happened first
            final = (
                f'<p class="muted">The aggregator {esc(failed.label)} ({esc(failed.model)}) '
                f"{esc(failed.status)}: {esc(failed.error)}. The fallback aggregator "
                f"{esc(agg.label)} ({esc(agg.model)}) wrote the final answer.</p>{final}"
            )
    error = f'<div class="error">{esc(record.error)}</div>' if record.error else ""
    parent = (
        f"<div class='muted'>Re-aggregation of run {esc(record.parent_run_id)} (its candidates were reused)</div>"
        if record.parent_run_id
        else ""
    )
    cards = "".join(_candidate_card(record, i, c, attr, ids) for i, c in enumerate(calls))
    return f"""<div class="muted">{esc(record.config.name)} · {len(record.config.proposers)} proposers × {record.config.layers}
layer(s) → {esc(record.config.aggregator.display)} · {esc(record.created_at)} · run {esc(record.run_id)}</div>
<div class="muted">{_chip(record.status)} wall {_fmt(record.wall_s)} · {usage["tokens_in"]} tokens in /
{usage["tokens_out"]} out · cost {_cost(usage["cost_usd"])}</div>{parent}{error}
<h2>Prompt</h2><div class="box text">{esc(record.prompt)}</div>
{_strategy_section(record)}
<h2>Final answer</h2><div class="legend">{legend}</div>{strategy_html.final_badge(record)}{final}
<p class="muted">Tinted sentences were kept from the candidate of that colour (hover for the match and
its score); dashed ones are new.</p>
{_shares_html(record, attr, ids)}
{panel_section}
<h2>Candidates</h2><div class="cards">{cards}</div>
{_timeline_html(record)}
<h2>Config</h2><pre>{esc(config_mod.dumps(record.config))}</pre>
"""
