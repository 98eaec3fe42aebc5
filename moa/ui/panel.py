"""The run view's panel section: which matcher drew the highlights, and the panel analysis."""

from __future__ import annotations

import hashlib

import streamlit as st

from moa import analysis as analysis_mod
from moa import panel_view
from moa.analysis import RunAnalysis
from moa.records import RunRecord
from moa.ui.style import markdown_escape


def _fingerprint(record: RunRecord) -> str:
    # One digest, not a tuple of the texts: Streamlit hashes a tuple element by element in
    # Python, ~5 ms a run on busy cores, which a 50-turn conversation paid 50 times per redraw.
    h = hashlib.blake2b(digest_size=16)
    parts = [record.run_id, record.status, record.final_text or "\x00"]
    parts += [f"{c.key}|{c.status}|{c.text}" for c in record.proposer_calls]
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()


@st.cache_data(show_spinner=False, max_entries=64, hash_funcs={RunRecord: _fingerprint})
def analysis_for(record: RunRecord) -> RunAnalysis:
    """The run's attribution and panel: the store's cached copy for a stored run (the same
    highlights it had when it finished, not recomputed), else computed (and cached there)."""
    from moa.store import StoreError
    from moa.ui.resources import get_store

    try:
        store = get_store()
    except StoreError:
        store = None
    return analysis_mod.for_run(record, store)


def render_panel(record: RunRecord, analysis: RunAnalysis) -> None:
    """Consensus, unique points (dropped ones first), contradictions, diversity; escaped HTML."""
    if analysis.attribution is None or analysis.panel is None:
        return
    from moa.ui.render import section  # the renderer's section header markup

    st.html(section("The panel", "consensus · unique points · contradictions"))
    st.html(panel_view.matcher_line(analysis))
    if analysis.attribution.notice:
        st.caption(markdown_escape(analysis.attribution.notice))
    st.html(panel_view.panel_html(record, analysis))
