"""API keys typed into one browser session: kept in st.session_state only, never os.environ.

The server process is shared by every browser session, so a key one person types must not be
visible to another: it lives in this session's st.session_state and reaches a call through
moa.llm's context variable (`activate` in the script thread; LiveRun sets it in the engine
thread). It is never put in the environment, the URL, the database, logs or exports, and the
password field is emptied as soon as the key is taken, so the value is not sent back to the
page on every rerun either.
"""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from moa import llm

SESSION_KEYS = "moa_session_keys"  # env var name → value, this browser session only
INPUT_PREFIX = "moa_key_input."  # widget key of a name's password field
FORGET_PREFIX = "moa_key_forget."
EXPANDER = "API keys (this browser session only)"


def session_keys() -> dict[str, str]:
    """A copy of this session's keys (name → value)."""
    return dict(st.session_state.get(SESSION_KEYS) or {})


def activate() -> None:
    """Let checks and calls made from this script thread see this session's keys (and only
    them: a thread that drew another session's page before gets this session's keys, or none)."""
    llm.set_session_keys(session_keys())


def input_key(name: str) -> str:
    return INPUT_PREFIX + name


def _on_entered(name: str) -> None:
    ss = st.session_state
    value = (ss.get(input_key(name)) or "").strip()
    ss[input_key(name)] = ""  # the field empties: the key is not echoed back to the page
    if not value:
        return
    keys = dict(ss.get(SESSION_KEYS) or {})
    keys[name] = value
    ss[SESSION_KEYS] = keys
    activate()


def _on_forget(name: str) -> None:
    keys = dict(st.session_state.get(SESSION_KEYS) or {})
    keys.pop(name, None)
    st.session_state[SESSION_KEYS] = keys
    activate()


def wanted_names(cfg: Any) -> list[str]:
    """Key variables the current config reads (provider keys and `api_key_env` names)."""
    names: list[str] = []
    models = cfg.models() if hasattr(cfg, "models") else []
    for spec in models:
        for name in llm.needed_keys(spec):
            if name not in names:
                names.append(name)
    return names


def render_keys(cfg: Any) -> None:
    """The sidebar expander: a password field per key the config needs, and the ones held."""
    held = session_keys()
    names = wanted_names(cfg)
    names += [n for n in held if n not in names]
    missing = [n for n in names if n not in held and not os.environ.get(n)]
    with st.expander(EXPANDER, expanded=bool(missing)):
        st.caption(
            "A key typed here is kept in this browser session's memory on the server only: not "
            "in the environment (other sessions never see it), the URL, the database, logs or "
            "exports. Closing the tab forgets it."
        )
        if not names:
            st.caption("The current setup needs no key (local models or your own api_base).")
        for name in names:
            if name in held:
                left, right = st.columns([3, 1], vertical_alignment="center")
                left.caption(f"`{name}`: set for this session")
                right.button(
                    "Forget",
                    key=FORGET_PREFIX + name,
                    on_click=_on_forget,
                    args=(name,),
                    type="tertiary",
                )
                continue
            state = "set on the server; a key here overrides it" if os.environ.get(name) else ""
            st.text_input(
                name,
                key=input_key(name),
                type="password",
                on_change=_on_entered,
                args=(name,),
                placeholder=state or "paste the key, then press Enter",
                help="Used for this browser session's calls only.",
                autocomplete="off",
            )
