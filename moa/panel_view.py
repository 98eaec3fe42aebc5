"""The panel analysis as escaped HTML, shared by the run view (st.html) and the HTML report."""

from __future__ import annotations

import html

from moa import embeddings, palette
from moa.analysis import RunAnalysis
from moa.panel import Point
from moa.records import RunRecord

TEXT_CHARS = 240  # of a point's text shown...
TITLE_CHARS = 1000  # ...and in its hover
MAX_ITEMS = 20  # per list: a runaway answer must not make a megabyte of markup


def esc(text: object) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _short(text: str, n: int = TEXT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def matcher_line(analysis: RunAnalysis) -> str:
    """Which matcher produced the highlights, and why, when it is not the semantic one."""
    attr = analysis.attribution
    if attr is None:
        return ""
    if attr.matcher == "semantic":
        text = f"Highlights by the semantic matcher (lexical + {embeddings.MODEL_ID} embeddings)."
    else:
        text = "Highlights by the lexical matcher (shared words and phrasing)."
    notice = f" {attr.notice}" if attr.notice else ""
    return (
        f'<div class="moa-matcher" style="font-size:.8rem;color:#475569">{esc(text + notice)}</div>'
    )


class _Names:
    def __init__(self, record: RunRecord, analysis: RunAnalysis) -> None:
        calls = record.proposer_calls
        self.calls = [calls[pos] for pos in analysis.candidate_ids]

    def chip(self, local: int) -> str:
        call = self.calls[local]
        colour = palette.colour(call.index)
        return (
            f'<span style="border:1px solid {colour};color:{colour};border-radius:999px;'
            f'padding:0 6px;font-size:.75rem;margin-right:3px">{esc(call.label or call.model)}</span>'
        )


def _badge(kept: bool, dropped_text: str = "dropped") -> str:
    if kept:
        return '<span style="color:#15803d;font-size:.75rem;font-weight:600">kept</span>'
    return (
        f'<span style="color:#b45309;font-size:.75rem;font-weight:600">{esc(dropped_text)}</span>'
    )


def _point(p: Point, names: _Names, dropped_text: str = "dropped") -> str:
    chips = "".join(names.chip(c) for c in p.candidates)
    return (
        f'<li style="margin:.25rem 0"><span title="{esc(p.text[:TITLE_CHARS])}">'
        f"{esc(_short(p.text))}</span> "
        f"{chips}{_badge(p.kept, dropped_text)}</li>"
    )


def _more(total: int) -> str:
    if total <= MAX_ITEMS:
        return ""
    return f'<li style="color:#64748b;font-size:.8rem">… and {total - MAX_ITEMS:,} more (all in run --json)</li>'


def summary_text(analysis: RunAnalysis) -> str:
    """One line: diversity and counts (History's compare cards)."""
    panel = analysis.panel
    if panel is None:
        return ""
    parts = [] if panel.diversity is None else [f"diversity {panel.diversity:.2f}"]
    parts += [
        f"{len(panel.consensus)} consensus",
        f"{len(panel.unique)} unique ({len(panel.dropped_unique)} dropped)",
        f"{len(panel.contradictions)} contradiction(s)",
    ]
    return "panel: " + " · ".join(parts)


def panel_html(record: RunRecord, analysis: RunAnalysis) -> str:
    """Consensus, unique points (dropped first), contradictions and diversity, as HTML."""
    panel = analysis.panel
    if panel is None or analysis.attribution is None:
        return ""
    names = _Names(record, analysis)
    parts = [
        f'<div style="font-size:.85rem;color:#334155">{esc(summary_text(analysis))} '
        "(diversity: 1 − the mean share of points two proposers share)</div>"
    ]
    if analysis.warning:
        parts.append(
            f'<div style="color:#b45309;font-size:.85rem;margin:.3rem 0">⚠ {esc(analysis.warning)}</div>'
        )
    if panel.contradictions:
        items = []
        for c in panel.contradictions[:MAX_ITEMS]:
            sides = []
            for k, side in enumerate(c.sides):
                chips = "".join(names.chip(i) for i in side["candidates"])
                took = " ← the final answer took this side" if c.final_side == k else ""
                sides.append(
                    f'<div style="margin-left:.5rem">{chips}'
                    f'<span title="{esc(side["text"][:TITLE_CHARS])}">'
                    f'{esc(_short(side["text"]))}</span><b style="font-size:.75rem">{esc(took)}</b></div>'
                )
            if c.final_side is None:
                verdict = (
                    "the final answer mentions it but takes no clear side"
                    if c.kept
                    else "the final answer says nothing about it"
                )
                sides.append(f'<div style="font-size:.75rem;color:#64748b">{esc(verdict)}</div>')
            items.append(
                f'<li style="margin:.35rem 0"><span style="font-size:.75rem;color:#b91c1c">'
                f"differ in a {esc(c.kind)}</span>{''.join(sides)}</li>"
            )
        parts.append(
            f"<h4 style='margin:.6rem 0 .2rem'>Contradictions</h4><ul>{''.join(items)}</ul>"
        )
    if panel.unique:
        ordered = sorted(panel.unique, key=lambda p: p.kept)  # dropped first: the ones to check
        items = "".join(_point(p, names, "dropped — worth a look") for p in ordered[:MAX_ITEMS])
        items += _more(len(ordered))
        parts.append(f"<h4 style='margin:.6rem 0 .2rem'>Unique points</h4><ul>{items}</ul>")
    if panel.consensus:
        items = "".join(_point(p, names) for p in panel.consensus[:MAX_ITEMS])
        items += _more(len(panel.consensus))
        parts.append(f"<h4 style='margin:.6rem 0 .2rem'>Consensus</h4><ul>{items}</ul>")
    return f'<div class="moa-panel">{"".join(parts)}</div>'
