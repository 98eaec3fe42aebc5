"""Colours and formatters shared by the run renderer, the charts and the pages (no Streamlit)."""

from __future__ import annotations

import html
import re

from moa import palette
from moa.records import CallRecord

# One colour per proposer position (the same proposer keeps it across layers, columns, legend
# and charts): Tableau-10 hues, distinct for up to 8 proposers and readable as light tints.
PALETTE = palette.COLOURS
AGGREGATOR_COLOUR = palette.AGGREGATOR
NOVEL_COLOUR = palette.NOVEL

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def esc(text: object) -> str:
    """Escape untrusted text for HTML content and attribute values alike."""
    return html.escape("" if text is None else str(text), quote=True)


def markdown_escape(text: str) -> str:
    """Escape text for st.markdown/st.error, so a message cannot smuggle links or formatting."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def proposer_colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def call_colour(call: CallRecord) -> str:
    # Rankers are proposers judging (their colour); the aggregator's own calls share its colour.
    if call.role in ("aggregator", "selector", "critic", "reviser"):
        return AGGREGATOR_COLOUR
    return proposer_colour(call.index)


def rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


# ---------------------------------------------------------------- formatting


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_cost(usd: float | None) -> str:
    """A price; None is "unknown" (a model litellm has no price for), never $0."""
    if usd is None:
        return "unknown"
    if usd == 0:
        return "$0"
    if usd < 0.01:
        return f"${usd:.6f}".rstrip("0")
    return f"${usd:.4f}"


def fmt_tokens(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"
