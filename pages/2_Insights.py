"""MoA Studio, the Insights page: which models carry the answers, how fast, at what cost."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict

import plotly.graph_objects as go
import streamlit as st

from moa import insights
from moa.store import StoreError
from moa.ui import history as H
from moa.ui.charts import _layout, esc
from moa.ui.nav import page_nav
from moa.ui.render import PALETTE, fmt_cost, inject_css, markdown_escape
from moa.ui.resources import PAGE_ICON, get_store

ALL = "All"


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 1)


def shares_chart(ins: insights.Insights) -> go.Figure:
    models = [m for m in ins.models if m.mean_share is not None]
    names = [esc(m.model) for m in models]
    fig = go.Figure(
        [
            go.Bar(
                name="mean share of final answer %", x=names, y=[pct(m.mean_share) for m in models]
            ),
            go.Bar(name="main-source rate %", x=names, y=[pct(m.main_source_rate) for m in models]),
        ]
    )
    return _layout(fig, 340, barmode="group", title="What each candidate model contributed")


def speed_chart(ins: insights.Insights) -> go.Figure:
    names = [esc(m.model) for m in ins.models]
    fig = go.Figure(
        [
            go.Bar(name=label, x=names, y=[getattr(m, attr) for m in ins.models])
            for label, attr in (
                ("latency p50 s", "latency_p50"),
                ("latency p95 s", "latency_p95"),
                ("TTFT p50 s", "ttft_p50"),
                ("TTFT p95 s", "ttft_p95"),
            )
        ]
    )
    return _layout(fig, 340, barmode="group", title="Latency and time to first token")


def daily_chart(ins: insights.Insights, field: str, title: str) -> go.Figure:
    per_model: dict[str, dict[str, float]] = defaultdict(dict)
    for d in ins.daily:
        value = d.tokens_in + d.tokens_out if field == "tokens" else d.cost_usd
        if value is not None:
            per_model[d.model][d.day] = value
    days = sorted({d.day for d in ins.daily})
    fig = go.Figure(
        [
            go.Bar(
                name=esc(model),
                x=[esc(day) for day in days],
                y=[values.get(day) for day in days],
                marker_color=colour(i),
            )
            for i, (model, values) in enumerate(sorted(per_model.items()))
        ]
    )
    fig.update_xaxes(type="category")  # days, not timestamps
    return _layout(fig, 340, barmode="stack", title=title)


def failures_chart(ins: insights.Insights) -> go.Figure:
    models = sorted(ins.failures)
    kinds = sorted({k for v in ins.failures.values() for k in v})
    fig = go.Figure(
        [
            go.Bar(
                name=esc(kind),
                x=[esc(m) for m in models],
                y=[ins.failures[m].get(kind, 0) for m in models],
                marker_color=colour(i),
            )
            for i, kind in enumerate(kinds)
        ]
    )
    return _layout(fig, 320, barmode="stack", title="Failures by model and error type")


def stats_rows(ins: insights.Insights) -> list[dict[str, object]]:
    rows = []
    for m in ins.models:
        row = asdict(m)
        row["cost_usd"] = fmt_cost(m.cost_usd)
        row["failure_rate"] = f"{100 * m.failure_rate:.1f}%"
        for k in ("mean_share", "main_source_rate"):
            row[k] = "—" if row[k] is None else f"{100 * row[k]:.1f}%"
        for k in ("latency_p50", "latency_p95", "ttft_p50", "ttft_p95"):
            row[k] = "—" if row[k] is None else f"{row[k]:.3f}"
        rows.append(row)
    return rows


def main() -> None:
    st.set_page_config(page_title="MoA Studio · Insights", page_icon=PAGE_ICON, layout="wide")
    inject_css()
    page_nav()
    st.title("Insights")
    try:
        store = get_store()
        presets = [
            r[0]
            for r in store.db.execute(
                "SELECT DISTINCT name FROM runs WHERE name IS NOT NULL AND name != '' ORDER BY name"
            ).fetchall()
        ]
    except StoreError as e:
        st.error(markdown_escape(str(e)))
        return
    c1, c2 = st.columns(2)
    days = c1.date_input("Date range", value=[], key="ins_dates")
    preset = c2.selectbox("Preset", [ALL, *presets], key="ins_preset")
    since, until = H.date_bounds(days)
    ins = insights.compute(store, since, until, None if preset == ALL else preset)
    if ins.runs == 0:
        st.info("No runs here yet. Run a mixture on the Run page, then come back for the charts.")
        return
    st.caption(f"{ins.runs:,} runs · {len(ins.models)} models")
    left, right = st.columns(2)
    with left:
        if any(m.mean_share is not None for m in ins.models):
            st.plotly_chart(shares_chart(ins), key="ins_shares")
        else:
            st.caption("No attribution data yet (no run with a final answer).")
    with right:
        st.plotly_chart(speed_chart(ins), key="ins_speed")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(daily_chart(ins, "tokens", "Tokens per day by model"), key="ins_tokens")
    with right:
        kind, why = insights.cost_state(ins.daily)
        if kind == "chart":
            st.plotly_chart(daily_chart(ins, "cost", "Cost per day by model (USD)"), key="ins_cost")
        else:
            st.info(why)
        unknown = sorted({(d.day, d.model) for d in ins.daily if d.cost_usd is None})
        if unknown:
            st.caption(
                markdown_escape(
                    "Cost unknown (no price for the model; not counted as $0): "
                    + ", ".join(f"{model} on {day}" for day, model in unknown)
                )
            )
    if ins.failures:
        st.plotly_chart(failures_chart(ins), key="ins_failures")
    else:
        st.caption("No failed calls in this range.")
    st.subheader("Per model")
    st.dataframe(stats_rows(ins), hide_index=True, width="stretch")
    panel_section(store, since, until, None if preset == ALL else preset)


def panel_section(store, since, until, preset) -> None:
    """Per aggregator model: unique points dropped, sides taken in contradictions."""
    from moa import panel_insights

    rows = panel_insights.compute(store, since, until, preset)
    st.subheader("Aggregators and the panel")
    if not rows:
        st.caption(
            "No run with a panel analysis in this range yet (a run gets one as it finishes)."
        )
        return
    st.dataframe(
        [
            {
                "aggregator": r.model,
                "runs": r.runs,
                "unique points": r.unique,
                "dropped": r.unique_dropped,
                "drop rate": None if r.drop_rate is None else round(r.drop_rate * 100, 1),
                "contradictions": r.contradictions,
                "sided with majority": r.took_majority,
                "sided with minority": r.took_minority,
                "tie": r.took_tie,
                "no clear side": r.took_neither,
            }
            for r in rows
        ],
        hide_index=True,
        width="stretch",
    )
    st.caption(
        "Unique point: only one proposer made it. Drop rate: the share of them the final answer "
        "left out. A side is the group of proposers that made one of two contradicting statements."
    )


main()
