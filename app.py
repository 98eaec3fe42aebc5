"""MoA Studio, the Run page: configure a mixture, run it, watch it stream, see what was kept."""

from __future__ import annotations

import re
import time

import streamlit as st

from moa import conversation, engine
from moa.config import ConfigError, RunConfig
from moa.ui import state as K
from moa.ui.chat import (
    TurnActions,
    conversation_header_html,
    draw_conversation,
    live_user_message,
)
from moa.ui.config_form import (
    config_from_state,
    current_run_error,
    forget_form,
    form_error_elsewhere,
    hold_form,
    init_state,
    load_into_state,
    render_locked,
    render_sidebar,
    set_run_error,
)
from moa.ui.fieldnames import humanize
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


CONVERSATION_ID = re.compile(r"c[0-9a-f]{12,40}")


def _start_turn(prompt: str, system: str | None, make_plan) -> None:
    """Check the inputs, then start one turn in its own thread; errors go under the input.

    `make_plan(store)` says where the run goes: a new conversation, a follow-up, a retry or a
    branch (moa.conversation.plan_*). The address bar then names the conversation.
    """
    from moa.store import StoreError  # not at import time: it pulls in pandas (~0.8 s)

    ss = st.session_state
    set_run_error(None)
    activate_session_keys()  # callbacks may run in another thread than the last script run
    live = ss.get(K.LIVE)
    if live is not None and live.running:
        return
    try:
        cfg = config_from_state()
        store = get_writable_store()
        plan = make_plan(store)
        engine.check(cfg, prompt, system, history=plan.history)
    except (engine.InputError, ConfigError, StoreError, ValueError) as e:
        set_run_error(str(e))  # shown under the input and at its field; nothing was called
        return
    except Exception as e:  # a check that crashed must still read as a message, not a traceback
        set_run_error(f"could not check the run: {type(e).__name__}: {e}")
        return
    hold_form()
    ss[K.LIVE] = LiveRun(cfg, prompt, system, keys=session_keys(), plan=plan).start(store)
    ss[K.CONVERSATION] = plan.conversation_id
    ss[K.BRANCH_FROM] = ss[K.EDITING] = None
    st.query_params.clear()
    st.query_params["conversation"] = plan.conversation_id


def _on_run() -> None:
    """Run button / Ctrl+Enter on the first message: a new conversation."""
    ss = st.session_state
    system = (ss.get(K.SYSTEM) or "").strip() or None
    prompt = ss.get(K.PROMPT) or ""
    _start_turn(prompt, system, lambda store: conversation.plan_turn(None, prompt))


def _stored_conversation(store, cid: str):
    conv = store.get_conversation(cid)
    if conv is None:
        raise ValueError(f"no conversation with id '{cid[:64]}'")
    return conv


def _on_follow_up() -> None:
    """The chat input: the next turn (or the first turn of a branch, after "Continue from here")."""
    ss = st.session_state
    prompt = ss.get(K.FOLLOW_UP) or ""
    branch = ss.get(K.BRANCH_FROM)
    cid = ss.get(K.CONVERSATION)

    def plan(store):
        if branch is not None:
            parent = _stored_conversation(store, branch[0])
            return conversation.plan_branch(parent, branch[1], edit=False)
        if cid is None:
            return conversation.plan_turn(None, prompt)
        return conversation.plan_turn(_stored_conversation(store, cid), prompt)

    _start_turn(prompt, _conversation_system(branch[0] if branch else cid, branch), plan)


def _conversation_system(cid: str | None, branch: tuple | None) -> str | None:
    """A follow-up keeps the system prompt of the turn it follows."""
    if cid is None:
        return None
    try:
        conv = get_store().get_conversation(cid)
    except Exception:
        return None  # the run itself reports a store that cannot be read
    turns = [r for r in (conv.turns if conv else []) if branch is None or r.turn <= branch[1]]
    return turns[-1].system_prompt if turns else None


def _on_retry(run) -> None:
    def plan(store):
        p, _last = conversation.plan_retry(_stored_conversation(store, run.conversation_id))
        return p

    cid = st.session_state.get(K.CONVERSATION) or run.conversation_id
    st.session_state[K.CONVERSATION] = cid
    _start_turn(run.prompt, run.system_prompt, plan)


def _on_branch(run) -> None:
    """Continue from here: show the turns up to this one; the next message starts a branch."""
    ss = st.session_state
    ss[K.BRANCH_FROM] = (ss.get(K.CONVERSATION) or run.conversation_id, run.turn)
    ss[K.EDITING] = None


def _on_edit(run) -> None:
    ss = st.session_state
    ss[K.EDITING] = (ss.get(K.CONVERSATION) or run.conversation_id, run.turn, run.run_id)
    ss[K.EDIT_TEXT] = run.prompt
    ss[K.BRANCH_FROM] = None


def _on_run_edited() -> None:
    ss = st.session_state
    cid, turn, run_id = ss[K.EDITING]
    prompt = ss.get(K.EDIT_TEXT) or ""

    def plan(store):
        return conversation.plan_branch(_stored_conversation(store, cid), turn, edit=True)

    system = None
    source = get_store().get_run(run_id)
    if source is not None:
        system = source.system_prompt
    _start_turn(prompt, system, plan)


def _on_cancel_branch() -> None:
    st.session_state[K.BRANCH_FROM] = st.session_state[K.EDITING] = None


def _on_new_conversation() -> None:
    ss = st.session_state
    live = ss.get(K.LIVE)
    if live is not None and not live.running:
        ss[K.LIVE] = None
    ss[K.CONVERSATION] = ss[K.BRANCH_FROM] = ss[K.EDITING] = None
    set_run_error(None)
    # The last conversation's first message is not the next one's. Dropped, not set to "":
    # a value set here reaches the browser after the form appears and could wipe what the user
    # has started typing (the load test typed fast enough to hit that).
    ss.pop(K.PROMPT_KEPT, None)
    ss.pop(K.PROMPT, None)
    st.query_params.clear()


def take_pending() -> None:
    """A config (and prompt) sent from History: into the form, and run it if asked.

    It starts a new conversation: the form is where a first message is typed.
    """
    ss = st.session_state
    pending = ss.pop(K.PENDING, None)
    if pending is None:
        return
    live = ss.get(K.LIVE)
    if live is None or not live.running:
        _on_new_conversation()
    forget_form()  # the form's kept settings are the old ones
    load_into_state(pending["config"])
    ss[K.PROMPT] = pending["prompt"]
    ss[K.SYSTEM] = pending["system"] or ""
    if not pending["run"]:
        return
    if live is not None and live.running:
        set_run_error("A run is still going: its config is loaded; press Run when it ends.")
        return
    _on_run()


def _on_stop() -> None:
    live = st.session_state.get(K.LIVE)
    if live is not None:
        live.stop()


def _on_aggregate_now() -> None:
    live = st.session_state.get(K.LIVE)
    if live is not None:
        live.aggregate_now()


def estimate_text(cfg: RunConfig | ConfigError) -> tuple[str, str]:
    """(kind, text) for the sidebar: the cost estimate, "estimating…", or why not."""
    if isinstance(cfg, ConfigError):
        elsewhere = form_error_elsewhere(cfg)
        if elsewhere is None:  # shown in red at its field above
            return "error", "Estimated cost: — fix the setting marked in red above"
        return "error", elsewhere
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
    # The engine emits RunStarted within milliseconds; its record lays out the cards.
    while not live.started.wait(0.05):
        _ = K.LIVE in st.session_state  # a rerun request may interrupt here
    left, middle, right = st.columns([1, 1.4, 4], vertical_alignment="center")
    left.button(
        "Stopping…" if live.stopping else "Stop",
        key=K.STOP_BUTTON,
        on_click=_on_stop,
        icon=":material/stop_circle:",
        disabled=live.stopping,
        width="stretch",
    )
    middle.button(
        "Aggregating…" if live.aggregating_early else "Aggregate now",
        key=K.AGGREGATE_NOW_BUTTON,
        on_click=_on_aggregate_now,
        icon=":material/call_merge:",
        disabled=not live.can_aggregate_now,
        width="stretch",
        help="Stop waiting for slow proposers: cancel those still running and let the "
        "aggregator write the answer from the candidates that have arrived (as soon as one has).",
    )
    right.caption(
        "Stop cancels the calls still running; what arrived is kept and saved. Aggregate now "
        "cancels only the proposers still running and goes on to the final answer."
    )
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


def show_problems(live: LiveRun) -> None:
    """What went wrong around a finished run, beyond the run's own status."""
    if live.error:
        st.error(markdown_escape(f"The run stopped unexpectedly: {live.error}"))
    if live.store_error:
        st.warning(markdown_escape(f"This run could not be fully saved: {live.store_error}"))


def current_conversation() -> tuple[str | None, str | None]:
    """(conversation id, run id to focus) from the address bar, else from this session.

    `?run=<id>` opens that turn inside its conversation; `?conversation=<id>` the whole
    conversation. Coming back to the Run page from another page keeps the conversation and
    puts it back in the address bar, so a reload lands on what is on screen.
    """
    from moa.store import StoreError

    ss = st.session_state
    run_id = st.query_params.get("run")
    if run_id:
        try:
            cid = get_store().resolve_conversation(run_id) if RUN_ID.fullmatch(run_id) else None
        except StoreError as e:
            raise LookupError(str(e)) from None
        if cid is None:
            raise LookupError(f"no run with id '{run_id[:64]}'")
        if ss.get(K.CONVERSATION) != cid:
            ss[K.BRANCH_FROM] = ss[K.EDITING] = None
        ss[K.CONVERSATION] = cid
        return cid, run_id
    cid = st.query_params.get("conversation")
    if cid:
        if not CONVERSATION_ID.fullmatch(cid):
            raise LookupError(f"no conversation with id '{cid[:64]}'")
        if ss.get(K.CONVERSATION) != cid:
            ss[K.BRANCH_FROM] = ss[K.EDITING] = None
            live = ss.get(K.LIVE)
            if live is not None and not live.running:
                ss[K.LIVE] = None  # the last run belongs to another conversation
        ss[K.CONVERSATION] = cid
        return cid, None
    cid = ss.get(K.CONVERSATION)
    if cid:
        st.query_params["conversation"] = cid
    return cid, None


def show_conversation(cid: str, focus: str | None, live: LiveRun | None, running: bool) -> None:
    """The conversation's turns, the running turn below them, then the follow-up input."""
    from moa.store import StoreError

    ss = st.session_state
    branch = ss.get(K.BRANCH_FROM)
    editing = ss.get(K.EDITING)
    try:
        conv = get_store().get_conversation(cid)
    except StoreError as e:
        st.error(markdown_escape(str(e)))
        return
    ours = live is not None and live.plan is not None and live.plan.conversation_id == cid
    if conv is None and not ours:
        st.error(markdown_escape(f"no conversation with id '{cid[:64]}'"))
        st.button(
            "New conversation",
            key=K.NEW_CONVERSATION,
            on_click=_on_new_conversation,
            icon=":material/add:",
        )
        return
    top = st.columns([1, 4], vertical_alignment="center")
    top[0].button(
        "New conversation",
        key=K.NEW_CONVERSATION,
        on_click=_on_new_conversation,
        icon=":material/add:",
        disabled=running,
    )
    if conv is not None:
        top[1].html(conversation_header_html(conv))
        if branch is not None:
            st.info(
                f"Continuing from turn {branch[1]}: your next message starts a new "
                f"conversation that shares turns 1–{branch[1]}; this one stays as it is."
            )
            st.button("Cancel", key=K.CANCEL_BRANCH, on_click=_on_cancel_branch)
        actions = TurnActions() if running else TurnActions(_on_edit, _on_branch, _on_retry)
        skip = live.run_id if ours and running else None
        upto = branch[1] if branch is not None else None
        if editing is not None and editing[0] == cid:
            upto = editing[1] - 1
        draw_conversation(conv, focus=focus, upto=upto, actions=actions, skip=skip)
        if editing is not None and editing[0] == cid:
            edit_box(editing[1])
    if ours and running:
        live_user_message(live.prompt, live.plan.turn)
        show_live(live)
    elif ours:
        show_problems(live)
        stored = conv is not None and any(r.run_id == live.run_id for r in conv.runs)
        if not stored:  # the store refused it: still show what ran
            render_run(live.record(), *attribution_for(live.record()), show_prompt=True)
    run_error = current_run_error()
    if run_error:
        st.error(markdown_escape(humanize(run_error)))


def follow_up_input(running: bool) -> None:
    """The chat input, drawn at the page's root so it is pinned to the bottom (drawn inside a
    container it would sit inline), and before the live turn, which blocks until it ends."""
    ss = st.session_state
    if ss.get(K.EDITING) is not None:
        return  # the edited message has its own box and button
    hint = "Follow up… (starts a branch)" if ss.get(K.BRANCH_FROM) else "Follow up…"
    st.chat_input(hint, key=K.FOLLOW_UP, on_submit=_on_follow_up, disabled=running)


def edit_box(turn: int) -> None:
    """Edit and re-run: the message of `turn` in a box; running it starts a branch."""
    st.html(
        f'<div class="moa-turnhead" data-turn="{turn}"><b>Turn {turn}</b> · edited: '
        "running it starts a new conversation sharing the turns above</div>"
    )
    with st.chat_message("user"):
        st.text_area("Edited message", key=K.EDIT_TEXT, height=100)
        cols = st.columns([1, 1, 4])
        cols[0].button("Run edited", key="run_edited", on_click=_on_run_edited, type="primary")
        cols[1].button("Cancel", key="cancel_edit", on_click=_on_cancel_branch)


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


def keep_prompt() -> None:
    """Keep the form's prompt and system prompt apart from widget state, and put them back when
    a visit to another page dropped them (Streamlit forgets the state of widgets that are not
    on the page)."""
    ss = st.session_state
    if K.PROMPT in ss or K.SYSTEM in ss:
        ss[K.PROMPT_KEPT] = (ss.get(K.PROMPT) or "", ss.get(K.SYSTEM) or "")
    elif ss.get(K.PROMPT_KEPT):
        ss[K.PROMPT], ss[K.SYSTEM] = ss[K.PROMPT_KEPT]


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
    run_error = current_run_error()
    if run_error:
        st.error(markdown_escape(humanize(run_error)))


def main() -> None:
    st.set_page_config(page_title="MoA Studio · Run", page_icon=page_icon(), layout="wide")
    copy_secrets_to_env()
    activate_session_keys()
    inject_css()
    init_state()
    keep_prompt()
    take_pending()
    live: LiveRun | None = st.session_state.get(K.LIVE)
    running = live is not None and live.running
    try:
        cid, focus = current_conversation()
        missing = None
    except LookupError as e:
        cid, focus, missing = None, None, str(e)

    # Three places, one filled: a new conversation (the form), a conversation, a conversation
    # with a turn streaming. Switching empties the others at once (see one_of).
    area = one_of(3, active=0 if cid is None else 2 if running else 1)
    with area:
        if cid is None:
            # The form first: it is what a visitor needs, and the sidebar's ~50 widgets take
            # the browser a while to draw.
            page_header(
                "Run a mixture",
                "Proposers answer side by side; the aggregator reads them all and writes one "
                "answer. Highlights show what it kept. Follow up to make it a conversation.",
            )
            if missing:
                st.error(markdown_escape(missing))
            run_form(running)
            welcome()
        else:
            page_header(
                "Conversation",
                "Every turn is a MoA run that sees the earlier turns. Follow up below.",
            )
    sidebar(live, running)  # before the conversation, which may block while a turn streams
    if cid is not None:
        follow_up_input(running)
        with area:
            show_conversation(cid, focus, live, running)

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
