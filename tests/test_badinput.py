"""Bad input through the real pages (AppTest, Chromium) and the CLI: one clear message naming
what is wrong and the fix, no traceback, no model called, nothing half-written."""

# ruff: noqa: F811  (pytest fixtures imported from test_app/test_pages are parameters here)

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from moa import cli
from moa import config as config_mod
from moa.config import ModelSpec
from moa.store import Store
from moa.ui import state as K
from tests.appserver import CHROMIUM, ROOT, AppServer, launch_chromium, loopback_netns
from tests.conftest import make_config
from tests.test_app import APP, app, errors, html, loopback, plain, presets, run  # noqa: F401
from tests.test_pages import HISTORY, filled, table_ids  # noqa: F401

EVALUATE = str(ROOT / "pages" / "3_Evaluate.py")
UNREACHABLE = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there


def cli_run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    """The CLI's bad-input answer: exactly one line, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def cfg_file(fake, tmp_path):
    path = tmp_path / "loop.toml"
    path.write_text(config_mod.dumps(make_config(fake, ["a", "b"], name="loop")))
    return path


# ---------------------------------------------------------------- prompts


def test_cli_empty_prompt_is_bad_input(fake, cfg_file, db_path, capsys):
    for prompt in ("", "   \n\t "):
        code, out, err = cli_run(capsys, "run", prompt, "--config", str(cfg_file))
        assert code == 2 and out == ""
        assert one_error_line(err) == (
            "error: the prompt is empty: type a question or task for the models"
        )
    assert fake.requests == [] and Store(db_path).count_runs() == 0


def test_run_page_prompt_longer_than_the_context_window(loopback, presets, monkeypatch, db_path):
    """openai/gpt-4o, whose window litellm knows (128,000), served by the loopback server."""
    monkeypatch.setenv("MOA_LOOP_SERVER_KEY", "not-checked-by-the-fake")
    cfg = make_config(loopback, ["alpha"], name="big")
    cfg.proposers[0] = ModelSpec(
        model="openai/gpt-4o", api_base=loopback.base_url, api_key_env="MOA_LOOP_SERVER_KEY"
    )
    config_mod.save_preset(cfg, "big-window", presets)
    at = app()
    at.selectbox(key=K.PRESET).set_value("big-window").run()
    run(at, "plants " * 130_000)
    msgs = errors(at)
    # Under Run, and under Proposer 1's box in the sidebar, in the sidebar's words.
    assert len(msgs) == 2 and len(set(msgs)) == 1, msgs
    assert msgs[0].startswith("Proposer 1: the prompt is ")
    assert "openai/gpt-4o holds 128,000" in msgs[0] and "shorten the prompt" in msgs[0]
    assert loopback.requests == [] and Store(db_path).count_runs() == 0


# ---------------------------------------------------------------- models, keys, endpoints


def test_cli_unknown_model_and_missing_key_name_the_fix(
    fake, cfg_file, db_path, monkeypatch, capsys
):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    code, _, err = cli_run(capsys, "run", "Hi", "--config", str(cfg_file), "--proposer", "nosuch/x")
    assert code == 2
    assert "'nosuch/x' is not a model id litellm knows; use 'provider/model'" in one_error_line(err)
    code, _, err = cli_run(
        capsys,
        "run",
        "Hi",
        "--config",
        str(cfg_file),
        "--aggregator",
        "anthropic/claude-3-5-haiku-latest",
    )
    assert code == 2
    line = one_error_line(err)
    assert "aggregator: 'anthropic/claude-3-5-haiku-latest' needs ANTHROPIC_API_KEY" in line
    assert "set it in the environment" in line
    assert fake.requests == [] and Store(db_path).count_runs() == 0


def test_run_page_missing_provider_key_names_the_variable(loopback, presets, monkeypatch, db_path):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    cfg = make_config(loopback, ["alpha"], name="keyless")
    cfg.aggregator = ModelSpec(model="anthropic/claude-3-5-haiku-latest")
    config_mod.save_preset(cfg, "keyless", presets)
    at = app()
    at.selectbox(key=K.PRESET).set_value("keyless").run()
    # The keys expander asks for exactly the missing variable.
    assert at.text_input(key="moa_key_input.ANTHROPIC_API_KEY")
    run(at, "Hello?")
    msgs = errors(at)
    assert any(
        m.startswith("Aggregator: 'anthropic/claude-3-5-haiku-latest' needs ANTHROPIC_API_KEY")
        and "API keys" in m
        for m in msgs
    ), msgs
    assert loopback.requests == [] and Store(db_path).count_runs() == 0


def test_run_page_unreachable_api_base_fails_the_run_with_a_clear_message(
    loopback, presets, db_path
):
    cfg = make_config(loopback, ["alpha", "beta"], name="down")
    for spec in cfg.proposers:
        spec.api_base = UNREACHABLE
    config_mod.save_preset(cfg, "down", presets)
    at = app()
    at.selectbox(key=K.PRESET).set_value("down").run()
    run(at, "Anyone there?")
    page = html(at)
    expected = f"cannot connect to {UNREACHABLE} (connection refused"
    assert expected in page and "check that the server is running" in page
    assert "HTTP 500" not in page  # litellm's label for it; no server answered at all
    runs = Store(db_path).search_runs()
    assert [r.status for r in runs] == ["failed"]
    record = Store(db_path).get_run(runs[0].id)
    assert all(c.status == "failed" and expected in c.error for c in record.proposer_calls)
    assert expected in record.error
    assert loopback.requests == []  # the aggregator was never called


def test_cli_unreachable_api_base_exits_1_and_saves_the_run(fake, cfg_file, db_path, capsys):
    code, _, err = cli_run(
        capsys,
        "run",
        "Anyone?",
        "--config",
        str(cfg_file),
        "--proposer",
        f"openai/x@{UNREACHABLE}",
        "--db",
        str(db_path),
    )
    assert code == 1 and "Traceback" not in err
    assert f"cannot connect to {UNREACHABLE} (connection refused" in err
    assert [r.status for r in Store(db_path).search_runs()] == ["failed"]


def test_cli_proposers_and_layers_out_of_range(fake, cfg_file, db_path, capsys, tmp_path):
    code, _, err = cli_run(capsys, "run", "Hi", "--config", str(cfg_file), "--layers", "9")
    assert code == 2
    assert one_error_line(err) == "error: layers = 9 is out of range: allowed 1..4"
    nine = make_config(fake, [f"m{i}" for i in range(9)], name="nine")
    path = tmp_path / "nine.toml"
    path.write_text(config_mod.dumps(nine))
    code, _, err = cli_run(capsys, "run", "Hi", "--config", str(path))
    assert code == 2 and "proposers: 9 given, allowed 1..8" in one_error_line(err)
    assert fake.requests == [] and Store(db_path).count_runs() == 0


# ---------------------------------------------------------------- presets


HOSTILE_PRESETS: dict[str, tuple[bytes, str]] = {
    "unknown-key": (
        b'[aggregator]\nmodel = "local/smollm2-135m"\n[[proposers]]\n'
        b'model = "local/smollm2-135m"\ntempreature = 0.7\n',
        "proposers[0]: unknown key 'tempreature' (allowed: model",
    ),
    "wrong-type": (
        b'layers = "two"\n[aggregator]\nmodel = "local/smollm2-135m"\n[[proposers]]\n'
        b'model = "local/smollm2-135m"\n',
        "layers must be an integer, got str 'two'",
    ),
    "nine-layers": (
        b'layers = 9\n[aggregator]\nmodel = "local/smollm2-135m"\n[[proposers]]\n'
        b'model = "local/smollm2-135m"\n',
        "layers = 9 is out of range: allowed 1..4",
    ),
    "huge": (b"# padding\n" * (1024 * 1024), "a config file may be at most 262,144 bytes"),
    "not-toml": (b"[aggregator\nmodel = ", "is not valid TOML"),
    "latin1": (b'name = "caf\xe9"\n', "is not UTF-8 text"),
    "bad name!": (b'[aggregator]\nmodel = "x"\n', "preset name 'bad name!' is not allowed"),
}


def test_hostile_preset_files_are_listed_and_selecting_one_shows_its_problem(loopback, presets):
    for name, (data, _) in HOSTILE_PRESETS.items():
        (presets / f"{name}.toml").write_bytes(data)
    assert (presets / "huge.toml").stat().st_size >= 10 * 1024 * 1024
    # The page opens on the first preset that loads ('loop'), not on the broken ones that sort
    # before it.
    at = app()
    assert at.selectbox(key=K.PRESET).value == "loop"
    assert not errors(at)
    assert set(HOSTILE_PRESETS) <= set(at.selectbox(key=K.PRESET).options)
    at.selectbox(key=K.PRESET).set_value("loop").run()
    assert not errors(at) and len(at.session_state[K.PROPOSER_IDS]) == 3
    for name, (_, expected) in HOSTILE_PRESETS.items():
        at.selectbox(key=K.PRESET).set_value(name).run()
        assert not at.exception, (name, at.exception)
        msgs = errors(at)
        assert any(expected in m for m in msgs), (name, msgs)
        # The form keeps the last good config: three loopback proposers.
        assert len(at.session_state[K.PROPOSER_IDS]) == 3, name
    # Everything is unchanged on disk.
    for name, (data, _) in HOSTILE_PRESETS.items():
        assert (presets / f"{name}.toml").read_bytes() == data
    # A good preset still loads after all that.
    at.selectbox(key=K.PRESET).set_value("loop").run()
    assert not at.exception and not errors(at)


def test_a_folder_of_only_broken_presets_opens_on_the_fallback(presets, db_path):
    (presets / "broken.toml").write_bytes(b"layers = 'x'")
    at = app()
    assert any("broken.toml" in e or "layers" in e for e in errors(at)), errors(at)
    assert at.selectbox(key="agg.model").value == "local/smollm2-135m"


# ---------------------------------------------------------------- the database


def test_a_corrupted_database_on_the_run_and_history_pages(loopback, db_path):
    db_path.write_bytes(b"this is not a database" * 100)
    before = db_path.read_bytes()
    at = run(app(), "Hello?")
    assert any("is not a usable SQLite database" in e and "MOA_DB" in e for e in errors(at)), (
        errors(at)
    )
    hist = AppTest.from_file(HISTORY, default_timeout=30).run()
    assert not hist.exception
    assert any("is not a usable SQLite database" in e for e in errors(hist))
    assert loopback.requests == [] and db_path.read_bytes() == before


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`chattr +i`: not even root may write the file (as the tests run as root, where chmod
    alone stops nothing). Skips when the file system does not support it."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not possible here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_database_on_the_run_and_history_pages(filled, fake, db_path, presets):
    store, plants, cooking = filled
    store.close()
    config_mod.save_preset(make_config(fake, ["alpha"], name="loop"), "loop", presets)
    with immutable(db_path):
        before = db_path.read_bytes()
        at = run(app(), "Hello?")
        msgs = errors(at)
        assert len(msgs) == 1, msgs
        assert msgs[0].startswith(f"the database {db_path} is read-only: ")
        assert "chattr -i" in msgs[0] and "MOA_DB" in msgs[0]
        assert fake.requests == []  # refused before any call

        hist = AppTest.from_file(HISTORY, default_timeout=30).run()
        assert not hist.exception
        warning = " ".join(plain(w.value) for w in hist.warning)
        assert f"the database {db_path} is read-only" in warning
        # still browsable (each run logged alone is a one-turn conversation)
        assert set(table_ids(hist)) == {plants.conversation_id, cooking.conversation_id}
        hist.query_params["run"] = plants.run_id
        hist.run()
        hist.button(key="hist_delete").click().run()
        hist.button(key="hist_delete_yes").click().run()
        assert not hist.exception
        assert any("is read-only" in e for e in errors(hist))
        hist.run()
        hist.text_input(key=f"re_model_{plants.run_id}").input("openai/judge")
        hist.button(key="re_go").click().run()
        assert any("is read-only" in e for e in errors(hist))
        assert fake.requests == []

        evaluate = AppTest.from_file(EVALUATE, default_timeout=30).run()
        assert not evaluate.exception
        assert any(e.startswith(f"the database {db_path} is read-only") for e in errors(evaluate))
        assert db_path.read_bytes() == before
    assert Store(db_path).count_runs() == 2


def unprivileged() -> list[str]:
    """A command prefix under which file permissions apply as for a normal user.

    Tests run as root, and root writes a chmod 444 file anyway. Dropping CAP_DAC_OVERRIDE (and
    friends) leaves uid 0 bound by the permission bits like any owner, while it can still run
    the venv's Python (under /root, which `nobody` could not reach).
    """
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    caps = "-dac_override,-dac_read_search,-fowner"
    prefix = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot drop capabilities: {probe.stderr.strip()}")
    return prefix


def moa_as_user(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*unprivileged(), sys.executable, "-m", "moa", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_cli_read_only_database_file_and_folder(filled, fake, cfg_file, db_path):
    store, plants, _ = filled
    store.close()
    folder = db_path.parent
    db_path.chmod(0o444)
    try:
        before = db_path.read_bytes()
        proc = moa_as_user("run", "Hi", "--config", str(cfg_file), "--db", str(db_path))
        assert proc.returncode == 2, proc.stderr
        line = one_error_line(proc.stderr)
        assert line == (
            f"error: the database {db_path} is read-only: the file is not writable by user "
            f"root (mode 444); make it writable (chmod u+w '{db_path}') or point MOA_DB / --db "
            "at a copy in a writable folder"
        )
        assert fake.requests == [] and db_path.read_bytes() == before
        # Reading a read-only log still works.
        proc = moa_as_user("history", "--db", str(db_path))
        assert proc.returncode == 0 and plants.run_id in proc.stdout, proc.stderr
        export = folder / "export.json"
        proc = moa_as_user("export", plants.run_id, "--format", "json", "-o", str(export))
        assert proc.returncode == 0, proc.stderr
        proc = moa_as_user("import", str(export), "--db", str(db_path))
        assert proc.returncode == 2 and "is read-only" in one_error_line(proc.stderr)
    finally:
        db_path.chmod(0o644)
    for extra in (Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        extra.unlink(missing_ok=True)
    folder.chmod(0o555)  # the file is writable, but SQLite cannot create its -wal/-shm files
    try:
        proc = moa_as_user("run", "Hi", "--config", str(cfg_file), "--db", str(db_path))
        assert proc.returncode == 2, proc.stderr
        line = one_error_line(proc.stderr)
        assert line.startswith(f"error: the database {db_path} is read-only: its folder {folder}")
        assert f"chmod u+w '{folder}'" in line
        assert fake.requests == []
    finally:
        folder.chmod(0o755)
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o644
    assert Store(db_path).count_runs() == 2  # nothing was lost or half-written


# ---------------------------------------------------------------- History search


@pytest.mark.parametrize(
    "query",
    [
        '"unbalanced',
        "AND OR NOT",
        "plants*) OR (NEAR(",
        'prompt:"x" ^water -light',
        "'; DROP TABLE runs; --",
        "\\\" \\' {}[]",
    ],
)
def test_history_search_box_takes_any_text(filled, query):
    at = AppTest.from_file(HISTORY, default_timeout=30).run()
    at.text_input(key="hist_search").input(query).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.dataframe or any("No conversations match" in i.value for i in at.info)


def test_history_search_with_quotes_still_finds_the_words(filled):
    _, plants, _ = filled
    at = AppTest.from_file(HISTORY, default_timeout=30).run()
    at.text_input(key="hist_search").input('"sunflowers" AND (').run()
    assert not at.exception and table_ids(at) == [plants.conversation_id]


# ---------------------------------------------------------------- Evaluate: an uploaded file

browser = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")


@browser
@pytest.mark.browser
def test_evaluate_page_uploaded_question_file_with_bad_rows(tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    files = {
        "missing.jsonl": (
            '{"prompt": "What is 2 + 2?", "answer": 4}\n{"answer": 5}\n',
            "missing.jsonl line 2: `prompt` is missing: every question needs one",
        ),
        "broken.jsonl": (
            '{"prompt": "ok"}\n\n{"prompt": "no end quote}\n',
            "broken.jsonl line 3 is not valid JSON",
        ),
        "cells.csv": (
            "prompt,answer\nWhat is 7 x 8?,56\nToo,many,cells\n",
            "cells.csv row 3 has more cells than the header has columns",
        ),
        "turns.jsonl": (
            '{"turns": ["Hi?", "And?"]}\n{"turns": "How do plants grow?"}\n',
            'turns.jsonl line 2: `turns` is "How do plants grow?": write it as a list of one '
            "or two non-empty strings",
        ),
    }
    for name, (text, _) in files.items():
        (tmp_path / name).write_text(text)
    env = {"MOA_DB": str(tmp_path / "moa.db"), "MOA_PRESETS_DIR": str(tmp_path / "presets")}
    with loopback_netns(), AppServer(env) as server:
        server.wait_healthy(60)
        with playwright_api.sync_playwright() as p:
            chromium = launch_chromium(p)
            page = chromium.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server.url + "Evaluate")
            page.get_by_text("My own file").click()
            upload = page.locator('[data-testid="stFileUploader"] input[type=file]')
            for name, (_, expected) in files.items():
                upload.set_input_files(tmp_path / name)
                alert = page.locator('[data-testid="stAlert"]', has_text=expected)
                alert.wait_for(timeout=30_000)
                assert page.get_by_test_id("stException").count() == 0
                text = alert.inner_text()
                assert name in text and expected in text
            chromium.close()
    assert "Traceback" not in server.log.decode(errors="replace")
    assert not (tmp_path / "moa.db").exists() or Store(tmp_path / "moa.db").count_runs() == 0
