"""Plotly charts of a run: kept shares, candidate agreement, a call timeline, tokens and cost."""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go

from moa.attribution import Attribution
from moa.records import CallRecord, RunRecord
from moa.ui.style import NOVEL_COLOUR, call_colour, fmt_cost, fmt_s, rgba


def esc(text: object) -> str:
    """Plotly text: with <, > and & escaped no tag (link, span) can form; plotly shows
    entities as the characters they stand for, except &quot;, so quotes stay as they are."""
    return html.escape("" if text is None else str(text), quote=False)


# Labels come from configs and are untrusted: every string handed to plotly is escaped (it reads
# a subset of HTML, links included, in its text). Colours are the renderer's.
_FONT = {"family": "Inter, system-ui, sans-serif", "size": 12, "color": "#334155"}


TITLE_TOP_PX = 78  # room above the plot: plotly's toolbar (≈30 px), the title, a legend row


def _layout(fig: go.Figure, height: int, **kwargs) -> go.Figure:
    top = 36
    title = kwargs.get("title")
    if isinstance(title, dict):
        # The title sits below the toolbar that plotly shows at the top right on hover (at
        # the top of the figure the toolbar covered it in half-width columns), and above the
        # row where a legend goes.
        kwargs["title"] = {
            "x": 0,
            "xref": "paper",
            "y": 1,
            "yref": "container",
            "yanchor": "top",
            "pad": {"t": 32},
            **title,
        }
        top = TITLE_TOP_PX
        height += TITLE_TOP_PX - 36
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": top, "b": 10},
        font=_FONT,
        plot_bgcolor="rgba(0,0,0,0)",
        paper_bgcolor="rgba(0,0,0,0)",
        hoverlabel={"font_size": 12},
        **kwargs,
    )
    return fig


LABEL_CHARS = 22  # axis labels are cut to this; the hover shows the whole name


def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def call_name(call: CallRecord, layers: int, *, full: bool = False) -> str:
    """A unique, escaped axis label (plotly merges equal category names)."""
    name = call.label or call.model
    name = esc(name if full else _short(name))
    if call.role == "aggregator":
        return f"{'Fallback' if call.index else 'Aggregator'} · {name}"
    if call.role != "proposer":  # a strategy's call: ranker, selector, critic, reviser, cascade
        return f"{call.role.capitalize()} {call.index + 1} · {name}"
    prefix = f"L{call.layer} · " if layers > 1 else ""
    return f"{prefix}#{call.index + 1} {name}"


def share_chart(
    record: RunRecord, attribution: Attribution, candidate_ids: Sequence[int]
) -> go.Figure:
    """Each candidate's share of the final answer's characters, and the aggregator's new words."""
    calls = [record.proposer_calls[pos] for pos in candidate_ids]
    names = [call_name(c, 1) for c in calls] + ["new (aggregator's own)"]
    full = [call_name(c, 1, full=True) for c in calls] + ["new: the aggregator's own words"]
    values = [*attribution.share, attribution.novel_share]
    colours = [call_colour(c) for c in calls] + [NOVEL_COLOUR]
    fig = go.Figure(
        go.Bar(
            x=values,
            y=names,
            orientation="h",
            marker={"color": colours, "line": {"width": 0}},
            text=[f"{v:.0%}" for v in values],
            textposition="outside",
            cliponaxis=False,
            customdata=full,
            hovertemplate="%{customdata}: %{x:.1%} of the final answer<extra></extra>",
        )
    )
    fig.update_xaxes(range=[0, max(1.0, max(values, default=0) * 1.15)], tickformat=".0%")
    fig.update_yaxes(autorange="reversed")
    return _layout(
        fig,
        80 + 38 * len(names),
        title={"text": "Share of the final answer kept from each candidate", "font_size": 14},
        showlegend=False,
    )


def agreement_heatmap(
    record: RunRecord, attribution: Attribution, candidate_ids: Sequence[int]
) -> go.Figure:
    """Pairwise agreement between the candidates the aggregator saw (1 on the diagonal)."""
    calls = [record.proposer_calls[pos] for pos in candidate_ids]
    # Tick labels carry the candidate's colour, so the heatmap reads like the columns above.
    names = [f'<span style="color:{call_colour(c)}">{call_name(c, 1)}</span>' for c in calls]
    full = [call_name(c, 1, full=True) for c in calls]
    z = attribution.agreement
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f'<span style="color:{call_colour(c)}">#{c.index + 1}</span>' for c in calls],
            y=names,
            zmin=0,
            zmax=1,
            colorscale=[[0, "#f8fafc"], [0.5, "#93c5fd"], [1, "#1d4ed8"]],
            text=heatmap_cells(z),
            texttemplate="%{text}",
            textfont={"size": 12 if len(calls) <= 4 else 10},
            customdata=[[f"{a} × {b}" for b in full] for a in full],
            hovertemplate="%{customdata}: %{z:.0%} shared phrasing<extra></extra>",
            colorbar={"tickformat": ".0%", "thickness": 10, "len": 0.9},
            xgap=2,
            ygap=2,
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(side="bottom")
    height = 110 + 46 * len(calls)
    title = "Agreement between candidates" + (" (%)" if len(calls) > PERCENT_SIGNS_UPTO else "")
    return _layout(fig, height, title={"text": title, "font_size": 14})


PERCENT_SIGNS_UPTO = 5  # more candidates: cells too narrow for "100%", the title says "(%)"


def heatmap_cells(z: Sequence[Sequence[float]]) -> list[list[str]]:
    """Cell texts: blank on the diagonal (a candidate agrees with itself), and without the
    "%" sign once cells get narrow, so every label fits its cell."""
    sign = "%" if len(z) <= PERCENT_SIGNS_UPTO else ""
    return [
        ["" if i == j else f"{round(100 * v)}{sign}" for j, v in enumerate(row)]
        for i, row in enumerate(z)
    ]


def timeline(record: RunRecord) -> go.Figure:
    """Per call: waiting for the first token (light), then streaming (solid), on one time axis."""
    layers = record.config.layers
    calls = [c for c in record.calls if c.start_s is not None and c.latency_s is not None]
    names = [call_name(c, layers) for c in calls]
    colours = [call_colour(c) for c in calls]
    wait = [c.ttft_s if c.ttft_s is not None else c.latency_s for c in calls]
    stream = [(c.latency_s - c.ttft_s) if c.ttft_s is not None else 0.0 for c in calls]
    full = [call_name(c, layers, full=True) for c in calls]
    hover = [
        f"{name}<br>started {fmt_s(c.start_s)} after the run began<br>"
        f"first token after {fmt_s(c.ttft_s)}<br>done after {fmt_s(c.latency_s)} "
        f"({esc(c.status)})"
        for name, c in zip(full, calls, strict=True)
    ]
    fig = go.Figure()
    fig.add_bar(
        name="waiting for the 1st token",
        y=names,
        x=wait,
        base=[c.start_s for c in calls],
        orientation="h",
        marker={
            "color": [rgba(col, 0.3) for col in colours],
            "line": {"color": colours, "width": 1},
        },
        customdata=hover,
        hovertemplate="%{customdata}<extra></extra>",
    )
    fig.add_bar(
        name="streaming",
        y=names,
        x=stream,
        base=[c.start_s + w for c, w in zip(calls, wait, strict=True)],
        orientation="h",
        marker={"color": colours},
        customdata=hover,
        hovertemplate="%{customdata}<extra></extra>",
    )
    for layer in sorted({c.layer for c in calls})[1:]:
        starts = [c.start_s for c in calls if c.layer == layer]
        fig.add_vline(x=min(starts), line={"color": "#cbd5e1", "dash": "dot", "width": 1})
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="seconds since the run started", rangemode="tozero")
    return _layout(
        fig,
        150 + 30 * max(1, len(calls)),
        barmode="overlay",
        title={"text": "Where the time went", "font_size": 14},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 1, "xanchor": "right"},
    )


def usage_chart(record: RunRecord) -> go.Figure | None:
    """Prompt and answer tokens per call, its cost written at the end of the bar ("unknown"
    where the price is unknown, never $0); None when no call reported tokens."""
    layers = record.config.layers
    calls = [c for c in record.calls if c.tokens_out is not None]
    if not calls:
        return None
    names = [call_name(c, layers) for c in calls]
    full = [call_name(c, layers, full=True) for c in calls]
    colours = [call_colour(c) for c in calls]
    fig = go.Figure()
    fig.add_bar(
        name="prompt tokens",
        y=names,
        x=[c.tokens_in or 0 for c in calls],
        orientation="h",
        marker={
            "color": [rgba(col, 0.3) for col in colours],
            "line": {"color": colours, "width": 1},
        },
        customdata=full,
        hovertemplate="%{customdata}: %{x:,} prompt tokens<extra></extra>",
    )
    fig.add_bar(
        name="answer tokens",
        y=names,
        x=[c.tokens_out or 0 for c in calls],
        orientation="h",
        marker={"color": colours},
        text=[f"  {fmt_cost(c.cost_usd)}" for c in calls],
        textposition="outside",
        cliponaxis=False,
        customdata=full,
        hovertemplate="%{customdata}: %{x:,} answer tokens<extra></extra>",
    )
    widest = max((c.tokens_in or 0) + c.tokens_out for c in calls)
    fig.update_xaxes(range=[0, widest * 1.3], title_text="tokens (cost at the end of each bar)")
    fig.update_yaxes(autorange="reversed")
    return _layout(
        fig,
        150 + 30 * len(calls),
        barmode="stack",
        title={"text": "Tokens and cost per call", "font_size": 14},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 1, "xanchor": "right"},
    )


def usage_table(record: RunRecord) -> list[dict[str, object]]:
    """One row per call for st.dataframe; unknown costs read "unknown", never $0."""
    rows = []
    for c in record.calls:
        rows.append(
            {
                "call": f"L{c.layer} #{c.index + 1}" if c.role == "proposer" else c.role,
                "label": c.label,
                "model": c.model,
                "status": c.status,
                "latency": fmt_s(c.latency_s),
                "first token": fmt_s(c.ttft_s),
                "tokens in": c.tokens_in,
                "tokens out": c.tokens_out,
                "tok/s": round(c.tokens_per_s, 1) if c.tokens_per_s else None,
                "cost": fmt_cost(c.cost_usd) if c.tokens_out is not None else "—",
            }
        )
    return rows
