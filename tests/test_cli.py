"""`python -m moa`: the documented JSON, exit codes 0/1/2, and one clear line for bad input."""

from __future__ import annotations

import json
import sys

import pytest

from moa import cli
from moa.config import dumps
from tests.conftest import make_config, moa


@pytest.fixture
def config_file(fake, tmp_path):
    path = tmp_path / "loop.toml"
    path.write_text(dumps(make_config(fake, ["a", "b", "c"], name="Loopback trio")))
    return path


def test_run_json_prints_the_documented_object(fake, config_file, db_path):
    fake.set("a", text="Salt early. Taste as you go.")
    fake.set("agg", text="Taste as you go. Salt early. Rest the meat.")
    proc = moa(
        "run",
        "Give two tips for cooking.",
        "--config",
        str(config_file),
        "--json",
        "--db",
        str(db_path),
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # stdout is only the JSON; progress went to stderr
    assert "proposers" in proc.stderr and "run id" in proc.stderr
    assert out["status"] == "ok" and out["error"] is None
    assert out["final"] == {
        **out["final"],
        "model": "openai/agg",
        "text": "Taste as you go. Salt early. Rest the meat.",
    }
    assert len(out["candidates"]) == 3
    c0 = out["candidates"][0]
    assert set(c0) >= {
        "layer",
        "index",
        "model",
        "label",
        "status",
        "text",
        "error",
        "latency_s",
        "ttft_s",
        "tokens_in",
        "tokens_out",
        "cost_usd",
    }
    assert (c0["layer"], c0["index"], c0["model"], c0["label"]) == (1, 0, "openai/a", "a")
    assert c0["cost_usd"] is None  # unknown price: null, never 0
    assert set(out["usage"]) == {"tokens_in", "tokens_out", "cost_usd", "wall_s"}
    kept = [a for a in out["attribution"] if not a["novel"]]
    assert {s["candidate"] for a in kept for s in a["sources"]} == {0}
    assert any(a["novel"] for a in out["attribution"])  # "Rest the meat." is the aggregator's own
    # It was logged: show and history find it.
    shown = json.loads(moa("show", out["run_id"], "--json", "--db", str(db_path)).stdout)
    assert shown["final"]["text"] == out["final"]["text"]
    hist = moa("history", "--search", "meat", "--db", str(db_path), "--json")
    assert [r["conversation_id"] for r in json.loads(hist.stdout)] == [out["conversation_id"]]
    assert out["turn"] == 1


def test_run_exits_1_when_every_proposer_fails(fake, config_file, db_path):
    for m in "abc":
        fake.set(m, fault="empty")
    proc = moa("run", "hello", "--config", str(config_file), "--json", "--db", str(db_path))
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["status"] == "failed"
    assert "Traceback" not in proc.stderr


def test_overrides_replace_models_and_layers(fake, config_file, db_path, capsys):
    code = cli.main(
        [
            "run",
            "hi",
            "--config",
            str(config_file),
            "--proposer",
            f"openai/p1@{fake.base_url}",
            "--aggregator",
            f"openai/p2@{fake.base_url}",
            "--layers",
            "2",
            "--json",
            "--db",
            str(db_path),
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [(c["layer"], c["model"]) for c in out["candidates"]] == [
        (1, "openai/p1"),
        (2, "openai/p1"),
    ]
    assert out["final"]["model"] == "openai/p2"


def test_a_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path):
    proc = moa("run", "hello", "--config", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: config file {tmp_path / 'nope.toml'} does not exist"
    ]


BAD_TOML = {
    "malformed": ("name = \n[[", "is not valid TOML"),
    "unknown key": (
        'colour = "red"\n[aggregator]\nmodel="openai/x"\n[[proposers]]\nmodel="openai/x"',
        "unknown key 'colour'",
    ),
    "wrong type": (
        'layers = "two"\n[aggregator]\nmodel="openai/x"\n[[proposers]]\nmodel="openai/x"',
        "layers must be an integer",
    ),
    "layers out of range": (
        'layers = 9\n[aggregator]\nmodel="openai/x"\n[[proposers]]\nmodel="openai/x"',
        "layers = 9 is out of range: allowed 1..4",
    ),
    "too many proposers": (
        '[aggregator]\nmodel="openai/x"\n' + '[[proposers]]\nmodel="openai/x"\n' * 9,
        "proposers: 9 given, allowed 1..8",
    ),
    "temperature": (
        '[aggregator]\nmodel="openai/x"\ntemperature=7\n[[proposers]]\nmodel="openai/x"',
        "aggregator.temperature = 7 is out of range",
    ),
    "no proposers": ('[aggregator]\nmodel="openai/x"', "[[proposers]] is missing"),
}


@pytest.mark.parametrize("case", BAD_TOML)
def test_bad_config_files_name_the_problem(case, tmp_path, db_path, capsys):
    text, message = BAD_TOML[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert cli.main(["run", "hello", "--config", str(path), "--db", str(db_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "   "], "the prompt is empty"),
        (["run", "hi", "--layers", "0"], "layers = 0 is out of range: allowed 1..4"),
        (["run", "hi", "--layers", "five"], "invalid int value"),
        (["run", "hi", "--proposer", "nosuchprovider/model"], "not a model id litellm knows"),
        (["run", "hi", "--proposer", "openai/gpt-4o-mini"], "needs OPENAI_API_KEY"),
        (["run", "hi", "--proposer", "local/no-such-model"], "unknown local model"),
        (
            ["run", "hi", "--preset", "../../etc/passwd"],
            "preset name '../../etc/passwd' is not allowed",
        ),
        (["run", "hi", "--preset", "no-such-preset"], "no preset named 'no-such-preset'"),
        (["run", "hi", "--config", "a.toml", "--preset", "b"], "not allowed with argument"),
        (["show", "nope"], "no conversation or run with id 'nope'"),
        (["history", "--limit", "0"], "--limit must be 1 or more"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_command_lines_exit_2_naming_the_fix(args, message, db_path, capsys):
    with pytest.raises(SystemExit) as exc:
        sys.exit(
            cli.main(
                [*args, "--db", str(db_path)] if args[0] in ("run", "show", "history") else args
            )
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_corrupted_database_is_bad_input(fake, config_file, tmp_path, capsys):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 1000)
    assert cli.main(["run", "hi", "--config", str(config_file), "--db", str(bad)]) == 2
    assert "not a usable SQLite database" in capsys.readouterr().err
    assert fake.requests == []  # nothing was called


def test_models_lists_local_models_and_key_names_never_values(monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-123456")
    assert cli.main(["models", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["keys"]["OPENAI_API_KEY"] is True and out["keys"]["ANTHROPIC_API_KEY"] is False
    assert {m["id"] for m in out["local"]} == {
        "local/smollm2-135m",
        "local/qwen2.5-coder-0.5b",
        "local/qwen2.5-coder-1.5b",
        "local/gemma3-270m",
    }
    gemma = next(m for m in out["local"] if m["id"] == "local/gemma3-270m")
    assert gemma["licence"] == "Gemma Terms of Use" and gemma["instruction_tuned"] is False
    assert cli.main(["models"]) == 0
    text = capsys.readouterr().out
    assert "OPENAI_API_KEY" in text and "sk-secret" not in text
    assert "Gemma Terms of Use, pretrained (not instruction-tuned)" in text


def test_piped_stdout_gets_only_the_fallbacks_answer(fake, tmp_path, db_path):
    """The aggregator dies mid-answer; piped, stdout holds just the fallback's final answer."""
    from moa.config import ModelSpec

    cfg = make_config(fake, ["a"], name="fallback")
    cfg.fallback_aggregator = ModelSpec(model="openai/backup", api_base=fake.base_url)
    path = tmp_path / "fb.toml"
    path.write_text(dumps(cfg))
    fake.set("agg", fault="reset", fault_after_words=4, text="half of an answer that dies")
    fake.set("backup", text="The backup answer.")
    proc = moa("run", "hello", "--config", str(path), "--db", str(db_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "The backup answer.\n"
    assert "Traceback" not in proc.stderr
