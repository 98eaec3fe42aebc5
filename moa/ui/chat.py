"""A conversation on the page: its turns stacked, each drawn by the one run renderer.

The latest turn (or the one a `?run=` link names) is drawn whole: candidates, the highlighted
final answer and the charts. Older turns collapse to their highlighted final answer, with an
expander for their candidates (its content runs only when opened); their charts are drawn only
when asked. Buttons on each turn start a branch (edit a message, or continue from a turn). Past
the newest WIDGET_TURNS turns, older turns are folded together with a link each that opens the
turn whole, with its buttons: a 50-turn conversation opens as fast as a 6-turn one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from moa import conversation
from moa.conversation import Conversation
from moa.records import RunRecord
from moa.ui.render import (
    Kept,
    attribution_for,
    call_card,
    esc,
    fmt_s,
    prompt_box,
    prompt_html,
    render_run,
    run_chip,
)

WIDGET_TURNS = 5  # the newest turns drawn with their buttons; older ones are folded (see below)


@dataclass
class TurnActions:
    """What the buttons of a turn do; None hides the button (a read-only view, a live run)."""

    edit: Callable[[RunRecord], None] | None = None  # "Edit and re-run" its user message
    branch: Callable[[RunRecord], None] | None = None  # "Continue from here"
    retry: Callable[[RunRecord], None] | None = None  # "Retry" (the latest turn only)


def conversation_header_html(conv: Conversation) -> str:
    """The title, the number of turns, and where a branch came from (a link)."""
    n = len(conv.turns)
    bits = [
        f'<span class="moa-runname">{esc(conv.title)}</span>',
        esc(f"{n} turn{'s' if n != 1 else ''}"),
        f'<a href="?conversation={esc(conv.id)}" title="Link to this conversation">'
        f"conversation {esc(conv.id)}</a>",
    ]
    if conv.parent_id:
        bits.append(
            f'branched from <a href="?conversation={esc(conv.parent_id)}">'
            f"{esc(conv.parent_id)}</a> at turn {conv.branch_turn}"
        )
    head = '<span class="moa-sep">·</span>'.join(bits)
    return f'<div class="moa-convhead" data-conversation="{esc(conv.id)}">{head}</div>'


def turn_header_html(run: RunRecord, previous: RunRecord | None, shared: bool) -> str:
    """`Turn 2 · 14:03 · preset · mixture changed: …` above a turn."""
    bits = [f"<b>Turn {run.turn}</b>", esc(run.created_at[11:16] + " UTC"), esc(run.config.name)]
    if shared:
        bits.append("shared with the conversation it branched from")
    change = conversation.describe_change(previous.config, run.config) if previous else None
    line = '<span class="moa-sep">·</span>'.join(bits)
    if change:
        line += f'<div class="moa-turnchange">mixture changed: {esc(change)}</div>'
    return f'<div class="moa-turnhead" data-turn="{run.turn}" data-run="{esc(run.run_id)}">{line}</div>'


def collapsed_html(run: RunRecord) -> str:
    """An older turn folded to its final answer: a one-line header and the highlighted card."""
    agg = run.aggregator_call
    wall = fmt_s(run.wall_s) if run.wall_s is not None else "—"
    head = (
        f'<div class="moa-runhead moa-collapsed" data-run="{esc(run.run_id)}" '
        f'data-run-status="{esc(run.status)}">{run_chip(run.status)}'
        f'<span class="moa-sep">·</span>{esc(wall)}<span class="moa-sep">·</span>'
        f'<a href="?run={esc(run.run_id)}" title="Open this turn">run {esc(run.run_id)}</a></div>'
    )
    if agg is None:
        return head + (f'<div class="moa-alert">{esc(run.error)}</div>' if run.error else "")
    attr, ids = attribution_for(run)
    body, legend = None, ""
    if attr is not None and run.final_text:
        kept = Kept(run, attr, ids)
        body, legend = kept.final_html(run.final_text), kept.legend_html(hint=False)
    alert = f'<div class="moa-alert">{esc(run.error)}</div>' if run.error else ""
    return head + alert + call_card(agg, body=body, extra=legend)


def folded_turns_html(conv: Conversation, runs: list[RunRecord], previous: RunRecord | None) -> str:
    """Older turns as one block: each turn's header, message and folded final answer, and a link
    that opens the turn whole (candidates, charts, its Edit and Continue buttons)."""
    parts = []
    for run in runs:
        earlier = [r for r in conv.attempts(run.turn) if r is not run]
        attempts = ""
        if earlier:
            links = ", ".join(
                f'<a href="?run={esc(r.run_id)}">{esc(r.status)} run {esc(r.run_id)}</a>'
                for r in earlier
            )
            attempts = f'<div class="moa-turnchange">earlier attempt(s) at this turn: {links}</div>'
        parts.append(
            turn_header_html(run, previous, conv.shared(run))
            + attempts
            + f'<div class="moa-oldturn">{prompt_html(run)}{collapsed_html(run)}'
            f'<a class="moa-openturn" href="?run={esc(run.run_id)}">Open turn {run.turn}: '
            "candidates, charts, edit, continue from here</a></div>"
        )
        previous = run
    return "".join(parts)


def _button(label: str, key: str, action: Callable[[RunRecord], None], run: RunRecord, icon: str):
    st.button(label, key=key, on_click=action, args=(run,), icon=icon, type="tertiary")


def draw_turn(
    conv: Conversation,
    run: RunRecord,
    previous: RunRecord | None,
    *,
    expanded: bool,
    latest: bool,
    actions: TurnActions,
) -> None:
    """One turn: its header, the user's message, then the run (whole, or folded)."""
    st.html(turn_header_html(run, previous, conv.shared(run)))
    earlier = [r for r in conv.attempts(run.turn) if r is not run]
    if earlier:
        links = ", ".join(
            f'<a href="?run={esc(r.run_id)}">{esc(r.status)} run {esc(r.run_id)}</a>'
            for r in earlier
        )
        st.html(f'<div class="moa-turnchange">earlier attempt(s) at this turn: {links}</div>')
    with st.chat_message("user"):
        st.html(prompt_html(run))
        if actions.edit is not None:
            _button("Edit and re-run", f"edit-{run.run_id}", actions.edit, run, ":material/edit:")
    with st.chat_message("assistant"):
        if expanded:
            render_run(run, *attribution_for(run), show_prompt=False, key=run.run_id)
        else:
            st.html(collapsed_html(run))
            # Lazy: its content runs only while it is open (a closed expander's content would
            # still be drawn, hidden: 49 whole runs made a 50-turn conversation take ~40 s).
            more = st.expander(
                f"Turn {run.turn}: candidates and charts",
                key=f"more-{run.run_id}",
                on_change="rerun",
            )
            if more.open:
                with more:
                    charts = st.toggle("Show charts", key=f"charts-{run.run_id}")
                    render_run(
                        run,
                        *attribution_for(run),
                        show_prompt=False,
                        show_charts=charts,
                        key=f"old-{run.run_id}",
                    )
        # One row sized to its buttons (three columns cut "Continue from here" to "Continue
        # from h…" and cost the browser three more blocks per turn).
        row = st.container(horizontal=True, gap="small")
        if actions.branch is not None:
            with row:
                _button(
                    "Continue from here",
                    f"branch-{run.run_id}",
                    actions.branch,
                    run,
                    ":material/call_split:",
                )
        if latest and actions.retry is not None and not conv.shared(run):
            with row:
                _button("Retry", "retry_turn", actions.retry, run, ":material/refresh:")


def draw_conversation(
    conv: Conversation,
    *,
    focus: str | None = None,
    upto: int | None = None,
    actions: TurnActions | None = None,
    skip: str | None = None,
) -> None:
    """Every turn of `conv` (up to turn `upto`), newest attempt per position.

    `focus`: the run drawn whole (default: the latest turn); `skip`: a run drawn elsewhere (the
    one streaming below).
    """
    actions = actions or TurnActions()
    turns = [r for r in conv.turns if r.run_id != skip and (upto is None or r.turn <= upto)]
    if not turns:
        return
    latest = turns[-1]
    focus = focus or (latest.run_id if skip is None else None)
    # The newest turns and the focused one get their buttons and expander; older ones are folded
    # together into one element each run of them. Every Streamlit element costs the browser
    # ~5 ms on a quiet machine (~50 on a busy one): 50 turns of ~12 elements took 20+ s.
    widgets = {r.run_id for r in turns[-WIDGET_TURNS:]} | {focus}
    previous, folded = None, []
    for run in turns:
        if run.run_id not in widgets:
            folded.append(run)
            continue
        if folded:
            st.html(folded_turns_html(conv, folded, previous))
            previous, folded = folded[-1], []
        draw_turn(
            conv,
            run,
            previous,
            expanded=run.run_id == focus,
            latest=run is latest and skip is None,
            actions=actions,
        )
        previous = run
    if folded:
        st.html(folded_turns_html(conv, folded, previous))


def live_user_message(prompt: str, turn: int) -> None:
    """The user's message of the turn now running, above its live cards."""
    st.html(f'<div class="moa-turnhead" data-turn="{turn}"><b>Turn {turn}</b> · running</div>')
    with st.chat_message("user"):
        st.html(prompt_box(prompt))
