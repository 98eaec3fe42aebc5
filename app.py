"""MoA Studio, the Run page: configure a mixture, run it, watch it stream, see what was kept."""

from __future__ import annotations

import re
import time

import streamlit as st

from moa import engine
from moa.config import ConfigError, RunConfig
from moa.ui import state as K
from moa.ui.config_form import (
    config_from_state,
    forget_form,
    hold_form,
    init_state,
    load_into_state,
    render_locked,
    render_sidebar,
)
from moa.ui.keys import activate as activate_session_keys
from moa.ui.keys import render_keys, session_keys
from moa.ui.live import LiveRun, follow
from moa.ui.nav import page_nav
from moa.ui.render import (
    RunView,
    attribution_for,
    esc,
    fmt_cost,
    inject_css,
    markdown_escape,
    render_run,
    run_header,
)
from moa.ui.resources import (
    copy_secrets_to_env,
    get_store,
    get_writable_store,
    litellm_ready,
    page_icon,
    start_litellm_import,
    wait_for_litellm,
)

RUN_ID = re.compile(r"[0-9a-f]{12,40}")
WARM_UP_DELAY_S = 0.8  # after the first script run, before the heavy imports


def _on_run() -> None:
    """Run button / Ctrl+Enter: check the inputs, then start the engine in its own thread."""
    from moa.store import StoreError  # not at import time: it pulls in pandas (~0.8 s)

    ss = st.session_state
    ss[K.RUN_ERROR] = None
    activate_session_keys()  # callbacks may run in another thread than the last script run
    live = ss.get(K.LIVE)
    if live is not None and live.running:
        return
    prompt = ss.get(K.PROMPT) or ""
    system = (ss.get(K.SYSTEM) or "").strip() or None
    try:
        cfg = config_from_state()
        engine.check(cfg, prompt, system)
        store = get_writable_store()
    except (engine.InputError, ConfigError, StoreError) as e:
        ss[K.RUN_ERROR] = str(e)  # shown under the form; nothing was called or saved
        return
    except Exception as e:  # a check that crashed must still read as a message, not a traceback
        ss[K.RUN_ERROR] = f"could not check the run: {type(e).__name__}: {e}"
        return
    hold_form()
    ss[K.LIVE] = LiveRun(cfg, prompt, system, keys=session_keys()).start(store)


def take_pending() -> None:
    """A config (and prompt) sent from History: into the form, and run it if asked."""
    ss = st.session_state
    pending = ss.pop(K.PENDING, None)
    if pending is None:
        return
    forget_form()  # the form's kept settings are the old ones
    load_into_state(pending["config"])
    ss[K.PROMPT] = pending["prompt"]
    ss[K.SYSTEM] = pending["system"] or ""
    if not pending["run"]:
        return
    live = ss.get(K.LIVE)
    if live is not None and live.running:
        ss[K.RUN_ERROR] = "A run is still going: its config is loaded; press Run when it ends."
        return
    _on_run()


def _on_stop() -> None:
    live = st.session_state.get(K.LIVE)
    if live is not None:
        live.stop()


def _on_new_run() -> None:
    st.query_params.clear()


def estimate_text(cfg: RunConfig | ConfigError) -> tuple[str, str]:
    """(kind, text) for the sidebar: the cost estimate, "estimating…", or why not."""
    if isinstance(cfg, ConfigError):
        return "error", str(cfg)
    if not litellm_ready():
        return "info", "Estimated cost: estimating… (loading the model catalogue)"
    ss = st.session_state
    prompt = ss.get(K.PROMPT) or "Hello"
    system = (ss.get(K.SYSTEM) or "").strip() or None
    try:
        est = engine.estimate_cost(cfg, prompt, system)
    except Exception as e:
        return "error", f"cannot estimate the cost: {e}"
    unknown = ", ".join(sorted(set(est.unknown_models)))
    if est.usd == 0 and not unknown:
        text = "Estimated cost: $0 (local models)"
    elif est.usd == 0:
        text = f"Estimated cost: unknown (no price known for {unknown})"
    else:
        text = f"Estimated cost: at most {fmt_cost(est.usd)}"
        if unknown:
            text += f", plus {unknown} (price unknown)"
    if cfg.max_cost_usd is not None and est.usd > cfg.max_cost_usd:
        return "error", f"{text}: over the budget cap of ${cfg.max_cost_usd:g}"
    return "info", text


def page_header(title: str, subtitle: str) -> None:
    st.html(
        '<div style="display:flex;align-items:baseline;gap:.8rem;flex-wrap:wrap">'
        f'<span style="font-size:1.7rem;font-weight:750;color:#0f172a">{esc(title)}</span>'
        f'<span style="color:#64748b;font-size:.92rem">{esc(subtitle)}</span></div>'
    )


def welcome() -> None:
    st.html(
        '<div class="moa-welcome"><b>How it works.</b> Pick a preset or set up the proposers '
        "and the aggregator in the sidebar, type a prompt and press <b>Run</b> "
        "(or Ctrl/⌘+Enter). Each proposer streams in its own column; then the aggregator "
        "writes the final answer. Every sentence of the answer is tinted with the colour of "
        'the candidate it came from; <span style="border-bottom:2px dashed #64748b">dashed'
        "</span> sentences are new. Every run is saved and gets its own link.</div>"
    )


def show_live(live: LiveRun) -> None:
    """Draw the run as it streams until it is done, then rerun to draw the finished page."""
    left, right = st.columns([1, 5], vertical_alignment="center")
    left.button(
        "Stopping…" if live.stopping else "Stop",
        key=K.STOP_BUTTON,
        on_click=_on_stop,
        icon=":material/stop_circle:",
        disabled=live.stopping,
        width="stretch",
    )
    right.caption("Stop cancels the calls still running; what arrived is kept and saved.")
    # The engine emits RunStarted within milliseconds; its record lays out the cards.
    while not live.started.wait(0.05):
        _ = K.LIVE in st.session_state  # a rerun request may interrupt here
    view = RunView(live.record(), show_prompt=False)

    def header() -> None:
        status = "stopping" if live.stopping else None
        record = live.record()
        view.draw_header(run_header(record, status=status, elapsed_s=live.elapsed_s()))
        view.draw_outcome(record)

    follow(
        live,
        draw_call=lambda call, note: view.draw_call(call, note=note),
        draw_header=header,
        flush=view.flush,
        checkpoint=lambda: K.LIVE in st.session_state,
    )
    st.rerun()  # done: redraw with highlights, charts and the Run button enabled


def show_finished(live: LiveRun) -> None:
    record = live.record()
    if live.error:
        st.error(markdown_escape(f"The run stopped unexpectedly: {live.error}"))
    if live.store_error:
        st.warning(markdown_escape(f"This run could not be fully saved: {live.store_error}"))
    render_run(record, *attribution_for(record), show_prompt=False)


def show_saved(run_id: str) -> None:
    """`?run=<id>`: a stored run, read-only, through the same renderer as a live one."""
    from moa.store import StoreError

    st.button("New run", key=K.NEW_RUN_BUTTON, on_click=_on_new_run, icon=":material/add:")
    try:
        record = get_store().get_run(run_id) if RUN_ID.fullmatch(run_id) else None
    except StoreError as e:
        st.error(markdown_escape(str(e)))
        return
    if record is None:
        st.error(markdown_escape(f"no run with id '{run_id[:64]}'"))
        return
    if record.status == "running":
        st.info("This run is still in progress somewhere; reload the page to see more.")
    render_run(record, *attribution_for(record), show_prompt=True)


def one_of(count: int, active: int) -> st.delta_generator.DeltaGenerator:
    """`count` placeholders in a row: a container in the `active` one, the others emptied.

    While a run streams the script never ends, and Streamlit drops the elements a script run
    did not draw again only when that run ends: the config widgets and the last run's charts
    would stay on the page, faded, and the browser would re-lay them out on every streamed
    update (that tripled the token latency with 8 streams). Drawing the live view in a
    placeholder of its own and emptying the other drops them at once. (Emptying a placeholder
    and refilling it in the same run does not: Streamlit merges the two messages.)
    """
    slots = [st.empty() for _ in range(count)]
    for i, slot in enumerate(slots):
        if i != active:
            slot.empty()
    return slots[active].container()


def sidebar(live: LiveRun | None, running: bool) -> None:
    page_nav()
    with st.sidebar, one_of(2, active=1 if running else 0):
        if running:
            render_locked(live.config)
        else:
            cfg = render_sidebar()
            kind, text = estimate_text(cfg)
            (st.error if kind == "error" else st.caption)(markdown_escape(text))
            render_keys(cfg)


def run_form(running: bool) -> None:
    # st.form: Ctrl/Cmd+Enter in its text areas submits it, i.e. presses Run.
    with st.form(K.RUN_FORM, border=False):
        st.text_area(
            "Prompt",
            key=K.PROMPT,
            height=110,
            placeholder="Ask the panel anything… (Ctrl/⌘+Enter runs it)",
        )
        with st.expander("System prompt (optional)"):
            st.text_area(
                "System prompt",
                key=K.SYSTEM,
                height=80,
                placeholder="e.g. Answer in three short bullet points.",
                label_visibility="collapsed",
            )
        st.form_submit_button(
            "Run",
            key=K.RUN_BUTTON,
            type="primary",
            icon=":material/play_arrow:",
            on_click=_on_run,
            disabled=running,
        )
    if st.session_state.get(K.RUN_ERROR):
        st.error(markdown_escape(st.session_state[K.RUN_ERROR]))


def main() -> None:
    st.set_page_config(page_title="MoA Studio · Run", page_icon=page_icon(), layout="wide")
    copy_secrets_to_env()
    activate_session_keys()
    inject_css()
    init_state()
    take_pending()
    live: LiveRun | None = st.session_state.get(K.LIVE)
    running = live is not None and live.running

    # The form first: it is what a visitor needs, and the sidebar's ~50 widgets take the
    # browser a while to draw. The sidebar comes before the run area, which may block.
    saved = st.query_params.get("run")
    if saved:
        page_header("Saved run", "Read-only, drawn exactly as it looked when it ran.")
    else:
        page_header(
            "Run a mixture",
            "Proposers answer side by side; the aggregator reads them all and writes one "
            "answer. Highlights show what it kept.",
        )
        run_form(running)
    sidebar(live, running)
    if saved:
        show_saved(saved)
    else:
        with one_of(2, active=1 if running else 0):
            if live is None:
                welcome()
            elif running:
                show_live(live)
            else:
                show_finished(live)

    if not litellm_ready():
        warm_up()


def warm_up() -> None:
    """After the first paint: open the store and import litellm, then redraw once.

    The page is already usable while this waits (any click interrupts it); the redraw brings
    the provider models into the picker and the cost estimate into the sidebar.
    """
    # Let the browser draw the page first: importing the store (sqlite-utils, ~1 s of CPU) and
    # litellm (~5 s) holds the GIL and one of the two cores, and drawing the first page while
    # they run took ~0.3 s longer (bench/ui.py). A click still interrupts this pause.
    deadline = time.monotonic() + WARM_UP_DELAY_S
    while time.monotonic() < deadline:
        time.sleep(0.05)
        _ = K.LIVE in st.session_state  # a rerun request interrupts here
    from moa.store import StoreError

    try:
        get_store()
    except StoreError:
        pass  # the Run button and the saved-run view report it, with the file and the fix
    start_litellm_import()
    while not wait_for_litellm(0.1):
        _ = K.LIVE in st.session_state  # a rerun request interrupts here
    st.rerun()


main()
