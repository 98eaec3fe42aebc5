"""The page links at the top of every page's sidebar.

Streamlit names a multipage app's main page after its file, so its own navigation would list
the Run page as "app". `.streamlit/config.toml` turns that navigation off and every page draws
this one instead. The links switch pages inside the browser session, so session-only API keys
and the run being shown survive a visit to History.
"""

from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitAPIException

PAGES = (
    ("app.py", "Run", ":material/play_arrow:"),
    ("pages/1_History.py", "History", ":material/history:"),
    ("pages/2_Insights.py", "Insights", ":material/monitoring:"),
    ("pages/3_Evaluate.py", "Evaluate", ":material/balance:"),
)


def page_nav() -> None:
    """Links to the four pages, in the sidebar. Nothing when the page runs on its own (a page
    script started directly, as AppTest does, has no other pages to link to)."""
    with st.sidebar:
        for path, label, icon in PAGES:
            try:
                st.page_link(path, label=label, icon=icon)
            except StreamlitAPIException:
                return
        st.html('<hr class="moa-nav-sep">')
