"""Helpers of the History page that do not draw: table rows, word diffs, import, re-aggregation."""

from __future__ import annotations

import datetime as dt
import difflib
import html
import re
from dataclasses import replace

from moa import conversation, engine
from moa.conversation import Conversation
from moa.export import load_export
from moa.records import RunRecord
from moa.store import ConversationError, ConversationSummary, RunSummary, Store, StoreWriter
from moa.ui.render import fmt_cost

PAGE_SIZE = 50
COUNT_CAP = 10_000


def fmt_count(n: int, cap: int = COUNT_CAP) -> str:
    return f"{cap:,}+" if n > cap else f"{n:,}"


def date_bounds(value: object) -> tuple[str | None, str | None]:
    """A st.date_input range → (since, until) ISO strings; `until` is the day after the end."""
    days = [d for d in (value if isinstance(value, list | tuple) else [value]) if d]
    if not days:
        return None, None
    since = days[0].isoformat()
    end = days[1] if len(days) > 1 else days[0]
    return since, (end + dt.timedelta(days=1)).isoformat()


def _short(text: str | None, n: int = 90) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def table_rows(runs: list[RunSummary]) -> list[dict[str, object]]:
    """One dict per run; a dataframe shows them as text (never HTML)."""
    rows = []
    for r in runs:
        tokens = (
            None
            if r.tokens_in is None and r.tokens_out is None
            else ((r.tokens_in or 0) + (r.tokens_out or 0))
        )
        # The short columns first: at any width, status, time, tokens and cost are in view,
        # and the long texts take the rest.
        rows.append(
            {
                "time": (r.created_at or "")[:19].replace("T", " "),
                "status": r.status_text(),
                "wall s": "unknown" if r.wall_s is None else f"{r.wall_s:.2f}",
                "tokens": "unknown" if tokens is None else f"{tokens:,}",
                "cost": fmt_cost(r.cost_usd),
                "kind": KIND_MARKS[r.kind],
                "strategy": r.strategy or "synthesize",
                "prompt": _short(r.prompt),
                "proposers": r.proposers,
                "aggregator": r.aggregator,
                "id": r.id,
            }
        )
    return rows


def picked_row(selection: object) -> int | None:
    """The table row a click chose: a ticked row, else the row of a clicked cell."""
    rows = list(getattr(selection, "rows", None) or [])
    if rows:
        return int(rows[0])
    cells = list(getattr(selection, "cells", None) or [])
    if cells:
        return int(cells[0][0])
    return None


# How the table marks each kind of run (RunSummary.kind); a plain run is left blank.
KIND_MARKS = {"run": "", "re-aggregation": "↻ re-aggregation", "evaluation": "⚖ evaluation"}


def matches_text(total: int, page: int, pages: int) -> str:
    """ "1 run matches · page 1 of 1" / "12 runs match · …"."""
    runs = "1 run matches" if total == 1 else f"{fmt_count(total)} runs match"
    return f"{runs} · page {page} of {pages}"


def word_diff_html(base: str, other: str) -> str:
    """`other` against `base`, word by word: insertions green, deletions struck red (escaped)."""
    a, b = re.findall(r"\S+", base or ""), re.findall(r"\S+", other or "")
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(html.escape(" ".join(b[j1:j2])))
            continue
        if op in ("delete", "replace"):
            out.append(
                '<del style="background:#fee2e2;color:#991b1b">'
                + html.escape(" ".join(a[i1:i2]))
                + "</del>"
            )
        if op in ("insert", "replace"):
            out.append(
                '<ins style="background:#dcfce7;color:#166534;text-decoration:none">'
                + html.escape(" ".join(b[j1:j2]))
                + "</ins>"
            )
    return " ".join(out)


def conversation_rows(
    convs: list[ConversationSummary],
    latest: dict[str, RunSummary] | None = None,
    strategies: dict[str, str] | None = None,
) -> list[dict[str, object]]:
    """One dict per conversation, short columns first so they stay on screen; shown as text.

    With `latest` (Store.latest_turns), the status says what it would hide ("ok · 1 of 3
    failed", "ok · aggregated early") and the kind of the latest turn is marked.
    """
    latest = latest or {}
    rows = []
    for c in convs:
        tokens = (
            None
            if c.tokens_in is None and c.tokens_out is None
            else ((c.tokens_in or 0) + (c.tokens_out or 0))
        )
        last = latest.get(c.id)
        rows.append(
            {
                "status": last.status_text() if last is not None else (c.last_status or "—"),
                "turns": c.n_turns,
                "cost": fmt_cost(c.cost_usd),
                "tokens": "unknown" if tokens is None else f"{tokens:,}",
                "strategy": (strategies or {}).get(c.id, "synthesize"),
                "last activity": (c.updated_at or "")[:19].replace("T", " "),
                "kind": KIND_MARKS[last.kind] if last is not None else "",
                "title": _short(c.title),
                "models": c.models,
                "branch of": c.parent_id or "",
                "id": c.id,
            }
        )
    return rows


class ImportRefused(ValueError):
    """The file is valid but cannot be imported (its id is already in the log)."""


def import_json(store: Store, data: bytes | str) -> RunRecord | Conversation:
    """Parse an export (a run or a whole conversation) and save it, all or nothing;
    ImportError_ for a bad file, ImportRefused for an id already in the log."""
    found = load_export(data)
    if isinstance(found, Conversation):
        try:
            return store.import_conversation(found)
        except ConversationError as e:
            raise ImportRefused(f"{e}; nothing was imported") from None
    if store.get_run(found.run_id) is not None:
        raise ImportRefused(f"run {found.run_id} is already in the log; nothing was imported")
    store.save_run(found)
    return found


def reaggregate(
    store: Store,
    record: RunRecord,
    model: str,
    api_base: str | None,
    synthesis_prompt: str | None,
    strategy: str | None = None,
) -> RunRecord:
    """A new run reusing `record`'s candidates, only the (new) aggregator called; saved.

    The new run is a branch of `record`'s conversation that ends at it: it shares the turns
    before `record` and is sent them as history, as `record` was. Raises engine.InputError
    (before any call) when the inputs cannot work.
    """
    model = (model or "").strip()
    if not model:
        raise engine.InputError("type the litellm id of the aggregator model, e.g. openai/gpt-4o")
    old = record.config.aggregator
    api_base = (api_base or "").strip() or None
    spec = replace(
        old,
        model=model,
        api_base=api_base,
        label=old.label if model == old.model else None,
        api_key_env=old.api_key_env if api_base == old.api_base else None,
    )
    cfg = engine.reaggregate_config(record, spec, synthesis_prompt, strategy)
    conv = store.get_conversation(record.conversation_id) if record.conversation_id else None
    plan = None
    if conv is not None:
        plan = conversation.plan_branch(conv, record.turn, edit=True)
    history = plan.history if plan is not None else []
    engine.check(cfg, record.prompt, record.system_prompt, reuse=record, history=history)
    if plan is not None:
        store.create_conversation(
            plan.conversation_id, plan.title, plan.parent_id, plan.branch_turn
        )
    return engine.run_sync(
        cfg,
        record.prompt,
        system_prompt=record.system_prompt,
        reuse=record,
        checked=True,
        on_event=StoreWriter(store),
        history=history,
        conversation_id=plan.conversation_id if plan is not None else None,
        turn=plan.turn if plan is not None else 1,
    )


def compare_title(record: RunRecord) -> tuple[str, str]:
    """(title, subtitle) of a compare card: the prompt's start; the mixture and the time."""
    cfg = record.config
    n = len(record.config.proposers)
    agg = record.aggregator_call
    mixture = f"{cfg.name} · {n} proposer{'s' if n != 1 else ''} → {agg.label if agg else '—'}"
    if record.parent_run_id:
        mixture += " · re-aggregation"
    when = (record.created_at or "")[:19].replace("T", " ")
    return _short(record.prompt, 60), f"{mixture} · {when}"
