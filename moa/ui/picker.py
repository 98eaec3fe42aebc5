"""The model picker: local models, models of providers whose key is set, or any litellm id typed in."""

from __future__ import annotations

import streamlit as st

from moa import llm, local
from moa.config import LIMITS
from moa.ui import state as K
from moa.ui.resources import litellm_ready

PICKER_HELP = (
    "Pick a suggestion or type any litellm model id (`provider/model`), e.g. "
    "`openai/gpt-4o-mini`, `anthropic/claude-3-5-haiku-latest`, `ollama/llama3.2`. "
    "`local/…` models run on this machine's CPU with no key. Provider models are suggested "
    "once their key is set."
)


def keyed_providers() -> tuple[str, ...]:
    """Providers whose API key is set in the environment (names only)."""
    return tuple(p for p, env in llm.PROVIDER_KEYS.items() if llm.keys_set().get(env))


@st.cache_data(show_spinner=False, ttl=600)
def provider_models(providers: tuple[str, ...]) -> list[str]:
    """Chat models litellm knows for these providers, as `provider/model` ids."""
    lt = llm.litellm()
    out: list[str] = []
    for provider in providers:
        for name in sorted(lt.models_by_provider.get(provider, ())):
            info = lt.model_cost.get(name) or lt.model_cost.get(f"{provider}/{name}") or {}
            if info.get("mode", "chat") != "chat":  # embeddings, images, audio: not for MoA
                continue
            out.append(name if name.startswith(f"{provider}/") else f"{provider}/{name}")
    return out


@st.cache_data(show_spinner=False, ttl=60)
def local_problems() -> dict[str, str]:
    """Local model id → why it cannot run yet (not installed, damaged), from cached hashes."""
    problems = {}
    for status in local.model_status():
        if not status.installed:
            problems[status.id] = status.error or "not installed"
        elif status.verified is False:
            problems[status.id] = status.error or "its file does not match its sha256"
    return problems


def form_models() -> list[str]:
    """Models already in the form (other proposers, the aggregator): offered in every picker."""
    ss = st.session_state
    slots = [K.proposer_slot(i) for i in ss.get(K.PROPOSER_IDS, [])]
    slots += [K.AGGREGATOR_SLOT, K.FALLBACK_SLOT]
    models = [ss.get(K.field_key(slot, "model")) for slot in slots]
    return list(dict.fromkeys(m for m in models if isinstance(m, str) and m.strip()))


def suggestions(current: str | None) -> list[str]:
    options = list(local.MODELS)
    options += [m for m in form_models() if m not in options]
    if litellm_ready():
        providers = keyed_providers()
        if providers:
            options += [m for m in provider_models(providers) if m not in options]
    if current and current not in options:
        options.insert(0, current)
    return options


def _on_model_change(slot: str) -> None:
    from moa.ui.config_form import on_model_change  # config_form imports this module

    on_model_change(slot)


def model_picker(slot: str, *, role: str) -> None:
    """Model id, api_base, and the per-model settings (label, temperature, …) in an expander."""
    key = lambda field: K.field_key(slot, field)  # noqa: E731
    current = st.session_state.get(key("model"))
    st.selectbox(
        "Model",
        suggestions(current),
        key=key("model"),
        accept_new_options=True,
        on_change=_on_model_change,
        args=(slot,),
        help=PICKER_HELP,
        placeholder="type a litellm model id",
    )
    problem = local_problems().get(current or "")
    if problem:
        st.caption(f"⚠️ {problem.splitlines()[0][:160]}")
    st.text_input(
        "API base (optional)",
        key=key("api_base"),
        placeholder="optional, e.g. http://127.0.0.1:11434/v1",
        help="Any OpenAI-compatible server (Ollama, vLLM, llama.cpp): use `openai/<served name>` "
        "as the model. Your provider keys are not sent there.",
    )
    with st.expander("Settings"):
        st.text_input("Label", key=key("label"), placeholder="shown on the card and charts")
        st.slider("Temperature", *LIMITS["temperature"], step=0.05, key=key("temperature"))
        lo, hi = LIMITS["max_tokens"]
        st.number_input("Max tokens", min_value=lo, max_value=hi, step=32, key=key("max_tokens"))
        st.text_area(
            "System prompt",
            key=key("system_prompt"),
            height=80,
            placeholder="optional, e.g. Answer concisely.",
        )
        lo_t, hi_t = LIMITS["timeout_s"]
        st.number_input(
            "Timeout (s)",
            min_value=lo_t,
            max_value=hi_t,
            step=10.0,
            key=key("timeout_s"),
            value=None,
            placeholder="the run's proposer timeout",
            help="Overrides the proposer timeout for this model."
            if role == "proposer"
            else "Time limit of the synthesis call (default: the proposer timeout).",
        )
        lo_p, hi_p = LIMITS["input_cost_per_mtok"]
        in_col, out_col = st.columns(2)
        for col, price, label in (
            (in_col, "input_cost_per_mtok", "Input $ / M tokens"),
            (out_col, "output_cost_per_mtok", "Output $ / M tokens"),
        ):
            col.number_input(
                label,
                min_value=lo_p,
                max_value=hi_p,
                step=0.1,
                format="%.4f",
                key=key(price),
                value=None,
                placeholder="litellm's price",
                help="Optional price in USD per million tokens (set both; 0 for a self-hosted "
                "model). Overrides litellm's price list in the estimate, cards, History and "
                "Insights.",
            )
        st.text_input(
            "API key env var (optional)",
            key=key("api_key_env"),
            placeholder="e.g. VLLM_API_KEY",
            help="The NAME of an environment variable holding the key for the API base "
            "server — never the key itself.",
        )
