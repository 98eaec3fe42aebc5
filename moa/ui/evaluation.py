"""The Evaluate page's parts without Streamlit: an evaluation in a background thread, the rows
of its tables, and its plotly charts (quality against cost and latency, per category)."""

from __future__ import annotations

import contextvars
import re
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from moa import evaluate as ev
from moa.palette import colour
from moa.questions import QuestionSet, load_file
from moa.ui.charts import _layout, esc
from moa.ui.render import fmt_cost

if TYPE_CHECKING:
    from moa.store import Store

KIND_NAMES = {"moa": "MoA", "single": "single model", "self-moa": "Self-MoA"}
KIND_SYMBOLS = {"moa": "star", "single": "circle", "self-moa": "diamond"}


class LiveEval:
    """One evaluation running in its own thread (a page rerun or Stop must not break it)."""

    def __init__(self, prepared: ev.Prepared) -> None:
        self.prepared = prepared
        self.eval_id: str | None = prepared.eval_id  # known at once when resuming
        self.cancel = ev.EvalCancel()
        self.done = threading.Event()
        self.progress: ev.Progress | None = None
        self.results: ev.EvalResults | None = None
        self.error: str | None = None  # the runner itself crashed (a bug, or the store refused)
        self._thread: threading.Thread | None = None

    def start(self, store: Store) -> LiveEval:
        def main() -> None:
            try:
                self.results = ev.run_evaluation_sync(
                    store, self.prepared, on_progress=self._on_progress, cancel=self.cancel
                )
                self.eval_id = self.results.eval_id
            except BaseException as e:
                self.error = f"{type(e).__name__}: {e}"
            finally:
                self.done.set()

        # The browser session's API keys (moa.ui.keys) live in a context variable: the thread
        # runs in a copy of the page's context, so its calls see them.
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(target=ctx.run, args=(main,), name="moa-eval", daemon=True)
        self._thread.start()
        return self

    def _on_progress(self, p: ev.Progress) -> None:
        self.eval_id = p.eval_id
        self.progress = p

    @property
    def running(self) -> bool:
        return not self.done.is_set()

    @property
    def fraction(self) -> float:
        p = self.progress
        if p is not None:
            return p.fraction
        total = self.prepared.total
        return self.prepared.done / total if total else 0.0

    def describe(self) -> str:
        if self.progress is not None:
            return self.progress.describe()
        first = "resuming" if self.prepared.done else "starting"
        return f"{first}: {self.prepared.done}/{self.prepared.total} items done; first answer soon"


# ---------------------------------------------------------------- inputs


def uploaded_questions(name: str, data: bytes) -> QuestionSet:
    """An uploaded .jsonl/.csv question file, read with the same checks as a file on disk."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name)[-80:] or "questions.jsonl"
    with tempfile.TemporaryDirectory(prefix="moa-questions-") as tmp:
        path = Path(tmp) / safe
        path.write_bytes(data)
        return load_file(path)


def split_models(text: str) -> list[str]:
    """`a/b, c/d@http://host/v1` → the model ids, blanks dropped (commas or new lines)."""
    return [t.strip() for t in re.split(r"[,\n]", text or "") if t.strip()]


# ---------------------------------------------------------------- tables


def fmt_score(value: float | None, kind: str) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if kind == "rating" else f"{100 * value:.0f}%"


SCORE_HEADINGS = {"accuracy": "accuracy", "rating": "rating (1–10)", "win_rate": "win rate vs base"}


def results_rows(results: ev.EvalResults) -> list[dict[str, object]]:
    """One row per contender: score with its 95% interval, head-to-head win rate, cost, speed."""
    wins = results.win_rates()
    rows = []
    for c in results.contenders:
        ci = (
            "—"
            if c.ci_low is None
            else f"{fmt_score(c.ci_low, c.score_kind)} – {fmt_score(c.ci_high, c.score_kind)}"
        )
        rows.append(
            {
                "contender": c.name,
                "kind": KIND_NAMES.get(c.kind, c.kind),
                "strategy": c.strategy or "—",
                SCORE_HEADINGS[c.score_kind]: fmt_score(c.score, c.score_kind),
                "95% CI": ci,
                "head-to-head win rate": fmt_score(wins.get(c.name), "accuracy"),
                "cost": fmt_cost(c.cost_usd) if c.n_ok or c.n_failed else "—",
                "cost / answer": fmt_cost(c.cost_per_answer),
                "mean latency (s)": None if c.latency_s is None else round(c.latency_s, 2),
                "tokens out": c.tokens_out,
                "answered": c.n_ok,
                "failed": c.n_failed,
                "unscored": c.n_unscored,
                "cascade escalated": (
                    "—" if c.escalation_rate is None else f"{c.escalation_rate:.0%}"
                ),
            }
        )
    return rows


def turn_rows(results: ev.EvalResults) -> list[dict[str, object]]:
    """Two-turn questions: per contender, the score on turn 1, on turn 2 and both together."""
    views = {"turn 1": results.for_turn(1), "turn 2": results.for_turn(2), "both turns": results}
    rows = []
    for c in results.contenders:
        row: dict[str, object] = {"contender": c.name}
        for label, view in views.items():
            r = next(x for x in view.contenders if x.name == c.name)
            ci = (
                ""
                if r.ci_low is None
                else f" ({fmt_score(r.ci_low, r.score_kind)}–{fmt_score(r.ci_high, r.score_kind)})"
            )
            row[label] = fmt_score(r.score, r.score_kind) + ci
            row[f"{label} scored"] = r.n_scored
        rows.append(row)
    return rows


def item_mark(item: ev.ItemResult | None, score_kind: str) -> str:
    if item is None or item.status == "running":
        return "…"
    if item.status == "failed":
        return "failed"
    if item.score is None:
        return "unscored" if item.status == "unscored" else "…"
    if score_kind == "accuracy":
        return "✓" if item.score >= 1 else "✗"
    if score_kind == "win_rate":
        return item.outcome or fmt_score(item.score, "accuracy")
    return f"{item.score:g}"


def question_rows(results: ev.EvalResults) -> list[dict[str, object]]:
    """One row per question, a column per contender: ✓/✗, a rating, or win/tie/loss."""
    kind = ev.SCORE_KINDS[results.scoring]
    rows = []
    for q in results.questions:
        row: dict[str, object] = {"id": q.id, "category": q.category, "prompt": _short(q.prompt)}
        for c in results.contenders:
            row[c.name] = item_mark(results.item(q.id, c.name), kind)
            if q.followup is not None and results.turn_items:  # both turns: "8 → 3"
                second = next(
                    (
                        i
                        for i in results.turn_items
                        if i.question_id == q.id and i.contender == c.name
                    ),
                    None,
                )
                row[c.name] = f"{row[c.name]} → {item_mark(second, kind)}"
        rows.append(row)
    return rows


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------- charts


def quality_chart(results: ev.EvalResults, x: str) -> go.Figure | None:
    """Quality (with its 95% interval) against cost per answer or mean latency; the Pareto front
    (no other contender is both better and cheaper/faster) joined by a line."""

    def xval(c: ev.ContenderResult) -> float | None:
        return c.cost_per_answer if x == "cost" else c.latency_s

    points = [c for c in results.contenders if c.score is not None and xval(c) is not None]
    if not points:
        return None
    kind = points[0].score_kind
    scale = 1 if kind == "rating" else 100
    fig = go.Figure()
    for i, c in enumerate(results.contenders):
        if c not in points:
            continue
        y = c.score * scale
        lo = None if c.ci_low is None else y - c.ci_low * scale
        hi = None if c.ci_high is None else c.ci_high * scale - y
        fig.add_trace(
            go.Scatter(
                x=[xval(c)],
                y=[y],
                mode="markers+text",
                name=esc(c.name),
                text=[esc(_short(c.name, 28))],
                textposition="top center",
                marker={"size": 14, "color": colour(i), "symbol": KIND_SYMBOLS.get(c.kind)},
                error_y=(
                    None
                    if lo is None
                    else {"type": "data", "array": [hi], "arrayminus": [lo], "thickness": 1}
                ),
                hovertemplate=(
                    f"{esc(c.name)} ({KIND_NAMES.get(c.kind, c.kind)})<br>"
                    f"score %{{y:.1f}}<br>{'cost/answer $%{x:.6f}' if x == 'cost' else 'latency %{x:.2f} s'}"
                    "<extra></extra>"
                ),
            )
        )
    front = results.pareto_front(x)
    if len(front) > 1:
        fig.add_trace(
            go.Scatter(
                x=[xval(c) for c in front],
                y=[c.score * scale for c in front],
                mode="lines",
                name="Pareto front",
                line={"color": "#94a3b8", "dash": "dash"},
                hoverinfo="skip",
            )
        )
    ylabel = {"accuracy": "accuracy %", "rating": "rating 1–10", "win_rate": "win rate %"}[kind]
    xlabel = "cost per answer (USD)" if x == "cost" else "mean latency per answer (s)"
    title = "Quality vs cost" if x == "cost" else "Quality vs latency"
    return _layout(
        fig,
        380,
        title=title,
        xaxis_title=xlabel,
        yaxis_title=ylabel,
        showlegend=False,
    )


def category_chart(results: ev.EvalResults) -> go.Figure | None:
    """Each contender's score per category, as grouped bars."""
    cats = results.by_category()
    if len(cats) < 2:
        return None
    kind = results.contenders[0].score_kind if results.contenders else "accuracy"
    scale = 1 if kind == "rating" else 100
    fig = go.Figure(
        [
            go.Bar(
                name=esc(c.name),
                x=[esc(cat) for cat in cats],
                y=[
                    None if cats[cat][i].score is None else cats[cat][i].score * scale
                    for cat in cats
                ],
                marker_color=colour(i),
            )
            for i, c in enumerate(results.contenders)
        ]
    )
    ylabel = {"accuracy": "accuracy %", "rating": "rating 1–10", "win_rate": "win rate %"}[kind]
    return _layout(
        fig, 340, barmode="group", title="By category", yaxis_title=ylabel, legend_title=""
    )
