"""Every st.session_state key the UI uses, named in one place (widget keys included)."""

from __future__ import annotations

# Non-widget state
LIVE = "moa_live_run"  # the session's LiveRun: running, or the last one (drawn until replaced)
RUN_ERROR = "moa_run_error"  # why the last Run click was refused (InputError / ConfigError text)
RUN_ERROR_FORM = "moa_run_error_form"  # the form as it was then: a change clears the error
PROPOSER_IDS = "moa_proposer_ids"  # stable ids of the proposer slots, in order
NEXT_ID = "moa_next_proposer_id"  # next slot id: ids are never reused, so widget keys stay unique
LOADED = "moa_loaded_config"  # dict of the preset as loaded, to show "modified"
CONFIG_NAME = "moa_config_name"  # RunConfig.name of the loaded preset
PRESET_MESSAGE = "moa_preset_message"  # ("success" | "error", text) after a save or a load
FORM_VALUES = "moa_form_values"  # the sidebar's settings, kept apart from widget state
RESTORE_FORM = "moa_restore_form"  # a run hid the sidebar: send FORM_VALUES back to the browser
PENDING = "moa_pending"  # a config (and prompt) sent from History: load it, maybe run it
CONVERSATION = "moa_conversation"  # id of the conversation on the Run page (None: a new one)
BRANCH_FROM = "moa_branch_from"  # (conversation id, turn): the next message starts a branch there
PROMPT_KEPT = "moa_prompt_kept"  # (prompt, system prompt) kept apart from widget state
EDITING = "moa_editing"  # (conversation id, turn) whose user message is being edited

# Widgets (keys double as handles for AppTest and Playwright)
PRESET = "preset"
SAVE_NAME = "save_name"
SAVE_BUTTON = "save_preset"
RENAME_NAME = "rename_preset_name"
RENAME_BUTTON = "rename_preset"
DELETE_PRESET_BUTTON = "delete_preset"
DELETE_CONFIRM = "moa_delete_preset_confirm"  # not a widget: the preset a Delete click armed
ADD_PROPOSER = "add_proposer"
LAYERS = "layers"
PROPOSER_TIMEOUT = "proposer_timeout_s"
BUDGET = "max_cost_usd"
SYNTHESIS = "aggregator_prompt"
RESET_SYNTHESIS = "reset_aggregator_prompt"
PROMPT = "prompt"
SYSTEM = "system_prompt"
RUN_BUTTON = "run"
STOP_BUTTON = "stop"
AGGREGATE_NOW_BUTTON = "aggregate_now"
NEW_RUN_BUTTON = "new_run"
RUN_FORM = "run_form"
FOLLOW_UP = "follow_up"  # the chat input at the bottom of a conversation
NEW_CONVERSATION = "new_conversation"
RETRY_BUTTON = "retry_turn"
EDIT_TEXT = "edit_text"
CANCEL_BRANCH = "cancel_branch"

AGGREGATOR_SLOT = "agg"
FALLBACK_SLOT = "fb"  # the optional fallback aggregator; `fb.enabled` turns it on
MODEL_FIELDS = (
    "model",
    "api_base",
    "label",
    "temperature",
    "max_tokens",
    "system_prompt",
    "timeout_s",
    "api_key_env",
    "input_cost_per_mtok",
    "output_cost_per_mtok",
)


def proposer_slot(slot_id: int) -> str:
    return f"p{slot_id}"


def field_key(slot: str, field: str) -> str:
    """Widget key of one model setting, e.g. `p3.model` or `agg.temperature`."""
    return f"{slot}.{field}"


def auto_label_key(slot: str) -> str:
    """The label a slot got from the loaded config (not a widget): see on_model_change."""
    return f"moa_auto_label.{slot}"


def remove_button_key(slot: str) -> str:
    return f"{slot}.remove"
