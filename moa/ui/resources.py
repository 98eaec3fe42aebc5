"""Per-server-process resources: the Store, the background litellm import, secrets as env vars."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from moa import config as config_mod
from moa import llm

if TYPE_CHECKING:  # moa.store pulls in sqlite_utils and pandas (~0.8 s): not before first paint
    from moa.store import Store


@st.cache_resource(show_spinner=False)
def _store(path: str) -> Store:
    from moa.store import Store

    return Store(path)


PAGE_ICON = "🧩"


def page_icon() -> str | None:
    """The tab icon, from the second script run of a fresh server on: Streamlit checks an icon
    against its emoji table (~80 ms the first time; an image file pulls in numpy instead), and
    the first run is the first paint (bench/ui.py)."""
    return PAGE_ICON if litellm_ready() else None


def get_store() -> Store:
    """One Store per database file per process (it hands each thread its own connection).

    Raises StoreError with a message naming the file when it cannot be opened.
    """
    from moa.store import default_path

    return _store(str(default_path()))


def get_writable_store() -> Store:
    """get_store(), refusing (StoreError naming the file and the fix) if it cannot be written:
    a run must not start against a read-only log and half-save."""
    store = get_store()
    store.check_writable()
    return store


# Importing litellm takes ~5 s on 2 cores, holding the GIL much of that time: it starts once per
# server process, after the first page is drawn, in a thread (moa.llm.preload_in_background).
_import_lock = threading.Lock()
_import_thread: threading.Thread | None = None


def start_litellm_import() -> None:
    global _import_thread
    with _import_lock:
        if _import_thread is None:
            _import_thread = llm.preload_in_background()


def litellm_ready() -> bool:
    """True once the background import has finished (successfully or not)."""
    thread = _import_thread
    return thread is not None and not thread.is_alive()


def wait_for_litellm(timeout_s: float) -> bool:
    start_litellm_import()
    assert _import_thread is not None
    _import_thread.join(timeout_s)
    return litellm_ready()


def copy_secrets_to_env() -> list[str]:
    """Copy `*_API_KEY` entries of .streamlit/secrets.toml into os.environ (env vars win).

    Cheap enough for every script run (st.secrets parses the file once), which also picks up
    a key added to the file while the server runs. Returns the names copied, never values.
    """
    copied: list[str] = []
    try:
        if not st.secrets.load_if_toml_exists():
            return copied
        for name, value in st.secrets.items():
            if name.endswith("_API_KEY") and isinstance(value, str) and not os.environ.get(name):
                os.environ[name] = value
                copied.append(name)
    except Exception:  # a malformed secrets file must not take the page down
        return copied
    return copied


def presets_dir() -> Path:
    """Where presets are listed, loaded and saved: $MOA_PRESETS_DIR, else data/presets."""
    env = os.environ.get("MOA_PRESETS_DIR")
    return Path(env) if env else config_mod.PRESETS_DIR
