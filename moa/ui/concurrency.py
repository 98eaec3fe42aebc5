"""The sidebar's "Calls at once" control: the [concurrency] limit of every api_base in use."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import streamlit as st

from moa.config import CONCURRENCY_RANGE, RunConfig, endpoint_key

# The loaded config's [concurrency] table: entries the form shows no widget for (`local`, other
# providers, servers no model uses now) are kept as they were.
LOADED_TABLE = "moa_concurrency_loaded"
_PREFIX = "concurrency:"  # + the normalised api_base: one number input per server


def widget_key(api_base: str) -> str:
    return _PREFIX + endpoint_key(api_base)


def widget_keys() -> list[str]:
    """Keys of the control's widgets that hold a value (for the form's memory)."""
    return [k for k in st.session_state if isinstance(k, str) and k.startswith(_PREFIX)]


def load_into_state(cfg: RunConfig) -> None:
    """A config is loaded into the form: its limits become the inputs' values."""
    ss = st.session_state
    for key in widget_keys():
        del ss[key]
    ss[LOADED_TABLE] = dict(cfg.concurrency)
    for name, n in cfg.concurrency.items():
        if "://" in name:
            ss[_PREFIX + name] = n


def _bases(spec_dicts: Iterable[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for d in spec_dicts:
        if d.get("api_base"):
            seen[endpoint_key(d["api_base"])] = None
    return list(seen)


def table_from_state(spec_dicts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The [concurrency] table the form describes: loaded entries, then one per server in use
    (an empty input: no limit)."""
    ss = st.session_state
    table = dict(ss.get(LOADED_TABLE) or {})
    for base in _bases(spec_dicts):
        value = ss.get(_PREFIX + base)
        if value is None:
            table.pop(base, None)
        else:
            table[base] = int(value)
    return table


def render(spec_dicts: Iterable[dict[str, Any]]) -> None:
    """One number input per api_base in use, in an expander (nothing when none is used)."""
    bases = _bases(spec_dicts)
    if not bases:
        return
    ss = st.session_state
    limited = sum(ss.get(_PREFIX + b) is not None for b in bases)
    lo, hi = CONCURRENCY_RANGE
    with st.expander(f"Calls at once ({limited} of {len(bases)} server(s) limited)"):
        st.caption(
            "The most calls sent at once to each OpenAI-compatible server, across every run "
            "in this app. Set 1 for a server that answers one request at a time "
            "(llama-cpp-python's server, LM Studio); leave empty for servers that batch "
            "(vLLM, Ollama, llama.cpp's llama-server with --parallel)."
        )
        for base in bases:
            st.number_input(
                base,
                min_value=lo,
                max_value=hi,
                step=1,
                value=None,
                key=_PREFIX + base,
                placeholder="no limit",
                help=f'Saved in the preset as [concurrency] "{base}" = N',
            )
