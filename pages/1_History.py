"""MoA Studio, the History page: search conversations, open one, export, delete, re-aggregate a
turn, compare conversations turn by turn."""

from __future__ import annotations

import hashlib
import json
import math
import re

import streamlit as st

from moa import engine
from moa.config import STRATEGIES
from moa.conversation import Conversation
from moa.export import (
    ImportError_,
    conversation_to_json,
    conversation_to_markdown,
    run_to_json,
    run_to_markdown,
)
from moa.records import RUN_STATUSES, RunRecord
from moa.report import conversation_to_html, run_to_html
from moa.store import RUN_KINDS, ConversationError, Store, StoreError
from moa.ui import history as H
from moa.ui import state as K
from moa.ui.chat import conversation_header_html, draw_conversation
from moa.ui.keys import activate as activate_session_keys
from moa.ui.nav import page_nav
from moa.ui.render import (
    Kept,
    attribution_for,
    esc,
    fmt_cost,
    fmt_s,
    inject_css,
    markdown_escape,
)
from moa.ui.resources import PAGE_ICON, copy_secrets_to_env, get_store

RUN_ID = re.compile(r"[0-9a-f]{12,40}")
CONVERSATION_ID = re.compile(r"c[0-9a-f]{12,40}")
ALL = "All"
CONFIRM = "hist_confirm_delete"
CONFIRM_CONV = "hist_confirm_delete_conversation"
REAGGREGATE = "hist_reaggregate_request"  # (run id, model, api_base, prompt) from the form
MESSAGE = "hist_message"
LAST_PICK = "hist_last_pick"
LAST_TABLE_PICK = "hist_last_table_pick"


def open_run(run_id: str | None) -> None:
    """Open one turn (inside its conversation); None closes what is open."""
    st.query_params.pop("conversation", None)
    if run_id:
        st.query_params["run"] = run_id
    else:
        st.query_params.pop("run", None)
    st.session_state.pop(CONFIRM, None)
    st.session_state.pop(CONFIRM_CONV, None)


def open_conversation(cid: str) -> None:
    st.query_params.pop("run", None)
    st.query_params["conversation"] = cid
    st.session_state.pop(CONFIRM, None)
    st.session_state.pop(CONFIRM_CONV, None)


def filters(store: Store) -> dict:
    c1, c2, c3, c5, c6, c4 = st.columns([3, 2, 1.3, 1.5, 1.5, 2])
    query = c1.text_input("Search", key="hist_search", placeholder="words of a prompt or answer")
    model = c2.selectbox("Model", [ALL, *store.models()], key="hist_model")
    status = c3.selectbox("Status", [ALL, *RUN_STATUSES], key="hist_status")
    kind = c5.selectbox(
        "Kind",
        [ALL, *RUN_KINDS],
        key="hist_kind",
        format_func=lambda k: {"run": "runs", "re-aggregation": "re-aggregations"}.get(
            k, "evaluation runs" if k == "evaluation" else k
        ),
    )
    strategy = c6.selectbox("Strategy", [ALL, *store.strategies()], key="hist_strategy")
    days = c4.date_input("Date range", value=[], key="hist_dates")
    since, until = H.date_bounds(days)
    return {
        "query": query or "",
        "model": None if model == ALL else model,
        "status": None if status == ALL else status,
        "kind": None if kind == ALL else kind,
        "strategy": None if strategy == ALL else strategy,
        "since": since,
        "until": until,
    }


def table(store: Store, f: dict) -> list:
    query = f.pop("query")
    total = store.count_conversations(query, cap=H.COUNT_CAP, **f)
    pages = max(1, math.ceil(min(total, H.COUNT_CAP) / H.PAGE_SIZE))
    left, right = st.columns([1, 4], vertical_alignment="bottom")
    if st.session_state.get("hist_page", 1) > pages:  # the filters shrank the result
        st.session_state["hist_page"] = pages
    page = left.number_input("Page", min_value=1, max_value=pages, key="hist_page")
    noun = "conversation matches" if total == 1 else "conversations match"
    right.caption(f"{H.fmt_count(total)} {noun} · page {page} of {pages}")
    convs = store.search_conversations(
        query, limit=H.PAGE_SIZE, offset=(page - 1) * H.PAGE_SIZE, **f
    )
    if not convs:
        st.info("No conversations match. Run a mixture on the Run page, or loosen the filters.")
        return convs
    event = st.dataframe(
        H.conversation_rows(
            convs,
            store.latest_turns([c.id for c in convs]),
            store.latest_strategies([c.id for c in convs]),
        ),
        # Keyed by the rows shown: a selection never carries over to other rows.
        key="hist_table_" + hashlib.sha1("".join(c.id for c in convs).encode()).hexdigest()[:12],
        on_select="rerun",
        # A click on any cell opens its conversation, as the checkbox does (H.picked_row).
        selection_mode=["single-row", "single-cell"],
        hide_index=True,
        width="stretch",
        column_config={"id": None},
    )
    row = H.picked_row(getattr(event, "selection", None))
    picked = convs[row].id if row is not None and row < len(convs) else None
    if picked and picked != st.session_state.get(LAST_TABLE_PICK):
        st.session_state[LAST_TABLE_PICK] = picked
        open_conversation(picked)
    labels = {
        c.id: f"{(c.updated_at or '')[:19].replace('T', ' ')} · {H._short(c.title, 60)}"
        for c in convs
    }
    pick = st.selectbox(
        "Open a conversation",
        ["", *labels],
        format_func=lambda cid: labels.get(cid, "—"),
        key="hist_open",
    )
    if pick and pick != st.session_state.get(LAST_PICK):
        st.session_state[LAST_PICK] = pick
        open_conversation(pick)
    return convs


def compare(store: Store, convs: list) -> None:
    labels = {
        c.id: f"{(c.updated_at or '')[:19].replace('T', ' ')} · {H._short(c.title, 40)}"
        for c in convs
    }
    ids = st.multiselect(
        "Compare 2–4 conversations of this page, turn by turn",
        list(labels),
        format_func=lambda cid: labels.get(cid, cid),
        max_selections=4,
        key="hist_compare",
    )
    if len(ids) < 2:
        st.caption("Pick two to four conversations to see their final answers side by side.")
        return
    found = [c for c in (store.get_conversation(i) for i in ids) if c is not None]
    if len(found) < 2:
        st.warning("Some of these conversations are gone from the log.")
        return
    n_turns = max(len(c.turns) for c in found)
    for t in range(n_turns):
        st.html(f'<div class="moa-turnhead" data-turn="{t + 1}"><b>Turn {t + 1}</b></div>')
        records = [c.turns[t] if t < len(c.turns) else None for c in found]
        base = next((r.final_text or "" for r in records if r is not None), "")
        first = next((r for r in records if r is not None), None)
        for col, rec in zip(st.columns(len(records)), records, strict=True):
            if rec is None:
                col.caption("(no such turn)")
                continue
            col.html(_compare_card(rec, base, rec is first))
    st.caption(
        "Under each turn: each candidate's share of its final answer and the share of new text. "
        "Columns after the first show their differences from the first column's answer."
    )


def panel_summary(rec: RunRecord) -> str:
    from moa.panel_view import summary_text
    from moa.ui.panel import analysis_for

    return summary_text(analysis_for(rec)) if rec.final_text else ""


def _compare_card(rec: RunRecord, base: str, first: bool) -> str:
    usage = rec.usage()
    tokens = usage["tokens_in"] + usage["tokens_out"]
    body = (
        esc(rec.final_text or "(no final answer)")
        if first
        else H.word_diff_html(base, rec.final_text or "")
    )
    attr, ids = attribution_for(rec)
    shares = Kept(rec, attr, ids).legend_html(hint=False) if attr is not None else ""
    shares += f'<div style="color:#64748b;font-size:.8rem">{esc(panel_summary(rec))}</div>'
    title, sub = H.compare_title(rec)  # the run: its prompt; preset, mixture and time
    return (
        '<div class="moa-compare" style="border:1px solid #e2e8f0;border-radius:10px;'
        'padding:.7rem .8rem">'
        f'<div style="font-weight:650" title="{esc(rec.prompt[:500])}">{esc(title)}</div>'
        f'<div style="color:#64748b;font-size:.8rem">{esc(sub)} · {esc(rec.run_id)}</div>'
        f'<div style="font-size:.85rem;margin:.3rem 0">cost {esc(fmt_cost(usage["cost_usd"]))} · '
        f"latency {esc(fmt_s(rec.wall_s))} · tokens {tokens:,}</div>{shares}"
        f'<div style="white-space:pre-wrap;font-size:.9rem;margin-top:.4rem">{body}</div></div>'
    )


def to_run_page(record: RunRecord, *, run: bool) -> None:
    """Open the Run page with this run's config and prompt in the form (and run it)."""
    st.session_state[K.PENDING] = {
        "config": record.config,
        "prompt": record.prompt,
        "system": record.system_prompt,
        "run": run,
    }
    # query_params={} gives the Run page a clean address: it shows what is in its form, not
    # this page's ?run= (and a reload lands on the same thing).
    st.switch_page("app.py", query_params={})


def actions(store: Store, record: RunRecord) -> None:
    rid = record.run_id
    r1, r2, _ = st.columns([1, 1, 2])
    if r1.button(
        "Re-run",
        key="hist_rerun",
        icon=":material/replay:",
        help="Run the same prompt with the same config again, on the Run page (a new run).",
    ):
        to_run_page(record, run=True)
    if r2.button(
        "Open in the Run page",
        key="hist_open_config",
        icon=":material/tune:",
        help="Put this run's config and prompt in the Run page's form, to change and run.",
    ):
        to_run_page(record, run=False)
    c1, c2, c3, c4 = st.columns(4)
    c1.download_button(
        "Markdown",
        run_to_markdown(record, store=store),  # highlights from the run's cached analysis
        f"moa-{rid}.md",
        "text/markdown",
        key="dl_md",
        on_click="ignore",
    )
    c2.download_button(
        "JSON",
        json.dumps(run_to_json(record, store=store), indent=2, ensure_ascii=False),
        f"moa-{rid}.json",
        "application/json",
        key="dl_json",
        on_click="ignore",
    )
    c3.download_button(
        "HTML report",
        run_to_html(record, store=store),
        f"moa-{rid}.html",
        "text/html",
        key="dl_html",
        on_click="ignore",
    )
    if c4.button("Delete", key="hist_delete", icon=":material/delete:"):
        st.session_state[CONFIRM] = rid
    if st.session_state.get(CONFIRM) == rid:
        st.warning("Delete this run and all its calls from the log? This cannot be undone.")
        y, n, _ = st.columns([1, 1, 4])
        y.button(
            "Yes, delete", key="hist_delete_yes", type="primary", on_click=_delete_run, args=(rid,)
        )
        n.button("Cancel", key="hist_delete_no", on_click=_cancel_confirm)

    with st.expander("Re-aggregate with another aggregator, synthesis prompt or strategy"):
        st.caption(
            "Reuses this run's candidates and calls only the aggregator; the result is a new run."
        )
        with st.form("hist_reagg", border=False):
            agg = record.config.aggregator
            # Read by the submit button's callback, from session state.
            st.text_input("Aggregator model (litellm id)", agg.model, key=f"re_model_{rid}")
            st.text_input("api_base (optional)", agg.api_base or "", key=f"re_base_{rid}")
            st.text_area(
                "Synthesis prompt (empty: the default)",
                record.config.aggregator_prompt or "",
                key=f"re_prompt_{rid}",
            )
            st.selectbox(
                "Strategy",
                STRATEGIES,
                index=STRATEGIES.index(record.config.strategy),
                key=f"re_strategy_{rid}",
                help="Re-combine the same candidates another way: rank, select, vote, critique.",
            )
            st.form_submit_button(
                "Re-aggregate",
                type="primary",
                key="re_go",
                on_click=_request_reaggregation,
                args=(rid,),
            )


# Every action that changes what is open does its work in a callback (or, for a slow call, at
# the top of the next script run) and sets the address there, never right before st.rerun():
# Streamlit can leave the browser's address bar behind when a rerun follows a change of
# st.query_params (streamlit issue #7961), and a reload then landed on the old run.


def _message(kind: str, text: str) -> None:
    st.session_state[MESSAGE] = (kind, text)


def _cancel_confirm() -> None:
    st.session_state.pop(CONFIRM, None)
    st.session_state.pop(CONFIRM_CONV, None)


def _delete_run(rid: str) -> None:
    try:
        get_store().delete_run(rid)
    except StoreError as e:  # e.g. a read-only database: nothing was deleted
        _message("error", str(e))
        _cancel_confirm()
        return
    _message("success", f"Run {rid} was deleted.")
    open_run(None)


def _delete_conversation(cid: str) -> None:
    try:
        get_store().delete_conversation(cid)
    except (StoreError, ConversationError) as e:
        _message("error", str(e))
        _cancel_confirm()
        return
    _message("success", f"Conversation {cid} was deleted.")
    open_run(None)


def _rename(cid: str) -> None:
    try:
        get_store().rename_conversation(cid, st.session_state.get(f"hist_title_{cid}") or "")
    except (StoreError, ConversationError) as e:
        _message("error", str(e))
    else:
        _message("success", "Renamed.")


def _request_reaggregation(rid: str) -> None:
    ss = st.session_state
    ss[REAGGREGATE] = (
        rid,
        ss.get(f"re_model_{rid}") or "",
        ss.get(f"re_base_{rid}") or "",
        ss.get(f"re_prompt_{rid}") or "",
        ss.get(f"re_strategy_{rid}"),
    )


def run_requested_reaggregation(store: Store) -> None:
    """A Re-aggregate click: call the aggregator (with a spinner), then open the new run."""
    request = st.session_state.pop(REAGGREGATE, None)
    if request is None:
        return
    rid, model, api_base, prompt, strategy = request
    record = store.get_run(rid)
    if record is None:
        st.error(markdown_escape(f"no run with id '{rid}'"))
        return
    try:
        store.check_writable()  # before any call: a read-only log cannot keep the result
        with st.spinner("Calling the aggregator…"):
            new = H.reaggregate(store, record, model, api_base, prompt, strategy)
    except (engine.InputError, StoreError) as e:
        st.error(markdown_escape(str(e)))
    except Exception as e:
        st.error(markdown_escape(f"re-aggregation failed: {type(e).__name__}: {e}"))
    else:
        st.success(markdown_escape(f"New run {new.run_id} ({new.status})."))
        open_run(new.run_id)  # no rerun follows: this script run draws it, below


def conversation_actions(store: Store, conv: Conversation) -> None:
    """Rename, continue on the Run page, export the whole conversation, delete it."""
    cid = conv.id
    # The exports are made when their button is clicked (a callable): making all three on every
    # redraw computed every turn's attribution again, seconds for a long conversation.
    c1, c2, c3, c4, c5 = st.columns(5)
    if c1.button("Continue on the Run page", key="hist_continue", icon=":material/chat:"):
        st.session_state[K.CONVERSATION] = cid
        st.session_state[K.BRANCH_FROM] = st.session_state[K.EDITING] = None
        st.switch_page("app.py", query_params={"conversation": cid})
    c2.download_button(
        "Conversation Markdown",
        lambda: conversation_to_markdown(conv, store),
        f"moa-{cid}.md",
        "text/markdown",
        key="dl_conv_md",
        on_click="ignore",
    )
    c3.download_button(
        "Conversation JSON",
        lambda: json.dumps(conversation_to_json(conv, store), indent=2, ensure_ascii=False),
        f"moa-{cid}.json",
        "application/json",
        key="dl_conv_json",
        on_click="ignore",
    )
    c4.download_button(
        "Conversation HTML",
        lambda: conversation_to_html(conv, store),
        f"moa-{cid}.html",
        "text/html",
        key="dl_conv_html",
        on_click="ignore",
    )
    if c5.button("Delete conversation", key="hist_delete_conv", icon=":material/delete:"):
        st.session_state[CONFIRM_CONV] = cid
    if st.session_state.get(CONFIRM_CONV) == cid:
        own = sum(1 for r in conv.runs if not conv.shared(r))
        st.warning(
            f"Delete this conversation and its {own} run(s) from the log? This cannot be undone."
        )
        y, n, _ = st.columns([1, 1, 4])
        y.button(
            "Yes, delete",
            key="hist_delete_conv_yes",
            type="primary",
            on_click=_delete_conversation,
            args=(cid,),
        )
        n.button("Cancel", key="hist_delete_conv_no", on_click=_cancel_confirm)
    with st.form("hist_rename", border=False):
        r1, r2 = st.columns([4, 1], vertical_alignment="bottom")
        r1.text_input("Title", conv.title, key=f"hist_title_{cid}")
        r2.form_submit_button("Rename", key="hist_rename_go", on_click=_rename, args=(cid,))


def show_open(store: Store, cid: str, focus: str | None) -> None:
    """A whole conversation, with the actions of one of its turns (`focus`, or the latest)."""
    st.divider()
    conv = store.get_conversation(cid) if CONVERSATION_ID.fullmatch(cid) else None
    if conv is None or not conv.runs:
        st.error(markdown_escape(f"no conversation with id '{cid[:64]}'"))
        return
    st.html(conversation_header_html(conv))
    branches = store.branches(cid)
    if branches:
        links = " · ".join(
            f'<a href="?conversation={esc(b.id)}">{esc(H._short(b.title, 40))}</a> '
            f"(from turn {b.branch_turn})"
            for b in branches
        )
        st.html(f'<div class="moa-turnchange">branches: {links}</div>')
    conversation_actions(store, conv)
    turns = conv.turns
    ids = [r.run_id for r in turns]
    if focus not in ids:
        attempt = next((r for r in conv.runs if r.run_id == focus), None)
        focus = focus if attempt is not None else ids[-1]
        if attempt is not None:
            ids.append(focus)  # an earlier, retried attempt opened by its link
    by_id = {r.run_id: r for r in conv.runs}
    labels = {rid: f"Turn {by_id[rid].turn} · {H._short(by_id[rid].prompt, 60)}" for rid in ids}
    picked = st.selectbox(
        "Turn", ids, index=ids.index(focus), format_func=labels.get, key=f"hist_turn_{cid}"
    )
    record = by_id[picked]
    if record.parent_run_id:
        st.caption(markdown_escape(f"Re-aggregation of run {record.parent_run_id}"))
    actions(store, record)
    draw_conversation(conv, focus=picked)


def show_run(store: Store, run_id: str) -> None:
    """`?run=<id>`: that turn inside its conversation."""
    cid = store.resolve_conversation(run_id) if RUN_ID.fullmatch(run_id) else None
    if cid is None:
        st.divider()
        st.error(markdown_escape(f"no run with id '{run_id[:64]}'"))
        return
    show_open(store, cid, run_id)


def importer(store: Store) -> None:
    # Open while a file is chosen: a rerun (the upload itself is one) must not fold the Import
    # button out of sight.
    with st.expander(
        "Import a run or a conversation (JSON export)",
        expanded=bool(st.session_state.get("hist_import")),
    ):
        up = st.file_uploader("JSON export", type=["json"], key="hist_import")
        if up is not None:
            st.button("Import", key="hist_import_go", on_click=_import)


def _import() -> None:
    up = st.session_state.get("hist_import")
    if up is None:
        return
    try:
        rec = H.import_json(get_store(), up.getvalue())
    except (ImportError_, H.ImportRefused, StoreError) as e:
        _message("error", str(e))
        return
    if isinstance(rec, Conversation):
        _message("success", f"Imported conversation {rec.id}.")
        open_conversation(rec.id)
    else:
        _message("success", f"Imported run {rec.run_id}.")
        open_run(rec.run_id)


def main() -> None:
    st.set_page_config(page_title="MoA Studio · History", page_icon=PAGE_ICON, layout="wide")
    copy_secrets_to_env()
    activate_session_keys()  # keys typed on the Run page serve re-aggregation here too
    inject_css()
    page_nav()
    st.title("History")
    try:
        store = get_store()
    except StoreError as e:
        st.error(markdown_escape(str(e)))
        return
    if store.read_only:
        st.warning(
            markdown_escape(store.read_only)
            + "  \nYou can browse and export runs; deleting, importing and re-aggregating "
            "need a writable database."
        )
    msg = st.session_state.pop(MESSAGE, None)
    if msg:
        (st.error if msg[0] == "error" else st.success)(markdown_escape(msg[1]))
    run_requested_reaggregation(store)
    convs = table(store, filters(store))
    importer(store)
    if convs:
        with st.expander("Compare conversations"):
            compare(store, convs)
    opened_run = st.query_params.get("run")
    opened = st.query_params.get("conversation")
    if opened_run:
        show_run(store, opened_run)
    elif opened:
        show_open(store, opened, None)


main()
