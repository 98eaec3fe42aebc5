"""The run renderer: a RunRecord drawn as one card per call, live (fed by events) or replayed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import streamlit as st

from moa import strategy_html
from moa.attribution import Attribution
from moa.records import CallRecord, RunRecord
from moa.ui.style import (  # noqa: F401  (re-exported: pages import these from the renderer)
    AGGREGATOR_COLOUR,
    NOVEL_COLOUR,
    PALETTE,
    call_colour,
    esc,
    fmt_cost,
    fmt_s,
    fmt_tokens,
    markdown_escape,
    proposer_colour,
    rgba,
)

# Every piece of model text, prompt, label, model id and error message is untrusted: it reaches
# the page only through esc() (html.escape with quotes) inside markup written here, and that
# markup goes through st.html, which Streamlit sanitises again with DOMPurify.

CARD_TEXT_LIMIT = 200  # characters of a matched counterpart shown in a hover
CallKey = tuple[int, str, int]
LIVE_TAIL_CHARS = 4000  # of a streaming answer, drawn while it streams (the card shows ~800)
# Of a finished answer, at most this much is drawn (as much as is attributed): the engine keeps
# up to 1,000,000 characters of an answer, and a megabyte card would freeze the browser.
RENDER_MAX_CHARS = 50_000


# Call status → (css class, chip text). "running" splits on whether a token has arrived.
_CHIPS = {
    "waiting": ("waiting", "waiting"),
    "started": ("started", "started"),
    "streaming": ("streaming", "streaming"),
    "retrying": ("retrying", "retrying"),
    "ok": ("ok", "done"),
    "failed": ("failed", "failed"),
    "timeout": ("timeout", "timed out"),
    "cancelled": ("cancelled", "cancelled"),
    "interrupted": ("interrupted", "interrupted"),
}
_RUN_CHIPS = {
    "running": ("streaming", "running"),
    "stopping": ("retrying", "stopping…"),
    "ok": ("ok", "done"),
    "failed": ("failed", "failed"),
    "cancelled": ("cancelled", "cancelled"),
    "interrupted": ("interrupted", "interrupted"),
}


def call_phase(call: CallRecord, retrying: bool = False) -> str:
    if call.status == "running":
        if retrying:
            return "retrying"
        return "streaming" if call.text else "started"
    return call.status


def chip(kind: str, text: str) -> str:
    return f'<span class="moa-chip moa-{esc(kind)}">{esc(text)}</span>'


def call_chip(call: CallRecord, retrying: bool = False) -> str:
    kind, text = _CHIPS.get(call_phase(call, retrying), ("waiting", call.status))
    return chip(kind, text)


def run_chip(status: str) -> str:
    kind, text = _RUN_CHIPS.get(status, ("waiting", status))
    return chip(kind, text)


# ---------------------------------------------------------------- CSS

CSS = """
<style>
.moa-grid{display:grid;gap:.6rem;align-items:start}
@media (max-width:1100px){.moa-grid{grid-template-columns:repeat(2,minmax(0,1fr))!important}}
@media (max-width:640px){.moa-grid{grid-template-columns:minmax(0,1fr)!important}}
.moa-card{background:#fff;border:1px solid #e2e8f0;border-top:4px solid var(--moa-c);
  border-radius:12px;padding:.7rem .85rem .6rem;box-shadow:0 1px 2px rgba(15,23,42,.05);
  min-width:0}
.moa-card.moa-final{border-top-width:1px;border-left:5px solid var(--moa-c);padding:.9rem 1.1rem}
.moa-head{display:flex;align-items:center;gap:.45rem;min-width:0}
.moa-dot{width:.7rem;height:.7rem;border-radius:50%;background:var(--moa-c);flex:none}
.moa-name{font-weight:650;font-size:.93rem;color:#0f172a;overflow:hidden;text-overflow:ellipsis;
  white-space:nowrap;flex:1 1 auto;min-width:0}
.moa-model{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.72rem;color:#64748b;
  margin:.1rem 0 .45rem;display:flex;gap:.3rem;min-width:0;white-space:nowrap}
.moa-mid{overflow:hidden;text-overflow:ellipsis;min-width:2rem;flex:0 1 auto}
.moa-params{flex:none}
.moa-sys{font-size:.72rem;color:#475569;margin:-.2rem 0 .4rem;white-space:nowrap;overflow:hidden;
  text-overflow:ellipsis;cursor:help}
.moa-syschip{display:inline-block;background:#eef2ff;color:#4338ca;border-radius:999px;
  padding:0 .45rem;font-weight:650;font-size:.66rem}
.moa-text{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.86rem;line-height:1.55;
  color:#1e293b;max-height:21rem;overflow-y:auto;padding-right:.2rem}
.moa-tail{display:flex;flex-direction:column-reverse}
.moa-final .moa-text{font-size:.97rem;max-height:none;line-height:1.65}
.moa-empty{color:#94a3b8;font-style:italic;font-size:.84rem}
.moa-metrics{display:flex;flex-wrap:wrap;gap:.25rem .4rem;margin-top:.55rem;padding-top:.45rem;
  border-top:1px dashed #e2e8f0}
.moa-m{font-size:.72rem;color:#475569;background:#f8fafc;border:1px solid #eef2f7;
  border-radius:6px;padding:0 .38rem;white-space:nowrap}
.moa-m b{font-weight:600;color:#0f172a}
.moa-m.moa-unknown b{color:#b45309}
.moa-error{margin-top:.45rem;background:#fef2f2;border:1px solid #fecaca;color:#991b1b;
  border-radius:8px;padding:.35rem .55rem;font-size:.78rem;white-space:pre-wrap;
  overflow-wrap:anywhere}
.moa-error.moa-quiet,.moa-alert.moa-quiet{background:#f8fafc;border-color:#e2e8f0;color:#475569}
.moa-note{margin-top:.45rem;background:#fffbeb;border:1px solid #fde68a;color:#92400e;
  border-radius:8px;padding:.3rem .55rem;font-size:.78rem;overflow-wrap:anywhere}
.moa-chip{display:inline-flex;align-items:center;gap:.3rem;flex:none;padding:.08rem .55rem;
  border-radius:999px;font-size:.7rem;font-weight:650;letter-spacing:.02em;white-space:nowrap}
.moa-chip::before{content:"";width:.45rem;height:.45rem;border-radius:50%;background:currentColor}
.moa-waiting{background:#f1f5f9;color:#64748b}
.moa-started{background:#e0f2fe;color:#0369a1}
.moa-streaming{background:#dbeafe;color:#1d4ed8}
.moa-streaming::before,.moa-started::before,.moa-retrying::before{animation:moa-pulse 1s infinite}
.moa-retrying{background:#fef3c7;color:#b45309}
.moa-ok{background:#dcfce7;color:#15803d}
.moa-failed{background:#fee2e2;color:#b91c1c}
.moa-timeout{background:#ffedd5;color:#c2410c}
.moa-cancelled{background:#e2e8f0;color:#475569}
.moa-interrupted{background:#ede9fe;color:#6d28d9}
@keyframes moa-pulse{0%,100%{opacity:1}50%{opacity:.25}}
.moa-runhead{display:flex;flex-wrap:wrap;align-items:center;gap:.35rem .6rem;padding:.55rem .8rem;
  background:#f8fafc;border:1px solid #e2e8f0;border-radius:12px;font-size:.85rem;color:#334155}
.moa-runhead .moa-runname{font-weight:650;color:#0f172a}
.moa-runhead .moa-sep{color:#cbd5e1}
.moa-runhead a{color:#2563eb;text-decoration:none;font-weight:600}
.moa-runhead a:hover{text-decoration:underline}
.moa-alert{margin-top:.4rem;background:#fef2f2;border:1px solid #fecaca;color:#991b1b;
  border-radius:10px;padding:.45rem .7rem;font-size:.84rem;white-space:pre-wrap;
  overflow-wrap:anywhere}
.moa-section{display:flex;align-items:baseline;gap:.5rem;margin:1rem 0 .2rem;font-size:.78rem;
  font-weight:700;letter-spacing:.08em;text-transform:uppercase;color:#475569}
.moa-section span{font-weight:500;letter-spacing:0;text-transform:none;color:#94a3b8}
.moa-prompt{background:#f8fafc;border:1px solid #e2e8f0;border-radius:10px;padding:.55rem .8rem;
  font-size:.88rem;white-space:pre-wrap;overflow-wrap:anywhere;color:#1e293b}
.moa-prompt small{display:block;font-size:.7rem;font-weight:700;letter-spacing:.06em;
  text-transform:uppercase;color:#94a3b8;margin-bottom:.15rem}
.moa-seg{border-radius:3px;box-decoration-break:clone;-webkit-box-decoration-break:clone;
  padding:0 1px;cursor:help}
.moa-new{border-bottom:2px dashed #64748b;background:rgba(100,116,139,.07)}
.moa-dropped{opacity:.42;cursor:help}
.moa-legend{display:flex;flex-wrap:wrap;gap:.3rem .9rem;align-items:center;font-size:.78rem;
  color:#334155;margin:0 0 .6rem;padding-bottom:.5rem;border-bottom:1px solid #f1f5f9}
.moa-legend b{font-weight:650}
.moa-legend .moa-key{display:inline-flex;align-items:center;gap:.35rem}
.moa-swatch{display:inline-block;width:1.6rem;height:.8rem;border-radius:3px}
.moa-swatch.moa-new{background:rgba(100,116,139,.07);border:1px dashed #64748b;border-radius:3px}
.moa-legend .moa-hint{color:#94a3b8;margin-left:auto}
.moa-nav-sep{border:none;border-top:1px solid #e2e8f0;margin:.3rem 0 0}
.moa-lock{font-size:.84rem;color:#334155}
.moa-lock-title{font-weight:700;color:#1d4ed8;margin:.4rem 0 .2rem}
.moa-lock-row{display:flex;align-items:center;gap:.45rem;padding:.28rem 0;min-width:0}
.moa-lock-row b{font-weight:600;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.moa-lock-row code{font-size:.7rem;color:#64748b;background:none;margin-left:auto;
  white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:50%}
.moa-lock-note{margin-top:.7rem;font-size:.76rem;color:#64748b}
.moa-welcome{border:1px dashed #cbd5e1;border-radius:14px;padding:1.1rem 1.3rem;color:#475569;
  background:linear-gradient(180deg,#f8fafc,#fff);font-size:.9rem;line-height:1.6}
.moa-welcome b{color:#0f172a}
.moa-convhead{display:flex;flex-wrap:wrap;gap:.35rem .6rem;font-size:.86rem;color:#334155;
  margin:.2rem 0 .4rem}
.moa-convhead .moa-runname{font-weight:700;color:#0f172a}
.moa-convhead .moa-sep,.moa-turnhead .moa-sep{color:#cbd5e1;margin:0 .3rem}
.moa-convhead a{color:#2563eb;text-decoration:none;font-weight:600}
.moa-turnhead{margin:1.1rem 0 .2rem;padding-top:.5rem;border-top:2px solid #e2e8f0;
  font-size:.8rem;color:#64748b}
.moa-turnhead b{color:#0f172a}
.moa-turnchange{font-size:.78rem;color:#b45309;margin:.15rem 0}
.moa-turnchange a{color:#2563eb}
.moa-runhead.moa-collapsed{padding:.3rem .7rem;margin-bottom:.4rem;font-size:.78rem}
.moa-oldturn{margin:.4rem 0 .6rem 2.6rem}
.moa-oldturn .moa-prompt{margin-bottom:.5rem}
.moa-openturn{display:inline-block;margin:.1rem 0 .2rem;font-size:.8rem;color:#2563eb;
  text-decoration:none}
.moa-history-note{color:#b45309}
</style>
"""


def inject_css() -> None:
    """Once per script run: style-only HTML goes to Streamlit's event container (no space)."""
    st.html(CSS)


# ---------------------------------------------------------------- HTML pieces


def text_html(text: str, limit: int = RENDER_MAX_CHARS) -> str:
    return esc(text[:limit])


def cut_text(total: int, limit: int = RENDER_MAX_CHARS) -> str:
    """Why a long text stops early on the page (empty when it is drawn whole)."""
    if total <= limit:
        return ""
    return (
        f"showing the first {limit:,} of {total:,} characters; the full text is in the JSON export"
    )


def cut_note(total: int, limit: int = RENDER_MAX_CHARS) -> str:
    """cut_text as a card note (empty when the text is drawn whole)."""
    text = cut_text(total, limit)
    return f'<div class="moa-note moa-cut">{text}</div>' if text else ""


def highlighted(
    text: str,
    spans: Iterable[tuple[int, int, str, str, str]],
    limit: int = RENDER_MAX_CHARS,
) -> str:
    """Escaped `text` (its first `limit` characters) with the (start, end, class, style, title)
    spans wrapped in <span>s."""
    text = text[:limit]
    out, pos = [], 0
    for start, end, cls, style, title in sorted(spans):
        end = min(end, limit)
        if start < pos or end <= start:  # overlapping or empty: keep the text, skip the markup
            continue
        out.append(esc(text[pos:start]))
        out.append(
            f'<span class="{esc(cls)}" style="{esc(style)}" title="{esc(title)}">'
            f"{esc(text[start:end])}</span>"
        )
        pos = end
    out.append(esc(text[pos:]))
    return "".join(out)


def _quote(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > CARD_TEXT_LIMIT:
        text = text[: CARD_TEXT_LIMIT - 1] + "…"
    return f"“{text}”"


def _tint(colour: str, underline: str | None = None) -> str:
    return (
        f"background:{rgba(colour, 0.2)};"
        f"box-shadow:inset 0 -2px 0 {rgba(underline or colour, 0.85)}"
    )


def _metric(label: str, value: str, cls: str = "") -> str:
    return f'<span class="moa-m {cls}">{esc(label)} <b>{esc(value)}</b></span>'


def call_metrics(call: CallRecord) -> str:
    parts: list[str] = []
    if call.latency_s is not None:
        parts.append(_metric("latency", fmt_s(call.latency_s)))
    if call.ttft_s is not None:
        parts.append(_metric("TTFT", fmt_s(call.ttft_s)))
    if call.tokens_out is not None:
        parts.append(_metric("tokens", f"{fmt_tokens(call.tokens_in)} → {call.tokens_out:,}"))
        tps = call.tokens_per_s
        if tps:
            parts.append(_metric("speed", f"{tps:.0f} tok/s"))
    finished = call.status not in ("waiting", "running")
    # A stream cut short has text but no usage: its cost is unknown, not $0 and not absent.
    if finished and (call.tokens_out is not None or call.text):
        cls = "moa-unknown" if call.cost_usd is None else ""
        parts.append(_metric("cost", fmt_cost(call.cost_usd), cls))
    if call.attempts > 1:
        parts.append(_metric("attempts", str(call.attempts)))
    return f'<div class="moa-metrics">{"".join(parts)}</div>' if parts else ""


def _model_line(call: CallRecord) -> str:
    """The model id (cut with an ellipsis if it must be) and its settings (never cut)."""
    model = call.model
    if call.role == "aggregator" and call.index > 0:
        model = f"fallback aggregator · {model}"
    bits = []
    temp = call.params.get("temperature")
    if temp is not None:
        bits.append(f"T {temp:g}")
    if call.params.get("max_tokens"):
        bits.append(f"max {call.params['max_tokens']:,} tok")
    params = f'<span class="moa-params">· {esc(" · ".join(bits))}</span>' if bits else ""
    return f'<span class="moa-mid">{esc(model)}</span>{params}'


def max_tokens_note(call: CallRecord) -> str:
    """A call that stopped at max_tokens: its answer is probably cut off mid-sentence."""
    cap = call.params.get("max_tokens")
    limit = f" ({cap:,})" if isinstance(cap, int) else ""
    return (
        f'<div class="moa-note moa-maxtok">Stopped at max_tokens{esc(limit)}: the answer is '
        "probably cut off. Raise max_tokens in this model's settings for a complete answer.</div>"
    )


def system_chip(call: CallRecord) -> str:
    """The model's own system prompt, if it had one: a chip, its text on hover (escaped)."""
    system = call.params.get("system_prompt")
    if not system or not str(system).strip():
        return ""
    text = str(system)
    if len(text) > 600:
        text = text[:599] + "…"
    return (
        f'<div class="moa-sys" title="{esc(text)}" data-system-prompt="1">'
        f'<span class="moa-syschip">system prompt</span> {esc(" ".join(text.split())[:80])}</div>'
    )


def call_card(
    call: CallRecord,
    *,
    body: str | None = None,
    note: str | None = None,
    extra: str = "",
    final: bool | None = None,
) -> str:
    """One call as a card: name, status chip, model, text (or `body` markup), metrics, error.

    `body` is already-escaped markup (the highlighted text); `note` is a transient message such
    as "retrying in 0.5 s: …" (untrusted, escaped here). `extra` is markup above the text.
    `final`: whether to style it as the final answer (default: the aggregator's calls).
    """
    if final is None:
        final = call.role == "aggregator"
    text_cls = "moa-text"
    if body is None:
        if call.text and call.status == "running":
            # While it streams, the card shows the tail and stays scrolled to the newest words
            # (column-reverse anchors the scroll at the bottom even as the card is redrawn),
            # and a long answer costs the browser the same per redraw as a short one.
            tail = call.text[-LIVE_TAIL_CHARS:]
            body = f"<div>{'…' if len(tail) < len(call.text) else ''}{text_html(tail)}</div>"
            text_cls += " moa-tail"
        elif call.text:
            body = text_html(call.text)
        elif call.status == "waiting":
            body = '<span class="moa-empty">waiting for its turn…</span>'
        elif call.status == "running":
            body = '<span class="moa-empty">waiting for the first token…</span>'
        else:
            body = '<span class="moa-empty">no text</span>'
    error = ""
    if call.error:
        quiet = " moa-quiet" if call.status == "cancelled" else ""
        error = f'<div class="moa-error{quiet}">{esc(call.error)}</div>'
    note_html = f'<div class="moa-note">{esc(note)}</div>' if note else ""
    if call.history_note:  # earlier conversation turns this model's window could not hold
        note_html += f'<div class="moa-note moa-history-note">{esc(call.history_note)}</div>'
    if call.status != "running":
        note_html += cut_note(len(call.text))
    if call.cut_at_max_tokens:
        note_html += max_tokens_note(call)
    name = call.label or call.model
    return (
        f'<div class="moa-card{" moa-final" if final else ""}" '
        f'style="--moa-c:{call_colour(call)}" data-call="{esc("-".join(map(str, call.key)))}" '
        f'data-status="{esc(call.status)}">'
        f'<div class="moa-head"><span class="moa-dot"></span>'
        f'<span class="moa-name" title="{esc(name)}">{esc(name)}</span>'
        f"{call_chip(call, retrying=bool(note))}</div>"
        f'<div class="moa-model" title="{esc(call.model)}">{_model_line(call)}</div>'
        f"{system_chip(call)}{extra}"
        f'<div class="{text_cls}">{body}</div>'
        f"{note_html}{error}{call_metrics(call)}</div>"
    )


def concurrency_text(calls: Sequence[CallRecord]) -> str:
    """How a layer's calls run: remote ones at once, local models sharing this CPU."""
    n = len(calls)
    local = sum(1 for c in calls if c.model.startswith("local/"))
    remote = n - local
    if local <= 1:
        return f"{n} answering in parallel" if n > 1 else "1 proposer"
    turns = "local models share the CPU"
    if remote == 0:
        return f"{n} proposers, {turns}"
    return f"{remote} answering in parallel; {local} {turns}"


def section(title: str, sub: str = "") -> str:
    return f'<div class="moa-section">{esc(title)}{f"<span>{esc(sub)}</span>" if sub else ""}</div>'


def run_link(run_id: str) -> str:
    return f"?run={esc(run_id)}"


def run_cost(record: RunRecord) -> str:
    """The run's cost: "unknown" if any call's price or usage is unknown, never a made-up $0."""
    usage = record.usage()
    if any(c.text and c.tokens_out is None for c in record.calls):
        return "unknown"  # a stream cut short reports no usage, but the provider still billed it
    if not any(c.tokens_out is not None for c in record.calls):
        return "—"  # nothing finished: nothing to price
    return fmt_cost(usage["cost_usd"])


def run_header(
    record: RunRecord, *, status: str | None = None, elapsed_s: float | None = None
) -> str:
    """Run status, shape, totals and the link to the stored run; the run's error below."""
    status = status or record.status
    cfg = record.config
    n = len(cfg.proposers)
    shape = (
        f"{n} proposer{'s' if n != 1 else ''} × {cfg.layers} layer{'s' if cfg.layers != 1 else ''}"
    )
    bits = [run_chip(status), f'<span class="moa-runname">{esc(cfg.name)}</span>', esc(shape)]
    wall = record.wall_s if record.wall_s is not None else elapsed_s
    if wall is not None:
        bits.append(esc(fmt_s(wall)))
    usage = record.usage()
    if usage["tokens_out"]:
        bits.append(esc(f"{usage['tokens_in']:,} tokens in · {usage['tokens_out']:,} out"))
    if status not in ("running", "stopping"):
        bits.append(esc(f"cost {run_cost(record)}"))
    if record.aggregated_early:
        bits.append(
            '<span class="moa-early" title="Aggregate now: the proposers still running were '
            'cancelled and the aggregator read the answers that had arrived">aggregated early</span>'
        )
    bits.append(
        f'<a href="{run_link(record.run_id)}" target="_blank" rel="noopener noreferrer" '
        f'title="Open the saved run">saved run {esc(record.run_id)} ↗</a>'
    )
    head = '<span class="moa-sep">·</span>'.join(bits)
    alert = ""
    if record.error:
        quiet = " moa-quiet" if record.status == "cancelled" else ""
        alert = f'<div class="moa-alert{quiet}">{esc(record.error)}</div>'
    return (
        f'<div class="moa-runhead" data-run="{esc(record.run_id)}" data-run-status="{esc(status)}">'
        f"{head}</div>{alert}"
    )


def prompt_box(text: str) -> str:
    return f'<div class="moa-prompt"><small>Prompt</small>{esc(text)}</div>'


def prompt_html(record: RunRecord) -> str:
    parts = [prompt_box(record.prompt)]
    if record.system_prompt:
        parts.append(
            f'<div class="moa-prompt" style="margin-top:.35rem"><small>System prompt</small>'
            f"{esc(record.system_prompt)}</div>"
        )
    return "".join(parts)


def layout_rows(n: int, per_row: int = 4) -> list[int]:
    """How many cards go in each row: at most `per_row`, rows as even as possible (7 → 4, 3)."""
    if n <= 0:
        return []
    rows = -(-n // per_row)
    width = -(-n // rows)
    return [min(width, n - i * width) for i in range(rows)]


# ---------------------------------------------------------------- attribution markup


class Kept:
    """Attribution mapped onto a record: who each local candidate is, and its markup."""

    def __init__(self, record: RunRecord, attribution: Attribution, candidate_ids: Sequence[int]):
        self.record, self.attr = record, attribution
        proposers = record.proposer_calls
        self.calls = [proposers[pos] for pos in candidate_ids]  # local index → call

    def colour(self, local: int) -> str:
        return call_colour(self.calls[local])

    def label(self, local: int) -> str:
        return self.calls[local].label or self.calls[local].model

    def final_html(self, text: str) -> str:
        spans = []
        for s in self.attr.segments:
            seg = s.segment
            if s.novel or not s.sources:
                title = (
                    "New: no candidate says this (the aggregator's own words)"
                    f" · best match score {s.score:.2f}"
                )
                near = s.closest
                if near is not None and near.candidate < len(self.calls):
                    # The name and score only: a long answer has hundreds of these titles.
                    title += f"\nClosest: {self.label(near.candidate)} ({near.score:.2f})"
                spans.append((seg.start, seg.end, "moa-seg moa-new", "", title))
                continue
            lines = []
            for src in s.sources:
                cand = self.attr.candidate_segments[src.candidate][src.segment_index]
                lines.append(
                    f"Kept from {self.label(src.candidate)} (score {src.score:.2f}):\n"
                    f"{_quote(cand.segment.text)}"
                )
            if s.merged:
                lines.insert(0, f"Merged from two sentences (together {s.score:.2f})")
            first = s.sources[0].candidate
            second = s.sources[1].candidate if len(s.sources) > 1 else first
            style = _tint(self.colour(first), self.colour(second))
            spans.append((seg.start, seg.end, "moa-seg", style, "\n\n".join(lines)))
        return highlighted(text, spans)

    def candidate_html(self, local: int) -> str:
        call = self.calls[local]
        colour = self.colour(local)
        spans = []
        for cs in self.attr.candidate_segments[local]:
            seg = cs.segment
            counterpart = cs.used_by[0] if cs.used_by else cs.match
            quoted = (
                _quote(self.attr.segments[counterpart].segment.text)
                if counterpart is not None
                else ""
            )
            if cs.kept:
                title = f"Kept in the final answer (score {cs.score:.2f}):\n{quoted}"
                spans.append((seg.start, seg.end, "moa-seg", _tint(colour), title))
            elif counterpart is not None and cs.score > 0:
                title = f"Dropped. Closest final sentence (score {cs.score:.2f}):\n{quoted}"
                spans.append((seg.start, seg.end, "moa-dropped", "", title))
            else:
                title = "Dropped: nothing like it in the final answer"
                spans.append((seg.start, seg.end, "moa-dropped", "", title))
        return highlighted(call.text, spans)

    def legend_html(self, *, hint: bool = True) -> str:
        """Each candidate's colour and share of the final answer, and the share of new text."""
        keys = []
        order = sorted(range(len(self.calls)), key=lambda i: self.calls[i].index)
        for local in order:
            share = self.attr.share[local] if local < len(self.attr.share) else 0.0
            keys.append(
                f'<span class="moa-key"><span class="moa-swatch" '
                f'style="{esc(_tint(self.colour(local)))}"></span>'
                f"<b>{esc(self.label(local))}</b> {share:.0%}</span>"
            )
        keys.append(
            '<span class="moa-key"><span class="moa-swatch moa-new"></span>'
            f"<b>new</b> {self.attr.novel_share:.0%}</span>"
        )
        matcher = getattr(self.attr, "matcher", "lexical")
        keys.append(f'<span class="moa-hint">{esc(matcher)} matcher</span>')
        if hint:
            keys.append('<span class="moa-hint">hover a sentence for its source and score</span>')
        return f'<div class="moa-legend">{"".join(keys)}</div>'


def attribution_for(record: RunRecord) -> tuple[Attribution | None, list[int]]:
    """(Attribution or None, candidate ids) of the run, from its cached analysis
    (moa.ui.panel.analysis_for: the store's copy for a stored run, else computed once)."""
    from moa.ui.panel import analysis_for

    found = analysis_for(record)
    return found.attribution, found.candidate_ids


# ---------------------------------------------------------------- the renderer

# Strategy calls by kind: the section each kind's cards go in, and whether it comes before
# the aggregator's section (rankers and selectors do; the critique rounds follow its draft).
STRATEGY_ROLES = {
    "cascade": "cascade",
    "ranker": "rank",
    "selector": "select",
    "critic": "critique",
    "reviser": "critique",
}
STRATEGY_GROUPS = {
    "cascade": ("Cascade", "two samples first; the panel runs only if they disagree", True),
    "rank": ("Rankers", "each ranks the anonymised candidates", True),
    "select": ("Selection", "the aggregator picks one candidate", True),
    "critique": ("Critique and revision", "critic · reviser, per round", False),
}


class _Group:
    """The cards of one layer (or the aggregator), drawn together as one CSS grid."""

    def __init__(self, keys: list[CallKey], per_row: int) -> None:
        self.slot = st.empty()
        self.keys, self.per_row = keys, per_row
        self.cards: dict[CallKey, str] = {}
        self.dirty = False

    def html(self) -> str:
        cards = "".join(self.cards.get(k, "") for k in self.keys)
        return (
            f'<div class="moa-grid" style="grid-template-columns:repeat({self.per_row},'
            f'minmax(0,1fr))">{cards}</div>'
        )


class RunView:
    """Placeholders for every call of a run, laid out by layer; the live view and the replay
    both draw through it, so a stored run looks exactly like it did while it streamed.

    A layer is one grid element (rows of at most 4 cards) rather than a Streamlit column per
    card: while 8 proposers stream, that is one message per redraw instead of eight.
    """

    def __init__(self, record: RunRecord, *, show_prompt: bool = True) -> None:
        self.header = st.empty()
        if show_prompt:
            st.html(prompt_html(record))
        self._groups: list[_Group] = []
        self._group_of: dict[CallKey, _Group] = {}
        self._aggregators: _Group | None = None
        self._kinds: dict[str, _Group] = {}
        self._layer_width = layout_rows(len(record.config.proposers))[0]  # a late layer's
        layers = sorted({c.layer for c in record.proposer_calls})
        for layer in layers:
            calls = [c for c in record.proposer_calls if c.layer == layer]
            if len(layers) == 1:
                st.html(section("Proposers", concurrency_text(calls)))
            else:
                sub = concurrency_text(calls) if layer == 1 else f"each reads layer {layer - 1}"
                st.html(section(f"Layer {layer} of {len(layers)}", sub))
            self._add_group(calls, layout_rows(len(calls))[0])
        self._strategy_groups(record, before_final=True)
        # The strategy's outcome (ranking, vote, selection, cascade…), drawn live as it fills.
        self._outcome = st.empty()
        self._outcome_html = ""
        aggs = record.aggregator_calls
        if aggs:
            final = record.aggregator_call
            who = "the fallback aggregator" if final.index > 0 else "the aggregator"
            if any(c.role == "reviser" for c in record.calls):
                st.html(section("Draft", f"written by {who}, {final.label}"))
            else:
                st.html(section("Final answer", f"written by {who}, {final.label}"))
            self._add_group(aggs, 1)
            self._aggregators = self._groups[-1]
        self._strategy_groups(record, before_final=False)

    def _strategy_groups(self, record: RunRecord, *, before_final: bool) -> None:
        """A section per kind of strategy call, where it happens in the run; a kind that only
        appears mid-run (a cascade that escalates, vote's selector) gets its section then."""
        for kind, (title, sub, first) in STRATEGY_GROUPS.items():
            calls = [c for c in record.calls if STRATEGY_ROLES.get(c.role) == kind]
            if calls and first == before_final:
                st.html(section(title, sub))
                self._add_group(calls, layout_rows(len(calls), 2 if kind == "critique" else 4)[0])
                self._kinds[kind] = self._groups[-1]

    def _add_group(self, calls: list[CallRecord], per_row: int) -> None:
        group = _Group([c.key for c in calls], per_row)
        self._groups.append(group)
        for call in calls:
            self._group_of[call.key] = group

    def draw_header(self, markup: str) -> None:
        self.header.html(markup)

    def draw_call(self, call: CallRecord, **card_kwargs) -> None:
        """Update one card; it reaches the page at the next flush()."""
        group = self._group_of.get(call.key)
        if group is None and call.role == "aggregator" and self._aggregators is not None:
            # The fallback aggregator exists only once the aggregator has failed: its card
            # goes below the failed one.
            group = self._group_of[call.key] = self._aggregators
            group.keys.append(call.key)
        if group is None:
            group = self._late_group(call)
        if group is not None:
            group.cards[call.key] = call_card(call, **card_kwargs)
            group.dirty = True

    def _late_group(self, call: CallRecord) -> _Group | None:
        """The group of a call planned after the page was laid out (cascade escalation, vote's
        selector): its layer's or kind's group, or a new section at the end."""
        for key, group in self._group_of.items():
            if key[0] == call.layer and key[1] == call.role == "proposer":
                group.keys.append(call.key)
                self._group_of[call.key] = group
                return group
        if call.role == "proposer":  # a later layer, planned when a cascade escalated
            st.html(section(f"Layer {call.layer}", "each reads the layer before"))
            self._add_group([call], self._layer_width)
            return self._groups[-1]
        if call.role == "aggregator" and self._aggregators is None:  # after a cascade
            st.html(section("Final answer", f"written by the aggregator, {call.label}"))
            self._add_group([call], 1)
            self._aggregators = self._groups[-1]
            return self._aggregators
        kind = STRATEGY_ROLES.get(call.role)
        if kind is None:
            return None
        if kind not in self._kinds:
            title, sub, _ = STRATEGY_GROUPS[kind]
            st.html(section(title, sub))
            self._add_group([], 4 if kind == "rank" else 2 if kind == "critique" else 1)
            self._kinds[kind] = self._groups[-1]
        group = self._kinds[kind]
        group.keys.append(call.key)
        self._group_of[call.key] = group
        return group

    def draw_outcome(self, record: RunRecord) -> None:
        """The strategy's outcome sections (strategy_html), redrawn only when they change."""
        try:
            markup = strategy_html.outcome_html(record)
        except RuntimeError:  # the engine thread changed it mid-read: next frame
            return
        if markup != self._outcome_html:
            self._outcome_html = markup
            if markup:
                self._outcome.html(markup)
            else:
                self._outcome.empty()

    def flush(self) -> None:
        for group in self._groups:
            if group.dirty:
                group.slot.html(group.html())
                group.dirty = False


def render_run(
    record: RunRecord,
    attribution: Attribution | None = None,
    candidate_ids: Sequence[int] | None = None,
    *,
    show_prompt: bool = True,
    show_charts: bool = True,
    show_panel: bool = True,
    key: str | None = None,
) -> RunView:
    """Draw a finished (or stored) run: cards per call, the highlighted final answer, charts.

    `attribution`/`candidate_ids` are what `attribution_for(record)` (the run's cached analysis)
    returns; without them the texts are shown plain. `key` prefixes
    the chart keys so one page can hold several runs. A page calls `inject_css()` once first.
    History page: `render_run(rec, *attribution_for(rec))` with `rec = store.get_run(run_id)`.
    """
    view = RunView(record, show_prompt=show_prompt)
    view.draw_header(run_header(record))
    kept = Kept(record, attribution, candidate_ids) if attribution is not None else None
    bodies: dict[tuple[int, str, int], str] = {}
    legend = ""
    if kept is not None:
        for local, call in enumerate(kept.calls):
            bodies[call.key] = kept.candidate_html(local)
        agg = record.aggregator_call
        if agg is not None and record.final_text:
            bodies[agg.key] = kept.final_html(record.final_text)
            legend = kept.legend_html()
        final = record.final_call
        if final is not None and final is not agg and final.role == "reviser" and record.final_text:
            bodies[final.key] = kept.final_html(record.final_text)
    final_call = record.final_call
    badge = strategy_html.final_badge(record)
    for call in record.calls:
        extra = (badge + legend) if call is final_call else ""
        final = (
            None if final_call is None or final_call.role == "aggregator" else call is final_call
        )
        view.draw_call(call, body=bodies.get(call.key), extra=extra, final=final)
    view.draw_outcome(record)
    view.flush()
    if record.final_text:
        with st.expander("Final answer as formatted Markdown"):
            # st.markdown without unsafe_allow_html: Streamlit itself drops raw HTML.
            st.markdown(record.final_text[:RENDER_MAX_CHARS])
            cut = cut_text(len(record.final_text))
            if cut:
                st.caption(cut)
    if attribution is not None and show_panel:
        from moa.ui.panel import analysis_for, render_panel

        render_panel(record, analysis_for(record))
    if show_charts:
        _charts(record, attribution, candidate_ids, key or record.run_id)
    return view


def _charts(
    record: RunRecord,
    attribution: Attribution | None,
    candidate_ids: Sequence[int] | None,
    key: str,
) -> None:
    """Two rows of two charts. Not st.tabs: once tabs have been on the page, the browser keeps
    scanning the DOM on every later update, which doubled the token latency of the next run."""
    from moa.ui import charts  # plotly is imported only once a run is there to chart

    config = {"displaylogo": False}
    attributed = attribution is not None and candidate_ids is not None
    st.html(section("What the aggregator kept", "share of the answer · agreement"))
    share_col, agree_col = st.columns(2, gap="medium")
    with share_col:
        if attributed:
            st.plotly_chart(
                charts.share_chart(record, attribution, candidate_ids),
                key=f"{key}-share",
                config=config,
            )
        else:
            st.caption("No final answer to attribute.")
    with agree_col:
        if attributed and len(candidate_ids) > 1:
            st.plotly_chart(
                charts.agreement_heatmap(record, attribution, candidate_ids),
                key=f"{key}-agreement",
                config=config,
            )
            st.caption(
                "Share of word pairs two candidates have in common (both ways, averaged): "
                "high agreement means the proposers converged."
            )
        elif attributed:
            st.caption("Agreement needs at least two candidates that answered.")
    st.html(section("Where the time and money went", "per call"))
    time_col, usage_col = st.columns(2, gap="medium")
    with time_col:
        st.plotly_chart(charts.timeline(record), key=f"{key}-timeline", config=config)
        st.caption(
            "Light: waiting for the first token · solid: streaming. Layer k+1 starts when "
            "layer k is done."
        )
    with usage_col:
        usage = charts.usage_chart(record)
        if usage is not None:
            st.plotly_chart(usage, key=f"{key}-usage", config=config)
        else:
            st.caption("No call reported its token counts (none finished).")
    with st.expander("Every call as a table"):
        st.dataframe(charts.usage_table(record), hide_index=True, width="stretch")
