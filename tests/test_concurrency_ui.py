"""The sidebar's "Calls at once" control ([concurrency] per api_base) through AppTest."""

from __future__ import annotations

from dataclasses import replace

from moa import config as config_mod
from moa.store import Store
from moa.ui import concurrency as concurrency_ui
from moa.ui import state as K
from tests import test_app
from tests.conftest import make_config
from tests.test_app import app, run

# The Run page tests' fixtures: a presets folder, and a preset of models on the loopback server.
presets = test_app.presets
loopback = test_app.loopback


def test_a_presets_limit_fills_the_servers_input_and_a_run_uses_it(fake, presets, db_path):
    for m in ("a", "b", "agg"):
        fake.set(
            m, text=" ".join(f"w{i}" for i in range(20)), token_delay_s=0.01, one_at_a_time=True
        )
    cfg = replace(make_config(fake, ["a", "b"], name="served"), concurrency={fake.base_url: 1})
    config_mod.save_preset(config_mod.validate(cfg), "served", presets)
    at = app()
    assert at.selectbox(key=K.PRESET).value == "served"
    box = at.number_input(key=concurrency_ui.widget_key(fake.base_url))
    assert box.value == 1 and box.label == fake.base_url
    assert not any("modified" in c.value for c in at.caption)  # the form says what was loaded
    at = run(at, "Why is the sky blue?")
    (summary,) = Store(db_path).search_runs()
    record = Store(db_path).get_run(summary.id)
    assert record.config.concurrency == {fake.base_url: 1}
    assert record.status == "ok" and fake.max_active == 1  # the calls took turns


def test_setting_and_clearing_a_limit_changes_the_config_and_the_saved_preset(loopback, presets):
    at = app()
    key = concurrency_ui.widget_key(loopback.base_url)
    assert at.number_input(key=key).value is None  # no limit in the preset
    assert any("Calls at once (0 of 1 server(s) limited)" in e.label for e in at.expander)
    at.number_input(key=key).set_value(2).run()
    assert any("modified" in c.value for c in at.caption)
    at.text_input(key=K.SAVE_NAME).input("limited").run()
    at.button(key=K.SAVE_BUTTON).click().run()
    saved = config_mod.load_preset("limited", presets)
    assert saved.concurrency == {loopback.base_url: 2}
    assert f'"{loopback.base_url}" = 2' in (presets / "limited.toml").read_text()
    at.number_input(key=key).set_value(None).run()
    at.text_input(key=K.SAVE_NAME).input("unlimited").run()
    at.button(key=K.SAVE_BUTTON).click().run()
    assert config_mod.load_preset("unlimited", presets).concurrency == {}


def test_no_server_in_use_no_control(presets, monkeypatch, db_path, server):
    monkeypatch.delenv("MOA_PRESETS_DIR", raising=False)
    at = app()  # local-quick: local models only
    assert not any(e.label.startswith("Calls at once") for e in at.expander)
