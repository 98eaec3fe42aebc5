"""Crash safety: the app and the CLI killed with SIGKILL mid-run leave an `interrupted` run.

Each test starts a run of one fast and two slow streaming proposers, waits until the fast one is
saved as finished and the slow ones' partial text has been flushed to the database at least
twice, kills the process (no handler, no `finally` runs), and then checks what the next opener
of the database finds: the run `interrupted`, the finished call whole, the partial text of the
cut-off calls, and a database that passes `PRAGMA integrity_check`.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from moa import config as config_mod
from moa.config import dumps
from moa.store import Store
from tests.appserver import CHROMIUM, ROOT, AppServer, launch_chromium, submit_prompt
from tests.conftest import make_config
from tests.fakeserver import FakeServer

FAST_TEXT = "The fast proposer answers at once. It says that tides follow the moon."
SLOW_TEXT = " ".join(f"word{i}" for i in range(400))  # 400 words x 0.05 s: 20 s of streaming
PROMPT = "Why are there tides?"


def _slow_models(fake: FakeServer) -> None:
    fake.set("fast", text=FAST_TEXT)
    fake.set("slow1", text=SLOW_TEXT, token_delay_s=0.05)
    fake.set("slow2", text=SLOW_TEXT, token_delay_s=0.05)
    fake.set("agg", text="The aggregator never gets to answer.")


@dataclass
class Seen:
    """What a reader of the database saw while the run was live."""

    run_id: str | None = None
    status: str | None = None
    calls: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (status, text)
    lengths: dict[str, set[int]] = field(default_factory=dict)  # label -> partial lengths seen

    def mid_run(self) -> bool:
        """The fast call saved as finished, each slow one's partial text saved twice, growing."""
        fast = self.calls.get("fast")
        if self.status != "running" or fast is None or fast[0] != "ok":
            return False
        return all(
            self.calls.get(s, ("", ""))[0] == "running" and len(self.lengths.get(s, ())) >= 2
            for s in ("slow1", "slow2")
        )


def _read(db: Path) -> tuple[str | None, str | None, dict[str, tuple[str, str]]]:
    """(run id, run status, label -> (call status, text)), read without opening a Store: a
    Store would itself mark dead runs interrupted, which is what the tests want to see others do."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        row = conn.execute("SELECT id, status FROM runs ORDER BY rowid DESC LIMIT 1").fetchone()
        if row is None:
            return None, None, {}
        calls = conn.execute(
            "SELECT label, status, text FROM calls WHERE run_id = ?", [row[0]]
        ).fetchall()
        return row[0], row[1], {label: (status, text or "") for label, status, text in calls}
    finally:
        conn.close()


def _watch(db: Path, alive, timeout_s: float) -> Seen:
    """Poll the database until the run is mid-run (see Seen.mid_run); fail on timeout."""
    seen = Seen()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        time.sleep(0.05)
        if not db.exists():
            continue
        try:
            seen.run_id, seen.status, seen.calls = _read(db)
        except sqlite3.OperationalError:
            continue  # the tables are not created yet
        for label, (status, text) in seen.calls.items():
            if status == "running" and text:
                seen.lengths.setdefault(label, set()).add(len(text))
        if seen.mid_run():
            return seen
    calls = {label: (status, len(text)) for label, (status, text) in seen.calls.items()}
    pytest.fail(
        f"the run never reached the kill point (partial text not flushed?): run {seen.status}, "
        f"calls (status, chars) {calls}, partial lengths seen {seen.lengths}"
    )


def _check_recovered(db: Path, before: Seen) -> None:
    """The run is interrupted; finished calls whole; cut-off calls keep their partial text."""
    run_id, status, calls = _read(db)
    assert run_id == before.run_id
    assert status == "interrupted"
    assert calls["fast"] == ("ok", FAST_TEXT)
    for slow in ("slow1", "slow2"):
        state, text = calls[slow]
        assert state == "interrupted", calls
        # At least as much as had been seen before the kill, a true prefix, and not the end.
        assert len(text) >= max(before.lengths[slow]), (slow, text)
        assert SLOW_TEXT.startswith(text) and len(text) < len(SLOW_TEXT)
        assert text.startswith("word0 word1 word2")
    assert calls["agg"] == ("interrupted", "")  # queued behind the proposers, never started
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        error = conn.execute("SELECT error FROM runs WHERE id = ?", [run_id]).fetchone()[0]
        assert "stopped before the run finished" in error
    finally:
        conn.close()


# ---------------------------------------------------------------- the command line


def test_cli_killed_mid_run_leaves_an_interrupted_run_with_partial_text(fake, tmp_path):
    _slow_models(fake)
    cfg = tmp_path / "slow.toml"
    cfg.write_text(dumps(make_config(fake, ["fast", "slow1", "slow2"], name="Slow")))
    db = tmp_path / "moa.db"
    log = (tmp_path / "cli.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moa", "run", PROMPT, "--config", str(cfg), "--db", str(db)],
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    try:
        seen = _watch(db, lambda: proc.poll() is None, timeout_s=90)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        # Reaped: a zombie still answers kill(pid, 0), so it would look alive to the store.
        proc.wait(timeout=10)
        log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "cli.log").read_text()
    assert _read(db)[1] == "running"  # what the crash left behind

    store = Store(db)  # the next process to open the database notices the dead pid
    _check_recovered(db, seen)
    (summary,) = store.search_runs()
    assert (summary.id, summary.status) == (seen.run_id, "interrupted")
    record = store.get_run(seen.run_id)
    assert [c.status for c in record.proposer_calls] == ["ok", "interrupted", "interrupted"]


def test_a_run_left_by_an_earlier_process_with_our_pid_is_recovered(tmp_path):
    """A container restart gives the app the same pid (often 1) as the process that died: the
    run it left `running` must not look alive just because that pid is ours now."""
    db = tmp_path / "moa.db"
    script = (
        "import sys; sys.path.insert(0, sys.argv[2])\n"
        "from moa.config import ModelSpec, RunConfig\n"
        "from moa.records import RunRecord\n"
        "from moa.store import Store\n"
        "cfg = RunConfig(proposers=[ModelSpec(model='openai/x')], "
        "aggregator=ModelSpec(model='openai/x'))\n"
        "Store(sys.argv[1]).start_run(RunRecord(run_id='r1', config=cfg, prompt='p'))\n"
    )
    subprocess.run([sys.executable, "-c", script, str(db), str(ROOT)], check=True, timeout=60)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE runs SET pid = ? WHERE id = 'r1'", [os.getpid()])
    conn.close()
    assert Store(db).get_run("r1").status == "interrupted"


# ---------------------------------------------------------------- the web app


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_app_killed_mid_run_shows_the_run_interrupted_after_a_restart(tmp_path, netns):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    fake = FakeServer().start()  # inside the namespace, like the app and Chromium
    _slow_models(fake)
    presets = tmp_path / "presets"
    config_mod.save_preset(
        make_config(fake, ["fast", "slow1", "slow2"], name="Slow"), "slow", presets
    )
    db = tmp_path / "moa.db"
    env = {"MOA_DB": str(db), "MOA_PRESETS_DIR": str(presets), "MOA_PRESET": ""}
    first = AppServer(env).start()
    second: AppServer | None = None
    try:
        first.wait_healthy(60)
        with sync_api.sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(first.url)
            page.get_by_role("button", name="Run").wait_for(timeout=60_000)
            page.get_by_text("Proposer 3").wait_for(timeout=30_000)  # the preset is loaded
            submit_prompt(page, PROMPT)
            # The page shows it too: the fast card done, the slow ones streaming.
            page.locator(".moa-card[data-call='1-proposer-0'][data-status=ok]").wait_for(
                timeout=60_000
            )
            page.locator(
                ".moa-card[data-call='1-proposer-2'][data-status=running] .moa-tail"
            ).wait_for(timeout=30_000)
            seen = _watch(db, lambda: first.proc.poll() is None, timeout_s=60)
            os.kill(first.proc.pid, signal.SIGKILL)
            first.proc.wait(timeout=10)  # reaped, so its pid is really gone
            assert first.proc.returncode == -signal.SIGKILL
            assert _read(db)[1] == "running"

            # The same database, a new server: opening a page opens the store, which recovers.
            second = AppServer(env).start()
            second.wait_healthy(60)
            page.goto(second.url + "History")
            page.get_by_text(re.compile(r"\b1 conversation matches")).wait_for(timeout=60_000)
            page.goto(second.url + f"History?run={seen.run_id}")
            page.locator(".moa-runhead .moa-interrupted").wait_for(timeout=60_000)
            fast = page.locator(".moa-card[data-call='1-proposer-0']")
            assert fast.get_attribute("data-status") == "ok"
            assert "tides follow the moon" in fast.locator(".moa-text").inner_text()
            for i in (1, 2):
                card = page.locator(f".moa-card[data-call='1-proposer-{i}']")
                assert card.get_attribute("data-status") == "interrupted"
                assert card.locator(".moa-text").inner_text().startswith("word0 word1")
            page_text = page.locator("body").inner_text()
            browser.close()
        assert "database is locked" not in page_text
        _check_recovered(db, seen)  # done by the restarted app, not by this test
    finally:
        first.stop()
        if second is not None:
            second.stop()
        fake.stop()
    log = (first.log + (second.log if second else b"")).decode(errors="replace")
    assert "Traceback" not in log, log
