"""The sidebar's strategy settings: how the candidates become the answer, and the cascade."""

from __future__ import annotations

from typing import Any

import streamlit as st

from moa import config as config_mod
from moa.config import RunConfig
from moa.strategies import CASCADE_EXPLANATION, EXPLANATIONS

STRATEGY = "strategy"
CASCADE = "cascade"
CRITIQUE_ROUNDS = "critique_rounds"
CASCADE_AGREEMENT = "cascade_agreement"
JUDGE = "judge"  # optional model id: it ranks alone
CRITIC = "critic"  # optional model id: the critic (default: the aggregator)
CASCADE_MODEL = "cascade_model"  # optional model id: the cascade's two samples
KEYS = (STRATEGY, CASCADE, CRITIQUE_ROUNDS, CASCADE_AGREEMENT, JUDGE, CRITIC, CASCADE_MODEL)
_MODELS = (JUDGE, CRITIC, CASCADE_MODEL)


def load_into_state(cfg: RunConfig) -> None:
    ss = st.session_state
    ss[STRATEGY] = cfg.strategy
    ss[CASCADE] = cfg.cascade
    ss[CRITIQUE_ROUNDS] = cfg.critique_rounds
    ss[CASCADE_AGREEMENT] = float(cfg.cascade_agreement)
    for key in _MODELS:
        spec = getattr(cfg, key)
        ss[key] = (
            "" if spec is None else spec.model + (f"@{spec.api_base}" if spec.api_base else "")
        )


def from_state() -> dict[str, Any]:
    """The strategy keys of a config dict (only those that differ from the defaults)."""
    ss, d = st.session_state, {}
    if ss.get(STRATEGY, "synthesize") != "synthesize":
        d["strategy"] = ss[STRATEGY]
    if ss.get(CASCADE):
        d["cascade"] = True
        d["cascade_agreement"] = float(ss.get(CASCADE_AGREEMENT, 0.6))
    if int(ss.get(CRITIQUE_ROUNDS, 1)) != 1:
        d["critique_rounds"] = int(ss[CRITIQUE_ROUNDS])
    for key in _MODELS:
        if (ss.get(key) or "").strip():
            d[key] = ss[key].strip()
    return d


def draw() -> None:
    """The selector with a one-line explanation of each strategy, and each one's settings."""
    ss = st.session_state
    st.selectbox(
        "Strategy",
        config_mod.STRATEGIES,
        key=STRATEGY,
        help=" · ".join(f"{name}: {text}" for name, text in EXPLANATIONS.items()),
    )
    chosen = ss.get(STRATEGY, "synthesize")
    st.caption(EXPLANATIONS.get(chosen, ""))
    if chosen == "rank":
        st.text_input("Judge model (optional)", key=JUDGE, placeholder="every proposer ranks")
    if chosen == "critique":
        st.slider("Critique rounds", *config_mod.LIMITS["critique_rounds"], key=CRITIQUE_ROUNDS)
        st.text_input("Critic model (optional)", key=CRITIC, placeholder="the aggregator")
    st.checkbox("Cascade", key=CASCADE, help=CASCADE_EXPLANATION)
    if ss.get(CASCADE):
        st.caption(CASCADE_EXPLANATION)
        st.slider("Agreement needed", 0.0, 1.0, step=0.05, key=CASCADE_AGREEMENT)
        st.text_input(
            "Cascade model (optional)", key=CASCADE_MODEL, placeholder="proposers 1 and 2"
        )
