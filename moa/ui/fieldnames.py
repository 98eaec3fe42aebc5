"""Config key names (`proposers[0].api_base`) as the sidebar names them ("Proposer 1 › API base").

The library and the CLI speak in config keys, as a TOML file does; the app speaks in the words
on its sidebar, and shows each message next to the field it is about.
"""

from __future__ import annotations

import re

FIELD_LABELS = {
    "model": "Model",
    "api_base": "API base",
    "label": "Label",
    "temperature": "Temperature",
    "max_tokens": "Max tokens",
    "system_prompt": "System prompt",
    "timeout_s": "Timeout (s)",
    "api_key_env": "API key env var",
    "input_cost_per_mtok": "Input $ / M tokens",
    "output_cost_per_mtok": "Output $ / M tokens",
}
RUN_LABELS = {
    "layers": "Layers",
    "proposer_timeout_s": "Proposer timeout (s)",
    "max_cost_usd": "Budget cap (USD)",
    "aggregator_prompt": "Synthesis prompt",
}
_SLOT = re.compile(r"\b(proposers\[(\d+)\]|fallback_aggregator|aggregator)(?:\.(\w+))?")
_RUN_KEY = re.compile(r"^(" + "|".join(RUN_LABELS) + r")\b")


def _slot_name(key: str, index: str | None) -> str:
    if index is not None:
        return f"Proposer {int(index) + 1}"
    return "Fallback aggregator" if key == "fallback_aggregator" else "Aggregator"


def humanize(message: str) -> str:
    """The message with config keys replaced by the sidebar's names for them.

    Only keys in key position are replaced: `proposers[0]` anywhere, `aggregator` /
    `fallback_aggregator` only at the start of the message or followed by `.field`, so prose
    such as "the aggregator reads…" stays as it is.
    """

    def slot(m: re.Match[str]) -> str:
        key, index, field = m.group(1), m.group(2), m.group(3)
        at_start = m.start() == 0
        if index is None and not field and not at_start:
            return m.group(0)
        name = _slot_name(key, index)
        if field:
            name += f" › {FIELD_LABELS.get(field, field)}"
        return name

    text = _SLOT.sub(slot, message)
    return _RUN_KEY.sub(lambda m: RUN_LABELS[m.group(1)], text)


def error_slot(message: str) -> str | None:
    """Which sidebar box a message is about: "p<N>" (0-based position), "agg", "fb" or None."""
    m = _SLOT.match(message)
    if m is None:
        return None
    if m.group(2) is not None:
        return f"p{int(m.group(2))}"
    return "fb" if m.group(1) == "fallback_aggregator" else "agg"
