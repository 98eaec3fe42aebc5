"""The SQLite log: round trip, search, migrations, crash recovery, concurrent writers, secrets."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest
import sqlite_utils

from moa import engine
from moa.migrations import migrate
from moa.store import Store, StoreError, StoreWriter, fts_query
from tests.conftest import ROOT, make_config


def logged_run(fake, store, prompt="How do tides work?", **kw):
    cfg = make_config(fake, kw.pop("proposers", ["a", "b"]), **kw)
    return engine.run_sync(cfg, prompt, on_event=StoreWriter(store))


def test_a_run_round_trips_through_the_database(fake, tmp_path):
    store = Store(tmp_path / "moa.db")
    fake.set("a", text="Tides come from the moon's pull on the oceans. Wind matters less.")
    fake.set("agg", text="Tides come from the moon's pull.")
    record = logged_run(fake, store)
    back = store.get_run(record.run_id)
    assert back.status == "ok" and back.prompt == "How do tides work?"
    assert back.final_text == "Tides come from the moon's pull."
    assert back.config == record.config
    assert [c.to_dict() for c in back.calls] == [c.to_dict() for c in record.calls]
    row = store.db["runs"].get(record.run_id)
    assert row["proposers"] == "openai/a, openai/b" and row["aggregator"] == "openai/agg"
    assert row["tokens_out"] == record.usage()["tokens_out"] > 0
    # What the aggregator kept is stored per call, for charts across many runs.
    shares = {
        c["label"]: (c["share"], c["main_source"])
        for c in store.db["calls"].rows_where("role = 'proposer'")
    }
    assert shares["a"][0] is not None and sum(s for s, _ in shares.values()) <= 1.0
    assert shares["a"][1] == 1 and shares["b"][1] == 0  # "a" was the main source


def test_search_finds_runs_by_words_in_prompt_or_answer(fake, tmp_path):
    store = Store(tmp_path / "moa.db")
    fake.set("agg", text="Sourdough needs a lively starter.")
    bread = logged_run(fake, store, prompt="How do I bake bread?")
    fake.set("agg", text="Orbits follow Kepler's laws.")
    space = logged_run(fake, store, prompt="Explain planets")
    assert [r.id for r in store.search_runs("starter")] == [bread.run_id]
    assert [r.id for r in store.search_runs("planets")] == [space.run_id]
    assert [r.id for r in store.search_runs("")] == [space.run_id, bread.run_id]
    assert store.search_runs("starter", status="failed") == []
    assert [r.id for r in store.search_runs(model="openai/agg")] == [space.run_id, bread.run_id]


@pytest.mark.parametrize(
    "query",
    [
        '"unbalanced',
        "AND OR NOT",
        "star*",
        "a NEAR(b)",
        "col:val",
        "(((",
        "'; DROP TABLE runs;--",
        "^",
    ],
)
def test_search_with_fts_syntax_answers_instead_of_erroring(fake, tmp_path, query):
    store = Store(tmp_path / "moa.db")
    logged_run(fake, store)
    store.search_runs(query)  # must not raise
    assert store.count_runs() == 1
    assert "MATCH" not in fts_query(query)


def test_a_database_from_the_first_migration_is_upgraded(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    assert migrate(db, upto="m001_runs_and_calls") == ["m001_runs_and_calls"]
    db["runs"].insert(
        {
            "id": "old1",
            "created_at": "2026-01-01T00:00:00+00:00",
            "prompt": "ancient prompt",
            "final_text": "kept answer",
            "status": "ok",
            "config_json": "{}",
        }
    )
    assert not db["runs_fts"].exists()
    db.conn.close()
    store = Store(path)
    names = [r["name"] for r in store.db["_moa_migrations"].rows]
    assert names[:3] == ["m001_runs_and_calls", "m002_full_text_search", "m003_attribution_columns"]
    assert [r.id for r in store.search_runs("ancient")] == ["old1"]


def test_a_run_left_running_by_a_dead_process_becomes_interrupted(fake, tmp_path):
    path = tmp_path / "moa.db"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from moa import engine
        from moa.store import Store, StoreWriter
        from tests.conftest import make_config
        from tests.fakeserver import FakeServer
        class S: base_url = {fake.base_url!r}
        store = Store({str(path)!r})
        writer = StoreWriter(store)
        def on_event(e):
            writer(e)
            if type(e).__name__ == "CallFinished" and e.call.label == "fast":
                os._exit(9)  # die like SIGKILL: no cleanup, no finally
        engine.run_sync(make_config(S, ["fast", "slow"]), "hello", on_event=on_event)
    """)
    fake.set("slow", text="x " * 300, token_delay_s=0.01)  # streams for ~3 s
    # Dies ~1.2 s in: the slow call has streamed long enough for a flush after its first one
    # (every 0.5 s), even on a loaded machine.
    fake.set("fast", delay_s=1.2)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 9, proc.stderr
    store = Store(path)
    (summary,) = store.search_runs()
    assert summary.status == "interrupted"
    record = store.get_run(summary.id)
    fast, slow = record.proposer_calls
    assert fast.status == "ok" and fast.text
    assert slow.status == "interrupted" and slow.text.startswith("x x")  # partial text was flushed
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "moa.db"
    Store(path)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from moa.config import ModelSpec, RunConfig
        from moa.records import CallRecord, RunRecord
        from moa.store import Store
        store = Store({str(path)!r})
        cfg = RunConfig(proposers=[ModelSpec(model="openai/x")], aggregator=ModelSpec(model="openai/x"))
        for i in range(150):
            r = RunRecord(run_id=f"{{sys.argv[1]}}-{{i}}", config=cfg, prompt=f"prompt {{i}}")
            r.calls = [CallRecord(1, "proposer", 0, "openai/x", "x", text="t", status="ok"),
                       CallRecord(2, "aggregator", 0, "openai/x", "x", text="final", status="ok")]
            store.start_run(r)
            r.status = "ok"
            store.finish_run(r)
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, tag], stderr=subprocess.PIPE)
        for tag in "pq"
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    store = Store(path)
    assert store.count_runs() == 300
    assert store.db.execute("SELECT count(*) FROM calls").fetchone()[0] == 600
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_canary_key_never_reaches_the_database(fake, tmp_path, monkeypatch):
    canary = "sk-canary-0123456789abcdef"
    monkeypatch.setenv("LOOPBACK_API_KEY", canary)
    fake.set("leaky", fault="500", echo_auth=True)
    store = Store(tmp_path / "moa.db")
    cfg = make_config(fake, ["ok", "leaky"])
    for spec in cfg.models():
        spec.api_key_env = "LOOPBACK_API_KEY"
    record = engine.run_sync(
        cfg,
        f"my key is {canary[:6]}",
        on_event=StoreWriter(store),
        limits=engine.Limits(max_retries=0),
    )
    # The key really was sent (so the test can fail): the server saw it in the header.
    headers = {k.lower(): v for k, v in fake.requests[0]["headers"].items()}
    assert headers["authorization"] == f"Bearer {canary}"
    leaky = record.proposer_calls[1]
    assert leaky.status == "failed" and "[REDACTED]" in leaky.error
    store.close()
    for f in tmp_path.iterdir():
        assert canary.encode() not in f.read_bytes(), f"key leaked into {f.name}"


def test_a_corrupted_database_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "moa.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database.*MOA_DB"):
        Store(path)
    assert path.read_bytes().startswith(b"this is not sqlite")  # left untouched


def test_wal_mode_is_on(tmp_path):
    store = Store(tmp_path / "moa.db")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert isinstance(store.db.conn, sqlite3.Connection)


def test_model_filter_matches_whole_model_ids_and_counts_cap(fake, tmp_path):
    store = Store(tmp_path / "moa.db")
    mini = logged_run(fake, store, proposers=["gpt-4o-mini"])
    full = logged_run(fake, store, proposers=["gpt-4o"])
    assert [r.id for r in store.search_runs(model="openai/gpt-4o")] == [full.run_id]
    assert [r.id for r in store.search_runs(model="openai/gpt-4o-mini")] == [mini.run_id]
    assert store.count_matching(model="openai/gpt-4o") == 1
    assert store.count_matching() == 2 and store.count_matching(cap=1) == 2  # "1+": cap + 1
    assert store.models() == ["openai/agg", "openai/gpt-4o", "openai/gpt-4o-mini"]


def test_model_filter_finds_a_run_answered_by_the_fallback_aggregator(fake, tmp_path):
    from moa.config import ModelSpec

    store = Store(tmp_path / "moa.db")
    fake.set("agg", fault="500")
    fake.set("backup", text="The backup wrote this.")
    cfg = make_config(fake, ["a"], name="fb")
    cfg.fallback_aggregator = ModelSpec(model="openai/backup", api_base=fake.base_url)
    saved = engine.run_sync(cfg, "hello", on_event=StoreWriter(store))
    logged_run(fake, store)  # another run, no fallback
    assert saved.status == "ok"
    assert "openai/backup" in store.models()
    assert [r.id for r in store.search_runs(model="openai/backup")] == [saved.run_id]
    assert store.count_matching(model="openai/backup") == 1
