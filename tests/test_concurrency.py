"""Per-endpoint concurrency limits ([concurrency]) and the message for a stream cut off by a
server that serves one request at a time (the loopback server plays llama-cpp-python's part;
tests/test_llamacpp_server.py runs the real one)."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from moa import config as c
from moa import engine
from moa.config import ConfigError
from tests.conftest import make_config

CONFIG = """
name = "Served"

[concurrency]
local = 1
"HTTP://127.0.0.1:8080/v1/" = 2

[aggregator]
model = "openai/agg"
api_base = "http://127.0.0.1:8080/v1"

[[proposers]]
model = "openai/a"
api_base = "http://127.0.0.1:8080/v1"
"""


def test_the_concurrency_table_loads_normalised_and_round_trips():
    cfg = c.loads(CONFIG)
    # The URL key is matched against api_base whatever its case or trailing slash.
    assert cfg.concurrency == {"local": 1, "http://127.0.0.1:8080/v1": 2}
    assert c.concurrency_for(cfg, cfg.proposers[0]) == ("http://127.0.0.1:8080/v1", 2)
    assert c.to_dict(cfg)["concurrency"] == cfg.concurrency
    text = c.dumps(cfg)
    assert '"http://127.0.0.1:8080/v1" = 2' in text and '"local" = 1' in text
    assert c.loads(text) == cfg
    # Without the table nothing is written (old presets stay byte-identical).
    plain = replace(cfg, concurrency={})
    assert "concurrency" not in c.dumps(plain) and c.loads(c.dumps(plain)) == plain


def test_a_provider_entry_limits_that_provider_and_unknown_providers_are_fine():
    cfg = c.loads(CONFIG.replace("local = 1", "openai = 3\nsomeday-provider = 1"))
    other = replace(cfg.proposers[0], api_base="http://10.0.0.5:8000/v1")
    assert c.concurrency_for(cfg, other) == ("openai", 3)  # no entry for its api_base
    assert c.concurrency_for(cfg, cfg.proposers[0])[0] == "http://127.0.0.1:8080/v1"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("local = 0", 'concurrency."local" = 0 is out of range: the most calls at once, 1..64'),
        ("local = 65", 'concurrency."local" = 65 is out of range'),
        ('local = "2"', 'concurrency."local" must be an integer'),
        ("local = 1.5", 'concurrency."local" must be an integer'),
        ("local = true", 'concurrency."local" must be an integer'),
        ('"ftp://host/v1" = 1', "concurrency.\"ftp://host/v1\" = 'ftp://host/v1' is not an http"),
        ('"has space" = 1', 'concurrency."has space": not a provider name'),
        ("local = { a = 1 }", 'concurrency."local" must be an integer'),
    ],
)
def test_bad_concurrency_entries_name_the_key(table, message):
    text = CONFIG.replace('local = 1\n"HTTP://127.0.0.1:8080/v1/" = 2', table)
    with pytest.raises(ConfigError) as err:
        c.loads(text, source="served.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("served.toml: ")


def test_concurrency_must_be_a_table():
    text = "concurrency = 1\n" + CONFIG.replace("[concurrency]\nlocal = 1\n", "").replace(
        '"HTTP://127.0.0.1:8080/v1/" = 2\n', ""
    )
    with pytest.raises(ConfigError, match="concurrency must be a table"):
        c.loads(text)


def _one_at_a_time(fake, *models):
    for m in models:
        fake.set(
            m, text=" ".join(f"w{i}" for i in range(30)), token_delay_s=0.01, one_at_a_time=True
        )


def test_without_a_limit_a_cut_off_stream_gets_a_message_naming_concurrency(fake):
    _one_at_a_time(fake, "a", "b", "agg")
    record = engine.run_sync(make_config(fake, ["a", "b"]), "Why is the sky blue?")
    failed = [p for p in record.proposer_calls if p.status == "failed"]
    assert failed, [p.status for p in record.proposer_calls]
    base = fake.base_url
    for call in failed:
        assert "without a finish_reason" in call.error
        assert f'`[concurrency]` with `"{base}" = 1`' in call.error
        assert "one request at a time" in call.error
        assert "empty answer" not in call.error


def test_with_a_limit_calls_to_the_server_take_turns_and_all_succeed(fake):
    _one_at_a_time(fake, "a", "b", "agg")
    cfg = replace(make_config(fake, ["a", "b"], layers=2), concurrency={fake.base_url: 1})
    record = engine.run_sync(c.validate(cfg), "Why is the sky blue?")
    assert record.status == "ok", record.error
    assert [p.status for p in record.calls] == ["ok"] * 5
    assert fake.max_active == 1
    assert all(p.text.endswith("w29") for p in record.calls)


def test_the_limit_holds_across_runs_in_one_process(fake):
    _one_at_a_time(fake, "a", "b", "agg")
    cfg = c.validate(replace(make_config(fake, ["a", "b"]), concurrency={fake.base_url: 1}))
    records = []

    def one() -> None:  # each thread has its own event loop, like two browser sessions
        records.append(engine.run_sync(cfg, "Why is the sky blue?"))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status for r in records] == ["ok", "ok"]
    assert fake.max_active == 1 and len(fake.requests) == 6


def test_a_lone_empty_answer_keeps_its_own_message(fake):
    _one_at_a_time(fake, "a", "agg")
    fake.set("a", fault="empty")
    cfg = c.validate(replace(make_config(fake, ["a"]), concurrency={fake.base_url: 1}))
    record = engine.run_sync(cfg, "hello")
    (a,) = record.proposer_calls
    assert a.status == "failed" and a.error == "the model returned an empty answer"


def test_two_spellings_of_one_server_share_one_slot_and_beat_the_provider_entry(fake):
    """Two runs name the same server, one with a trailing slash and a looser `openai` entry:
    one queue for the server across both runs."""
    _one_at_a_time(fake, "a", "b", "agg")
    base = make_config(fake, ["a", "b"])
    one = c.validate(replace(base, concurrency={fake.base_url: 1}))
    also_one = c.validate(replace(base, concurrency={fake.base_url + "/": 1, "openai": 5}))
    records = []
    threads = [
        threading.Thread(target=lambda cfg=cfg: records.append(engine.run_sync(cfg, "Hi")))
        for cfg in (one, also_one)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status for r in records] == ["ok", "ok"]
    assert fake.max_active == 1
