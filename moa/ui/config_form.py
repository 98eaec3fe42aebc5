"""The sidebar's run configuration: presets, proposers, aggregator, layers, budget, synthesis."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import streamlit as st

from moa import config as config_mod
from moa import llm
from moa.config import LIMITS, ConfigError, ModelSpec, RunConfig
from moa.prompts import DEFAULT_AGGREGATOR_PROMPT
from moa.ui import concurrency as concurrency_ui
from moa.ui import state as K
from moa.ui import strategy_form
from moa.ui.fieldnames import error_slot, humanize
from moa.ui.picker import keyed_providers, model_picker
from moa.ui.render import AGGREGATOR_COLOUR, esc, markdown_escape, proposer_colour
from moa.ui.resources import presets_dir

# The form's truth is st.session_state (one key per widget): loading a preset writes those
# keys, config_from_state() reads them back through moa.config.from_dict, so the UI refuses
# exactly what a TOML file would, with the same messages.

DEFAULT_PRESET = "local-quick"  # runs with no key at all, like the CLI's default
FALLBACK_ON = K.field_key(K.FALLBACK_SLOT, "enabled")  # the "Use a fallback aggregator" box
MAX_PROPOSERS = LIMITS["proposers"][1]
# Used only when the presets folder is empty: the smallest model that runs everywhere.
FALLBACK = RunConfig(
    proposers=[ModelSpec(model="local/smollm2-135m", max_tokens=120)],
    aggregator=ModelSpec(model="local/smollm2-135m", temperature=0.2, max_tokens=200),
    name="Local fallback",
)


# ---------------------------------------------------------------- presets


def _usable(cfg: RunConfig, keyed: set[str]) -> bool:
    """Every model runs locally, on its own api_base, or with a provider key that is set."""
    return all(s.provider == "local" or s.api_base or s.provider in keyed for s in cfg.models())


def default_preset(names: list[str]) -> str | None:
    """$MOA_PRESET if it exists; with no key set, local-quick; with keys, the first preset that
    uses a keyed provider and needs no other key; else local-quick, else the first preset that
    loads, else the first."""
    wanted = os.environ.get("MOA_PRESET")
    if wanted in names:
        return wanted
    keyed = set(keyed_providers())
    if keyed:
        for name in names:
            try:
                cfg = config_mod.load_preset(name, presets_dir())
            except ConfigError:
                continue
            if any(s.provider in keyed for s in cfg.models()) and _usable(cfg, keyed):
                return name
    if DEFAULT_PRESET in names:
        return DEFAULT_PRESET
    for name in names:  # the first one that loads: a broken file is not a good first view
        try:
            config_mod.load_preset(name, presets_dir())
        except ConfigError:
            continue
        return name
    return names[0] if names else None


def _spec_into_state(slot: str, spec: ModelSpec) -> None:
    ss, key = st.session_state, lambda f: K.field_key(slot, f)
    ss[key("model")] = spec.model
    ss[key("api_base")] = spec.api_base or ""
    ss[key("label")] = spec.label or ""
    # The label as loaded: while the field still says this, the user has not typed a label of
    # their own, and a new model takes its own name (on_model_change).
    ss[K.auto_label_key(slot)] = spec.label or ""
    ss[key("temperature")] = float(spec.temperature)
    ss[key("max_tokens")] = int(spec.max_tokens)
    ss[key("system_prompt")] = spec.system_prompt or ""
    ss[key("timeout_s")] = None if spec.timeout_s is None else float(spec.timeout_s)
    ss[key("api_key_env")] = spec.api_key_env or ""
    for price in config_mod.PRICE_KEYS:
        value = getattr(spec, price)
        ss[key(price)] = None if value is None else float(value)


def load_into_state(cfg: RunConfig, preset: str | None = None) -> None:
    """Write a config into the form's keys (call before the widgets are drawn, or in a callback)."""
    ss = st.session_state
    first = ss.get(K.NEXT_ID, 0)
    # Fresh slot ids: widget keys of the old proposers are dropped, never reused with old values.
    ss[K.PROPOSER_IDS] = list(range(first, first + len(cfg.proposers)))
    ss[K.NEXT_ID] = first + len(cfg.proposers)
    for slot_id, spec in zip(ss[K.PROPOSER_IDS], cfg.proposers, strict=True):
        _spec_into_state(K.proposer_slot(slot_id), spec)
    _spec_into_state(K.AGGREGATOR_SLOT, cfg.aggregator)
    # Without a fallback in the preset, its picker starts as a copy of the aggregator (off),
    # without the aggregator's name: the fallback is another call.
    _spec_into_state(
        K.FALLBACK_SLOT, cfg.fallback_aggregator or replace(cfg.aggregator, label=None)
    )
    ss[FALLBACK_ON] = cfg.fallback_aggregator is not None
    ss[K.LAYERS] = cfg.layers
    ss[K.PROPOSER_TIMEOUT] = float(cfg.proposer_timeout_s)
    ss[K.BUDGET] = None if cfg.max_cost_usd is None else float(cfg.max_cost_usd)
    ss[K.SYNTHESIS] = cfg.aggregator_prompt or DEFAULT_AGGREGATOR_PROMPT
    ss[K.CONFIG_NAME] = cfg.name
    strategy_form.load_into_state(cfg)
    concurrency_ui.load_into_state(cfg)
    ss[K.LOADED] = config_mod.to_dict(cfg)
    if preset is not None:
        ss[K.PRESET] = preset


def init_state() -> None:
    """First script run of a session: load the default preset into the form."""
    if K.PROPOSER_IDS in st.session_state:
        return
    names = config_mod.list_presets(presets_dir())
    name = default_preset(names)
    cfg = FALLBACK
    if name is not None:
        try:
            cfg = config_mod.load_preset(name, presets_dir())
        except ConfigError as e:
            st.session_state[K.PRESET_MESSAGE] = ("error", str(e))
    load_into_state(cfg, name)


def _form_keys() -> list[str]:
    """The keys of every sidebar widget that holds a setting."""
    slots = [K.proposer_slot(i) for i in st.session_state.get(K.PROPOSER_IDS, [])]
    slots += [K.AGGREGATOR_SLOT, K.FALLBACK_SLOT]
    fields = [K.field_key(slot, f) for slot in slots for f in K.MODEL_FIELDS]
    fields += concurrency_ui.widget_keys()
    return [
        K.PRESET,
        FALLBACK_ON,
        K.LAYERS,
        K.PROPOSER_TIMEOUT,
        K.BUDGET,
        K.SYNTHESIS,
        *fields,
        *strategy_form.KEYS,
    ]


def remember_form() -> None:
    """Keep the sidebar's settings apart from widget state (after its widgets are drawn).

    Streamlit drops widget state on the server when the user goes to another page, and the
    browser may drop it when widgets leave the page for a while; a widget drawn again without
    its state takes its default (a number input's minimum: max_tokens 1, a 1 s timeout).
    """
    ss = st.session_state
    ss[K.FORM_VALUES] = {k: ss[k] for k in _form_keys() if k in ss}


def hold_form() -> None:
    """A run starts and the sidebar's widgets leave the page (render_locked): keep what they
    say, and send it back to the browser when they return.

    The 4-session load test caught the browser sending the number inputs' minimums with the
    next Run after a run (the browser drops the state of widgets missing from the page when a
    script run ends), nobody having touched them.
    """
    remember_form()
    st.session_state[K.RESTORE_FORM] = True


def restore_form() -> None:
    """Before the sidebar's widgets are drawn: put the kept settings back if a run hid them or
    another page dropped them. Setting them makes Streamlit send them to the browser."""
    ss = st.session_state
    values = ss.get(K.FORM_VALUES)
    after_run = ss.pop(K.RESTORE_FORM, False)
    dropped = K.field_key(K.AGGREGATOR_SLOT, "model") not in ss  # always drawn, so: another page
    if values and (after_run or dropped):
        ss.update(values)


def forget_form() -> None:
    """A new config was written into the form (History's "open in the Run page")."""
    st.session_state.pop(K.FORM_VALUES, None)
    st.session_state.pop(K.RESTORE_FORM, None)


def _on_preset_change() -> None:
    name = st.session_state.get(K.PRESET)
    if not name:
        return
    try:
        cfg = config_mod.load_preset(name, presets_dir())
    except ConfigError as e:
        st.session_state[K.PRESET_MESSAGE] = ("error", str(e))
        return
    load_into_state(cfg)
    st.session_state[K.PRESET_MESSAGE] = None


def _on_save() -> None:
    ss = st.session_state
    try:
        name = config_mod.check_preset_name(ss.get(K.SAVE_NAME) or "")
        if config_mod.is_bundled(name):
            raise ConfigError(
                f"preset {name!r} comes with MoA Studio and is read-only: save under another name"
            )
        cfg = config_from_state(mark_modified=False)  # exactly what the form shows
        existed = name in config_mod.list_presets(presets_dir())
        config_mod.save_preset(cfg, name, presets_dir())
        saved = config_mod.load_preset(name, presets_dir())
    except ConfigError as e:
        ss[K.PRESET_MESSAGE] = ("error", str(e))
        return
    except OSError as e:
        ss[K.PRESET_MESSAGE] = ("error", f"could not write to {presets_dir()}: {e.strerror or e}")
        return
    ss[K.PRESET] = name
    ss[K.CONFIG_NAME] = saved.name
    ss[K.LOADED] = config_mod.to_dict(saved)
    ss[K.SAVE_NAME] = ""
    verb = "Replaced" if existed else "Saved"
    ss[K.PRESET_MESSAGE] = ("success", f"{verb} preset '{name}'.")


def _on_rename() -> None:
    ss = st.session_state
    old = ss.get(K.PRESET) or ""
    try:
        config_mod.rename_preset(old, ss.get(K.RENAME_NAME) or "", presets_dir())
        new = config_mod.check_preset_name(ss.get(K.RENAME_NAME) or "")
        saved = config_mod.load_preset(new, presets_dir())
    except ConfigError as e:
        ss[K.PRESET_MESSAGE] = ("error", str(e))
        return
    except OSError as e:
        ss[K.PRESET_MESSAGE] = ("error", f"could not rename in {presets_dir()}: {e.strerror or e}")
        return
    ss[K.PRESET] = new
    ss[K.RENAME_NAME] = ""
    # The form keeps its settings; only the name they are saved under changed.
    ss[K.CONFIG_NAME] = saved.name
    loaded = dict(ss.get(K.LOADED) or {})
    loaded["name"] = saved.name
    ss[K.LOADED] = loaded
    ss[K.PRESET_MESSAGE] = ("success", f"Renamed preset '{old}' to '{new}'.")


def _on_delete() -> None:
    ss = st.session_state
    name = ss.get(K.PRESET) or ""
    if ss.get(K.DELETE_CONFIRM) != name:
        ss[K.DELETE_CONFIRM] = name  # the first click asks; the second deletes
        return
    ss.pop(K.DELETE_CONFIRM, None)
    try:
        config_mod.delete_preset(name, presets_dir())
    except ConfigError as e:
        ss[K.PRESET_MESSAGE] = ("error", str(e))
        return
    except OSError as e:
        ss[K.PRESET_MESSAGE] = (
            "error",
            f"could not delete from {presets_dir()}: {e.strerror or e}",
        )
        return
    # The form keeps the deleted preset's settings, now an unsaved setup under its name.
    ss[K.PRESET] = None
    ss[K.PRESET_MESSAGE] = ("success", f"Deleted preset '{name}'; its settings stay in the form.")


def _manage_presets() -> None:
    """Rename or delete the selected preset (user presets only)."""
    ss = st.session_state
    name = ss.get(K.PRESET)
    if not name or name not in config_mod.list_presets(presets_dir()):
        return
    with st.expander("Rename or delete this preset"):
        if config_mod.is_bundled(name):
            st.caption(
                f"“{name}” comes with MoA Studio and is read-only. Save a copy under another "
                "name (Save as preset) to change, rename or delete it."
            )
            return
        st.text_input("New name", key=K.RENAME_NAME, placeholder=name)
        rename_col, delete_col = st.columns(2)
        rename_col.button(
            "Rename", key=K.RENAME_BUTTON, on_click=_on_rename, icon=":material/edit:"
        )
        confirming = ss.get(K.DELETE_CONFIRM) == name
        delete_col.button(
            "Really delete?" if confirming else "Delete",
            key=K.DELETE_PRESET_BUTTON,
            on_click=_on_delete,
            icon=":material/delete:",
            type="primary" if confirming else "secondary",
        )
        if confirming:
            st.caption(f"Click again to delete “{name}” from {presets_dir()}.")


# ---------------------------------------------------------------- form ↔ config


def _spec_dict(slot: str) -> dict[str, Any]:
    ss, key = st.session_state, lambda f: K.field_key(slot, f)
    d: dict[str, Any] = {"model": (ss.get(key("model")) or "").strip()}
    for text_field in ("api_base", "label", "api_key_env"):
        value = (ss.get(key(text_field)) or "").strip()
        if value:
            d[text_field] = value
    system = ss.get(key("system_prompt")) or ""
    if system.strip():
        d["system_prompt"] = system
    d["temperature"] = float(ss.get(key("temperature"), 0.7))
    d["max_tokens"] = int(ss.get(key("max_tokens"), 512))
    if ss.get(key("timeout_s")) is not None:
        d["timeout_s"] = float(ss[key("timeout_s")])
    for price in config_mod.PRICE_KEYS:
        if ss.get(key(price)) is not None:
            d[price] = float(ss[key(price)])
    return d


def on_model_change(slot: str) -> None:
    """A model was picked: a label the user did not type goes with the old model."""
    ss = st.session_state
    label_key = K.field_key(slot, "label")
    auto = ss.get(K.auto_label_key(slot), "")
    if (ss.get(label_key) or "") == auto:
        ss[label_key] = ""
        ss[K.auto_label_key(slot)] = ""


def is_modified(cfg: RunConfig) -> bool:
    """The form's config differs from the preset (or run) that was loaded into it."""
    loaded = dict(st.session_state.get(K.LOADED) or {})
    now = config_mod.to_dict(cfg)
    loaded.pop("name", None)
    now.pop("name", None)
    return now != loaded


def config_from_state(mark_modified: bool = True) -> RunConfig:
    """The form as a validated RunConfig; ConfigError names the offending field.

    A setup that differs from the loaded preset is named "<preset> (modified)", so History
    and Insights never file it under the preset itself.
    """
    cfg = _config_from_state()
    if mark_modified and is_modified(cfg) and not cfg.name.endswith(MODIFIED):
        cfg.name = f"{cfg.name}{MODIFIED}"
    return cfg


MODIFIED = " (modified)"


def _config_from_state() -> RunConfig:
    ss = st.session_state
    d: dict[str, Any] = {
        "name": ss.get(K.CONFIG_NAME) or "Untitled",
        "layers": int(ss.get(K.LAYERS, 1)),
        "proposer_timeout_s": float(ss.get(K.PROPOSER_TIMEOUT, 120.0)),
        "aggregator": _spec_dict(K.AGGREGATOR_SLOT),
        "proposers": [_spec_dict(K.proposer_slot(i)) for i in ss.get(K.PROPOSER_IDS, [])],
    }
    if ss.get(FALLBACK_ON):
        d["fallback_aggregator"] = _spec_dict(K.FALLBACK_SLOT)
    if ss.get(K.BUDGET) is not None:
        d["max_cost_usd"] = float(ss[K.BUDGET])
    synthesis = ss.get(K.SYNTHESIS) or ""
    if synthesis.strip() and synthesis.strip() != DEFAULT_AGGREGATOR_PROMPT.strip():
        d["aggregator_prompt"] = synthesis
    d.update(strategy_form.from_state())
    concurrency = concurrency_ui.table_from_state(_specs_in_use(d))
    if concurrency:
        d["concurrency"] = concurrency
    return config_mod.from_dict(d)


def _specs_in_use(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [*d["proposers"], d["aggregator"], *filter(None, [d.get("fallback_aggregator")])]


def _on_add() -> None:
    ss = st.session_state
    ids = ss[K.PROPOSER_IDS]
    if len(ids) >= MAX_PROPOSERS:
        ss[K.PRESET_MESSAGE] = ("error", f"at most {MAX_PROPOSERS} proposers")
        return
    new = ss[K.NEXT_ID]
    ss[K.NEXT_ID] = new + 1
    # A new proposer starts as a copy of the last one: change the model and go.
    last = K.proposer_slot(ids[-1]) if ids else K.AGGREGATOR_SLOT
    for field in K.MODEL_FIELDS:
        ss[K.field_key(K.proposer_slot(new), field)] = ss.get(K.field_key(last, field))
    ss[K.field_key(K.proposer_slot(new), "label")] = ""
    ss[K.PROPOSER_IDS] = [*ids, new]


def _on_remove(slot_id: int) -> None:
    ids = st.session_state[K.PROPOSER_IDS]
    if len(ids) > 1 and slot_id in ids:
        st.session_state[K.PROPOSER_IDS] = [i for i in ids if i != slot_id]


def _on_fallback_toggle() -> None:
    # Streamlit forgets the values of widgets that were not drawn: switched on again, the
    # fallback starts as a copy of the aggregator (change the model and go).
    ss = st.session_state
    if ss.get(FALLBACK_ON) and not ss.get(K.field_key(K.FALLBACK_SLOT, "model")):
        for field in K.MODEL_FIELDS:
            ss[K.field_key(K.FALLBACK_SLOT, field)] = ss.get(K.field_key(K.AGGREGATOR_SLOT, field))
        ss[K.field_key(K.FALLBACK_SLOT, "label")] = ""


def _on_reset_synthesis() -> None:
    st.session_state[K.SYNTHESIS] = DEFAULT_AGGREGATOR_PROMPT


# ---------------------------------------------------------------- drawing


BRAND = (
    '<div style="font-size:1.35rem;font-weight:750;color:#0f172a;line-height:1.2">MoA Studio</div>'
    '<div style="font-size:.8rem;color:#64748b">Mixture-of-Agents: proposers answer, an '
    "aggregator writes the final answer.</div>"
)


def render_locked(cfg: RunConfig) -> None:
    """While a run is live: the config it runs with, read-only, and no widgets at all.

    Every widget on the page makes each streamed update costlier for the browser (Streamlit
    re-renders the whole element tree per message): a sidebar of ~50 widgets tripled the
    token-to-screen latency with 8 streams. The server keeps the widgets' values (a script run
    interrupted by a rerun, as every live-run script run is, never drops widget state), and
    hold_form/restore_form make sure the browser gets them back.
    """
    rows = "".join(
        f'<div class="moa-lock-row"><span class="moa-dot" style="--moa-c:{proposer_colour(i)}">'
        f"</span><b>{esc(p.display)}</b><code>{esc(p.model)}</code></div>"
        for i, p in enumerate(cfg.proposers)
    )
    agg = cfg.aggregator
    st.html(BRAND)
    st.html(
        f'<div class="moa-lock"><div class="moa-lock-title">Running · {esc(cfg.name)}</div>'
        f"{_heading('Proposers', f'{len(cfg.proposers)} × {cfg.layers} layer(s)')}{rows}"
        f"{_heading('Aggregator', '')}"
        f'<div class="moa-lock-row"><span class="moa-dot" style="--moa-c:{AGGREGATOR_COLOUR}">'
        f"</span><b>{esc(agg.display)}</b><code>{esc(agg.model)}</code></div>"
        f"{_fallback_row(cfg.fallback_aggregator)}"
        '<div class="moa-lock-note">The settings are locked while the run is live; they '
        "come back when it ends or you stop it.</div></div>"
    )


def _fallback_row(spec: ModelSpec | None) -> str:
    if spec is None:
        return ""
    return (
        f'<div class="moa-lock-row"><span class="moa-dot" style="--moa-c:{AGGREGATOR_COLOUR}">'
        f"</span><b>fallback: {esc(spec.display)}</b><code>{esc(spec.model)}</code></div>"
    )


def render_sidebar() -> RunConfig | ConfigError:
    """Draw the configuration (into the current container, the sidebar); returns the config it
    describes, or why it is not valid."""
    ss = st.session_state
    restore_form()
    st.html(BRAND)
    names = config_mod.list_presets(presets_dir())
    current = ss.get(K.PRESET)
    options = names if current in names or current is None else [*names, current]
    st.selectbox(
        "Preset",
        options,
        key=K.PRESET,
        on_change=_on_preset_change,
        placeholder="no presets in the folder",
        help=f"TOML presets from {presets_dir()}",
    )
    try:
        cfg: RunConfig | ConfigError = config_from_state()
    except ConfigError as e:
        cfg = e
    if isinstance(cfg, RunConfig) and is_modified(cfg):
        st.caption("modified: save it as a preset to keep these settings")
    name_col, save_col = st.columns([3, 2], vertical_alignment="bottom")
    name_col.text_input("Save as preset", key=K.SAVE_NAME, placeholder="my-preset")
    save_col.button(
        "Save", key=K.SAVE_BUTTON, on_click=_on_save, width="stretch", icon=":material/save:"
    )
    message = ss.get(K.PRESET_MESSAGE)
    if message:
        kind, text = message
        (st.success if kind == "success" else st.error)(markdown_escape(text))
    _manage_presets()

    ids = ss[K.PROPOSER_IDS]
    st.html(_heading("Proposers", f"{len(ids)} of {MAX_PROPOSERS}"))
    for n, slot_id in enumerate(ids, start=1):
        slot = K.proposer_slot(slot_id)
        with st.container(border=True):
            title, remove = st.columns([4, 1], vertical_alignment="center")
            title.markdown(f"**Proposer {n}**")
            remove.button(
                "",
                key=K.remove_button_key(slot),
                icon=":material/close:",
                help="Remove this proposer",
                on_click=_on_remove,
                args=(slot_id,),
                disabled=len(ids) <= 1,
                type="tertiary",
            )
            model_picker(slot, role="proposer")
            _field_errors(f"p{n - 1}", cfg)
    st.button(
        "Add proposer",
        key=K.ADD_PROPOSER,
        icon=":material/add:",
        on_click=_on_add,
        disabled=len(ids) >= MAX_PROPOSERS,
        help=f"Up to {MAX_PROPOSERS} proposers",
    )

    st.html(_heading("Aggregator", "writes the final answer"))
    with st.container(border=True):
        model_picker(K.AGGREGATOR_SLOT, role="aggregator")
        _field_errors("agg", cfg)
    with st.container(border=True):
        # Not an expander: the picker's own "Settings" expander cannot nest in one.
        st.checkbox(
            "Fallback aggregator",
            key=FALLBACK_ON,
            on_change=_on_fallback_toggle,
            help="Optional. Called only if the aggregator fails (after its retries), with the "
            "same candidates and synthesis prompt; its answer becomes the final answer.",
        )
        if ss.get(FALLBACK_ON):
            model_picker(K.FALLBACK_SLOT, role="aggregator")
            _field_errors("fb", cfg)

    st.html(_heading("Strategy", "how the candidates become the answer"))
    strategy_form.draw()

    st.html(_heading("Run", ""))
    st.slider(
        "Layers",
        *LIMITS["layers"],
        key=K.LAYERS,
        help="Layer k>1 proposers read layer k-1's answers before answering again.",
    )
    lo, hi = LIMITS["proposer_timeout_s"]
    st.number_input(
        "Proposer timeout (s)", min_value=lo, max_value=hi, step=10.0, key=K.PROPOSER_TIMEOUT
    )
    lo, hi = LIMITS["max_cost_usd"]
    st.number_input(
        "Budget cap (USD)",
        min_value=lo,
        max_value=hi,
        step=0.01,
        format="%.4f",
        key=K.BUDGET,
        value=None,
        placeholder="no cap",
        help="A run whose estimated cost is above this is refused before any call.",
    )
    with st.expander("Synthesis prompt"):
        st.text_area(
            "Instructions for the aggregator",
            key=K.SYNTHESIS,
            height=260,
            help="The system message of the aggregator; candidates travel as delimited data.",
        )
        st.button(
            "Reset to default",
            key=K.RESET_SYNTHESIS,
            on_click=_on_reset_synthesis,
            icon=":material/restart_alt:",
        )
    concurrency_ui.render(_specs_in_use(_form_specs()))
    keys = [name for name, is_set in llm.keys_set().items() if is_set]
    st.caption("Provider keys set: " + (", ".join(keys) if keys else "none (local models only)"))
    remember_form()
    return cfg


def _field_errors(where: str, cfg: RunConfig | ConfigError) -> None:
    """Under a model's box: the form's own error about it, and the last Run refusal about it
    (while the form is as it was when Run was pressed)."""
    messages = []
    if isinstance(cfg, ConfigError) and error_slot(str(cfg)) == where:
        messages.append(str(cfg))
    run_error = current_run_error()
    if run_error and error_slot(run_error) == where and run_error not in messages:
        messages.append(run_error)
    for message in messages:
        st.error(markdown_escape(humanize(message)))


def form_error_elsewhere(cfg: RunConfig | ConfigError) -> str | None:
    """The form's error if no model box shows it (a run-wide setting), in the sidebar's words."""
    if isinstance(cfg, ConfigError) and error_slot(str(cfg)) is None:
        return humanize(str(cfg))
    return None


def _snapshot() -> dict[str, Any]:
    ss = st.session_state
    keys = [*_form_keys(), K.PROMPT, K.SYSTEM, K.PROPOSER_IDS]
    return {k: ss.get(k) for k in keys}


def set_run_error(message: str | None) -> None:
    """Why Run was refused; it stays on the page until the form or the prompt changes."""
    ss = st.session_state
    ss[K.RUN_ERROR] = message
    ss[K.RUN_ERROR_FORM] = _snapshot() if message else None


def current_run_error() -> str | None:
    """The last Run refusal, in the sidebar's words, unless the form has changed since."""
    ss = st.session_state
    message = ss.get(K.RUN_ERROR)
    if not message:
        return None
    form = ss.get(K.RUN_ERROR_FORM)
    if form is not None and form != _snapshot():
        set_run_error(None)  # the user changed something: the old message no longer applies
        return None
    return message


def _form_specs() -> dict[str, Any]:
    ss = st.session_state
    d = {
        "aggregator": _spec_dict(K.AGGREGATOR_SLOT),
        "proposers": [_spec_dict(K.proposer_slot(i)) for i in ss.get(K.PROPOSER_IDS, [])],
    }
    if ss.get(FALLBACK_ON):
        d["fallback_aggregator"] = _spec_dict(K.FALLBACK_SLOT)
    return d


def _heading(title: str, sub: str) -> str:
    return (
        f'<div class="moa-section" style="margin:.6rem 0 0">{esc(title)}'
        f"{f'<span>{esc(sub)}</span>' if sub else ''}</div>"
    )
