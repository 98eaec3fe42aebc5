"""Runs and evaluations left `running` by a dead process whose pid a live process now holds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlite_utils

from moa import store as store_mod
from moa.config import ModelSpec, RunConfig
from moa.evalstore import EvalStore
from moa.migrations import migrate
from moa.records import RunRecord, pid_alive, process_start
from moa.store import Store

pytestmark = pytest.mark.skipif(
    not os.path.exists(f"/proc/{os.getpid()}/stat"), reason="needs Linux /proc"
)


@pytest.fixture
def stranger():
    """A live process that is not ours to know about (it would hold a reused pid)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _config() -> RunConfig:
    return RunConfig(
        proposers=[ModelSpec(model="openai/x")], aggregator=ModelSpec(model="openai/x")
    )


def _status(db, table: str, row_id: str) -> str:
    return db.execute(f"SELECT status FROM {table} WHERE id = ?", [row_id]).fetchone()[0]


def test_process_start_reads_proc_and_tells_a_reused_pid_apart(stranger):
    start = process_start(stranger.pid)
    assert isinstance(start, int) and start > 0
    assert process_start(stranger.pid) == start  # stable for the life of the process
    assert pid_alive(stranger.pid, start)
    assert not pid_alive(stranger.pid, start + 1)  # same pid, another process
    assert pid_alive(stranger.pid)  # without a start time: only whether the pid exists
    assert RunRecord(run_id="r", config=_config(), prompt="p").pid_start == process_start(
        os.getpid()
    )


def test_a_run_whose_pid_was_reused_by_a_live_process_is_recovered(tmp_path, stranger):
    path = tmp_path / "moa.db"
    store = Store(path)
    live = RunRecord(run_id="live", config=_config(), prompt="p")
    store.start_run(live)  # this process's own run, still being written
    for rid in ("reused", "owned", "legacy"):
        store.start_run(RunRecord(run_id=rid, config=_config(), prompt="p"))
    # Rows as another process left them: not among the runs this process is writing.
    store_mod._ACTIVE_RUNS.difference_update({"reused", "owned", "legacy"})
    start = process_start(stranger.pid)
    with store._write() as conn:
        # Its writer died and the stranger was given the same pid later: another start time.
        conn.execute(
            "UPDATE runs SET pid = ?, pid_start = ? WHERE id = 'reused'", [stranger.pid, start - 1]
        )
        # The stranger really is its writer (same pid, same start time): alive, left alone.
        conn.execute(
            "UPDATE runs SET pid = ?, pid_start = ? WHERE id = 'owned'", [stranger.pid, start]
        )
        # Written before m007 (no start time): a live pid still counts as alive.
        conn.execute(
            "UPDATE runs SET pid = ?, pid_start = NULL WHERE id = 'legacy'", [stranger.pid]
        )
    assert store.db["runs"].get("live")["pid_start"] == process_start(os.getpid())

    assert store.recover_interrupted() == 1
    db = Store(path).db
    assert _status(db, "runs", "reused") == "interrupted"
    assert _status(db, "runs", "owned") == "running"
    assert _status(db, "runs", "legacy") == "running"
    assert _status(db, "runs", "live") == "running"  # the current live run is not touched
    assert store.get_run("live").pid_start == process_start(os.getpid())


def test_an_evaluation_whose_pid_was_reused_is_recovered(tmp_path, stranger):
    store = Store(tmp_path / "moa.db")
    evals = EvalStore(store)
    for eid in ("reused", "owned", "mine"):
        evals.create({"id": eid, "name": eid, "created_at": "2026-01-01T00:00:00+00:00"})
    start = process_start(stranger.pid)
    with store._write() as conn:
        conn.execute(
            "UPDATE evals SET pid = ?, pid_start = ? WHERE id = 'reused'", [stranger.pid, start + 7]
        )
        conn.execute(
            "UPDATE evals SET pid = ?, pid_start = ? WHERE id = 'owned'", [stranger.pid, start]
        )
    assert evals.recover_interrupted() == 1
    assert _status(store.db, "evals", "reused") == "interrupted"
    assert _status(store.db, "evals", "owned") == "running"
    assert _status(store.db, "evals", "mine") == "running"  # this process's own evaluation


def test_m007_upgrades_a_database_made_before_it(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    migrate(db, upto="m005_fallback_aggregator_index")
    assert "pid_start" not in db["runs"].columns_dict
    db.conn.close()
    store = Store(path)
    assert "pid_start" in store.db["runs"].columns_dict
    assert "pid_start" in store.db["evals"].columns_dict
    names = {r["name"] for r in store.db["_moa_migrations"].rows}
    assert "m007_run_process_start" in names
