"""One colour per candidate, the same in columns, highlights, legends, charts and reports."""

from __future__ import annotations

# Vega/Tableau 10: distinct hues that stay apart for most colour-vision deficiencies.
COLOURS = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#8E6CB8", "#3BA3A0", "#D4A017", "#9D755D")
AGGREGATOR = "#334155"
NOVEL = "#64748B"  # the aggregator's own words


def colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def tint(i: int, alpha: float = 0.28) -> str:
    """The candidate's colour as a translucent background for highlighted text."""
    hex_ = colour(i).lstrip("#")
    r, g, b = (int(hex_[k : k + 2], 16) for k in (0, 2, 4))
    return f"rgba({r}, {g}, {b}, {alpha})"
