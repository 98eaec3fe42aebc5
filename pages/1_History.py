"""MoA Studio, the History page: search the log, open a run, export, delete, re-aggregate, compare."""

from __future__ import annotations

import hashlib
import json
import math
import re

import streamlit as st

from moa import engine
from moa.config import STRATEGIES
from moa.export import ImportError_, run_to_json, run_to_markdown
from moa.records import RUN_STATUSES, RunRecord
from moa.report import run_to_html
from moa.store import Store, StoreError
from moa.ui import history as H
from moa.ui import state as K
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
    render_run,
)
from moa.ui.resources import PAGE_ICON, copy_secrets_to_env, get_store

RUN_ID = re.compile(r"[0-9a-f]{12,40}")
ALL = "All"
CONFIRM = "hist_confirm_delete"
MESSAGE = "hist_message"
LAST_PICK = "hist_last_pick"
LAST_TABLE_PICK = "hist_last_table_pick"


def open_run(run_id: str | None) -> None:
    if run_id:
        st.query_params["run"] = run_id
    else:
        st.query_params.pop("run", None)
    st.session_state.pop(CONFIRM, None)


def filters(store: Store) -> dict:
    c1, c2, c3, c5, c4 = st.columns([3, 2, 1.3, 1.5, 2])
    query = c1.text_input("Search", key="hist_search", placeholder="words of a prompt or answer")
    model = c2.selectbox("Model", [ALL, *store.models()], key="hist_model")
    status = c3.selectbox("Status", [ALL, *RUN_STATUSES], key="hist_status")
    strategy = c5.selectbox("Strategy", [ALL, *store.strategies()], key="hist_strategy")
    days = c4.date_input("Date range", value=[], key="hist_dates")
    since, until = H.date_bounds(days)
    return {
        "query": query or "",
        "model": None if model == ALL else model,
        "status": None if status == ALL else status,
        "strategy": None if strategy == ALL else strategy,
        "since": since,
        "until": until,
    }


def table(store: Store, f: dict) -> list:
    query = f.pop("query")
    total = store.count_matching(query, cap=H.COUNT_CAP, **f)
    pages = max(1, math.ceil(min(total, H.COUNT_CAP) / H.PAGE_SIZE))
    left, right = st.columns([1, 4], vertical_alignment="bottom")
    if st.session_state.get("hist_page", 1) > pages:  # the filters shrank the result
        st.session_state["hist_page"] = pages
    page = left.number_input("Page", min_value=1, max_value=pages, key="hist_page")
    right.caption(f"{H.fmt_count(total)} runs match · page {page} of {pages}")
    runs = store.search_runs(query, limit=H.PAGE_SIZE, offset=(page - 1) * H.PAGE_SIZE, **f)
    if not runs:
        st.info("No runs match. Run a mixture on the Run page, or loosen the filters.")
        return runs
    event = st.dataframe(
        H.table_rows(runs),
        # Keyed by the rows shown: a selection never carries over to other rows.
        key="hist_table_" + hashlib.sha1("".join(r.id for r in runs).encode()).hexdigest()[:12],
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        column_config={"id": None},
    )
    rows = list(getattr(getattr(event, "selection", None), "rows", []) or [])
    picked = runs[rows[0]].id if rows and rows[0] < len(runs) else None
    if picked and picked != st.session_state.get(LAST_TABLE_PICK):
        st.session_state[LAST_TABLE_PICK] = picked
        open_run(picked)
    labels = {
        r.id: f"{(r.created_at or '')[:19].replace('T', ' ')} · {H._short(r.prompt, 60)}"
        for r in runs
    }
    pick = st.selectbox(
        "Open a run",
        ["", *labels],
        format_func=lambda rid: labels.get(rid, "—"),
        key="hist_open",
    )
    if pick and pick != st.session_state.get(LAST_PICK):
        st.session_state[LAST_PICK] = pick
        open_run(pick)
    return runs


def compare(store: Store, runs: list) -> None:
    labels = {
        r.id: f"{(r.created_at or '')[:19].replace('T', ' ')} · {H._short(r.prompt, 40)}"
        for r in runs
    }
    ids = st.multiselect(
        "Compare 2–4 runs of this page",
        list(labels),
        format_func=lambda rid: labels.get(rid, rid),
        max_selections=4,
        key="hist_compare",
    )
    if len(ids) < 2:
        st.caption("Pick two to four runs to see their final answers side by side.")
        return
    records = [r for r in (store.get_run(i) for i in ids) if r is not None]
    if len(records) < 2:
        st.warning("Some of these runs are gone from the log.")
        return
    base = records[0].final_text or ""
    for col, rec in zip(st.columns(len(records)), records, strict=True):
        usage = rec.usage()
        tokens = usage["tokens_in"] + usage["tokens_out"]
        agg = rec.aggregator_call
        body = (
            esc(rec.final_text or "(no final answer)")
            if rec is records[0]
            else H.word_diff_html(base, rec.final_text or "")
        )
        attr, ids = attribution_for(rec)
        shares = Kept(rec, attr, ids).legend_html(hint=False) if attr is not None else ""
        col.html(
            '<div style="border:1px solid #e2e8f0;border-radius:10px;padding:.7rem .8rem">'
            f'<div style="font-weight:650">{esc(agg.label if agg else "—")}</div>'
            f'<div style="color:#64748b;font-size:.8rem">{esc(rec.run_id)} · '
            f"{esc((rec.created_at or '')[:19])}</div>"
            f'<div style="font-size:.85rem;margin:.3rem 0">cost {esc(fmt_cost(usage["cost_usd"]))} · '
            f"latency {esc(fmt_s(rec.wall_s))} · tokens {tokens:,}</div>{shares}"
            f'<div style="white-space:pre-wrap;font-size:.9rem;margin-top:.4rem">{body}</div></div>'
        )
    st.caption(
        "Under each run: each candidate's share of its final answer and the share of new text. "
        "Columns after the first show their differences from the first run's answer."
    )


def to_run_page(record: RunRecord, *, run: bool) -> None:
    """Open the Run page with this run's config and prompt in the form (and run it)."""
    st.session_state[K.PENDING] = {
        "config": record.config,
        "prompt": record.prompt,
        "system": record.system_prompt,
        "run": run,
    }
    st.switch_page("app.py")


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
        run_to_markdown(record),
        f"moa-{rid}.md",
        "text/markdown",
        key="dl_md",
        on_click="ignore",
    )
    c2.download_button(
        "JSON",
        json.dumps(run_to_json(record), indent=2, ensure_ascii=False),
        f"moa-{rid}.json",
        "application/json",
        key="dl_json",
        on_click="ignore",
    )
    c3.download_button(
        "HTML report",
        run_to_html(record),
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
        if y.button("Yes, delete", key="hist_delete_yes", type="primary"):
            try:
                store.delete_run(rid)
            except StoreError as e:  # e.g. a read-only database: nothing was deleted
                st.session_state.pop(CONFIRM, None)
                st.error(markdown_escape(str(e)))
                return
            st.session_state[MESSAGE] = ("success", f"Run {rid} was deleted.")
            open_run(None)
            st.rerun()
        if n.button("Cancel", key="hist_delete_no"):
            st.session_state.pop(CONFIRM, None)
            st.rerun()

    with st.expander("Re-aggregate with another aggregator, synthesis prompt or strategy"):
        st.caption(
            "Reuses this run's candidates and calls only the aggregator; the result is a new run."
        )
        with st.form("hist_reagg", border=False):
            agg = record.config.aggregator
            model = st.text_input("Aggregator model (litellm id)", agg.model, key=f"re_model_{rid}")
            api_base = st.text_input(
                "api_base (optional)", agg.api_base or "", key=f"re_base_{rid}"
            )
            prompt = st.text_area(
                "Synthesis prompt (empty: the default)",
                record.config.aggregator_prompt or "",
                key=f"re_prompt_{rid}",
            )
            strategy = st.selectbox(
                "Strategy",
                STRATEGIES,
                index=STRATEGIES.index(record.config.strategy),
                key=f"re_strategy_{rid}",
                help="Re-combine the same candidates another way: rank, select, vote, critique.",
            )
            go = st.form_submit_button("Re-aggregate", type="primary", key="re_go")
        if go:
            try:
                store.check_writable()  # before any call: a read-only log cannot keep the result
                with st.spinner("Calling the aggregator…"):
                    new = H.reaggregate(store, record, model, api_base, prompt, strategy)
            except (engine.InputError, StoreError) as e:
                st.error(markdown_escape(str(e)))
            except Exception as e:
                st.error(markdown_escape(f"re-aggregation failed: {type(e).__name__}: {e}"))
            else:
                st.session_state[MESSAGE] = ("success", f"New run {new.run_id} ({new.status}).")
                open_run(new.run_id)
                st.rerun()


def show_open(store: Store, run_id: str) -> None:
    st.divider()
    record = store.get_run(run_id) if RUN_ID.fullmatch(run_id) else None
    if record is None:
        st.error(markdown_escape(f"no run with id '{run_id[:64]}'"))
        return
    if record.parent_run_id:
        st.caption(markdown_escape(f"Re-aggregation of run {record.parent_run_id}"))
    actions(store, record)
    render_run(record, *attribution_for(record), key=f"hist_{run_id}")


def importer(store: Store) -> None:
    # Open while a file is chosen: a rerun (the upload itself is one) must not fold the Import
    # button out of sight.
    with st.expander(
        "Import a run (JSON export)", expanded=bool(st.session_state.get("hist_import"))
    ):
        up = st.file_uploader("JSON export", type=["json"], key="hist_import")
        if up is not None and st.button("Import", key="hist_import_go"):
            try:
                rec = H.import_json(store, up.getvalue())
            except (ImportError_, H.ImportRefused, StoreError) as e:
                st.error(markdown_escape(str(e)))
            else:
                st.session_state[MESSAGE] = ("success", f"Imported run {rec.run_id}.")
                open_run(rec.run_id)
                st.rerun()


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
        st.success(markdown_escape(msg[1]))
    runs = table(store, filters(store))
    importer(store)
    if runs:
        with st.expander("Compare runs"):
            compare(store, runs)
    opened = st.query_params.get("run")
    if opened:
        show_open(store, opened)


main()
