"""Issue 14 "first hour", engine side: Aggregate now, stop reasons, retries that hit the timeout.

All against the loopback server over real HTTP, with a real SQLite store.
"""

from __future__ import annotations

import re
import threading

from moa import engine, events, export
from moa.store import Store, StoreWriter
from tests.conftest import make_config


def _run_in_thread(cfg, cancel, **kw):
    out: dict = {}
    seen: list = []

    def target() -> None:
        out["record"] = engine.run_sync(
            cfg,
            "How do plants grow?",
            on_event=events.fan_out(seen.append, kw.pop("on", None)),
            cancel=cancel,
            **kw,
        )

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out, seen


def _wait_for(pred, timeout=20.0):
    done = threading.Event()
    deadline = timeout
    step = 0.02
    while deadline > 0:
        if pred():
            return True
        done.wait(step)
        deadline -= step
    return False


def test_aggregate_now_cancels_a_hung_proposer_and_aggregates_the_finished_ones(fake, db_path):
    fake.set("a", text="Alpha says water matters.")
    fake.set("b", text="Beta says light matters.")
    fake.set("hung", fault="hang", fault_after_words=2, text="Gamma starts and never ends here.")
    store = Store(db_path)
    cancel = engine.Cancel()
    cfg = make_config(fake, ["a", "b", "hung"], timeout_s=60)
    t, out, seen = _run_in_thread(cfg, cancel, on=StoreWriter(store))
    finished = lambda: {  # noqa: E731
        e.call.label for e in seen if isinstance(e, events.CallFinished)
    }
    assert _wait_for(lambda: {"a", "b"} <= finished())
    assert cancel.stage == "proposers"
    cancel.aggregate_now()
    t.join(15)
    assert not t.is_alive(), "Aggregate now did not end the wait on the hung proposer"
    record = out["record"]
    assert record.status == "ok" and record.aggregated_early
    by_label = {c.label: c for c in record.proposer_calls}
    assert by_label["a"].status == by_label["b"].status == "ok"
    assert by_label["hung"].status == "cancelled"
    assert "Aggregate now" in by_label["hung"].error
    assert "Gamma starts" in by_label["hung"].text  # what arrived is kept
    # The aggregator read the two finished answers and not the cut one.
    agg_prompt = fake.requests_for("agg")[0]["body"]["messages"][-1]["content"]
    assert "Alpha says water matters." in agg_prompt and "Beta says" in agg_prompt
    assert "Gamma" not in agg_prompt
    assert [c.label for _, c in record.aggregated_candidates()] == ["a", "b"]
    # Recorded: in the store (m008 column), in run --json, and back through get_run.
    stored = store.get_run(record.run_id)
    assert stored.aggregated_early and stored.status == "ok"
    row = store.db.execute(
        "SELECT aggregated_early FROM runs WHERE id = ?", [record.run_id]
    ).fetchone()
    assert row[0] == 1
    assert export.run_to_json(stored)["aggregated_early"] is True
    assert export.run_to_json(stored)["candidates"][2]["status"] == "cancelled"


def test_aggregate_now_before_any_answer_waits_for_the_first_one(fake):
    fake.set("slowish", delay_s=0.6, text="Slow but sure.")
    fake.set("hung", fault="hang", fault_after_words=1)
    cancel = engine.Cancel()
    cfg = make_config(fake, ["slowish", "hung"], timeout_s=60)
    t, out, seen = _run_in_thread(cfg, cancel)
    assert _wait_for(lambda: any(isinstance(e, events.CallStarted) for e in seen))
    cancel.aggregate_now()  # nothing has finished yet
    t.join(15)
    record = out["record"]
    assert record.status == "ok" and record.aggregated_early
    assert [c.status for c in record.proposer_calls] == ["ok", "cancelled"]
    assert "Slow but sure." in fake.requests_for("agg")[0]["body"]["messages"][-1]["content"]


def test_a_run_without_aggregate_now_is_not_marked_early(fake):
    record = engine.run_sync(make_config(fake, ["a", "b"]), "Hi there")
    assert record.status == "ok" and not record.aggregated_early
    assert export.run_to_json(record)["aggregated_early"] is False


def test_aggregate_now_in_layer_one_skips_the_later_layers(fake):
    fake.set("a", text="Alpha answer.")
    fake.set("hung", fault="hang", fault_after_words=1)
    cancel = engine.Cancel()
    cfg = make_config(fake, ["a", "hung"], layers=2, timeout_s=60)
    t, out, seen = _run_in_thread(cfg, cancel)
    assert _wait_for(lambda: any(isinstance(e, events.CallFinished) for e in seen))
    cancel.aggregate_now()
    t.join(15)
    record = out["record"]
    assert record.status == "ok" and record.aggregated_early
    layer2 = [c for c in record.proposer_calls if c.layer == 2]
    assert [c.status for c in layer2] == ["cancelled", "cancelled"]
    assert len(fake.requests_for("a")) == 1  # layer 2 never ran
    assert [(c.layer, c.label) for _, c in record.aggregated_candidates()] == [(1, "a")]
    assert "Alpha answer." in fake.requests_for("agg")[0]["body"]["messages"][-1]["content"]


# ---------------------------------------------------------------- finish_reason (item 2)


def test_finish_reason_is_kept_per_call_and_length_marks_a_cut_answer(fake, db_path):
    fake.set("long", text=" ".join(f"word{i}" for i in range(50)), honour_max_tokens=True)
    fake.set("short", text="Done quickly.", honour_max_tokens=True)
    cfg = make_config(fake, ["long", "short"])
    cfg.proposers[0].max_tokens = 10
    store = Store(db_path)
    record = engine.run_sync(cfg, "Tell me", on_event=StoreWriter(store))
    long, short = record.proposer_calls
    assert long.finish_reason == "length" and long.cut_at_max_tokens
    assert long.text.split() == [f"word{i}" for i in range(10)]
    assert short.finish_reason == "stop" and not short.cut_at_max_tokens
    assert record.aggregator_call.finish_reason == "stop"
    stored = store.get_run(record.run_id)
    assert [c.finish_reason for c in stored.calls] == ["length", "stop", "stop"]
    data = export.run_to_json(stored)
    assert [c["finish_reason"] for c in data["candidates"]] == ["length", "stop"]
    assert data["final"]["finish_reason"] == "stop"
    assert "cut off at max_tokens (10)" in export.run_to_markdown(stored)
    # An import of the export keeps it.
    again = export.run_from_json(data)
    assert [c.finish_reason for c in again.calls] == ["length", "stop", "stop"]


# ---------------------------------------------------------------- retries vs timeout (item 5)


def test_retries_that_run_into_the_timeout_keep_the_providers_message(fake):
    fake.set("broken", fault="500")
    cfg = make_config(fake, ["broken", "ok"], timeout_s=2)
    # More retries than fit in 2 s: the timeout ends the call while it waits to retry.
    limits = engine.Limits(max_retries=9, backoff_base_s=0.4)
    record = engine.run_sync(cfg, "Hello", limits=limits)
    broken = record.proposer_calls[0]
    assert broken.status == "timeout"
    assert "no complete answer within 2 s" in broken.error
    # How many retries fit in 2 s depends on the machine's load; the last error must be there.
    assert re.search(
        r"timed out (after \d+ retr(y|ies)|before a retry); last error: HTTP 500: ", broken.error
    ), broken.error
    assert "upstream broken exploded" in broken.error


def test_a_plain_timeout_says_only_the_timeout(fake):
    fake.set("slow", delay_s=3)
    record = engine.run_sync(make_config(fake, ["slow", "ok"], timeout_s=1), "Hello")
    slow = record.proposer_calls[0]
    assert slow.status == "timeout"
    assert slow.error == "no complete answer within 1 s (timeout_s)"


# ---------------------------------------------------------------- the CLI's Ctrl+C (item 14)


def _cli_with_terminal(fake, tmp_path, db_path, answer: bytes):
    """`python -m moa run --json` with stdin and stderr on a pseudo-terminal; Ctrl+C (SIGINT)
    once the fast proposer has answered, then `answer` typed at the question."""
    import os
    import pty
    import signal
    import subprocess
    import sys
    import time

    from moa.config import dumps
    from tests.conftest import ROOT

    fake.set("a", text="Alpha says water matters.")
    fake.set("hung", fault="hang", fault_after_words=1)
    path = tmp_path / "loop.toml"
    path.write_text(dumps(make_config(fake, ["a", "hung"], timeout_s=60, name="Loop")))
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moa",
            "run",
            "Why water?",
            "--config",
            str(path),
            "--json",
            "--db",
            str(db_path),
        ],
        cwd=ROOT,
        stdin=slave,
        stderr=slave,
        stdout=subprocess.PIPE,
        env=dict(os.environ),
    )
    os.close(slave)
    seen = b""

    def read_until(marker: bytes, timeout: float = 180) -> bytes:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            import select

            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        return seen

    try:
        assert b"\xe2\x9c\x93 L1 #1 a" in read_until("✓ L1 #1 a".encode()), seen
        proc.send_signal(signal.SIGINT)
        assert b"aggregate what has arrived? [Y/n]" in read_until(b"[Y/n]"), seen
        os.write(master, answer)
        out, _ = proc.communicate(timeout=180)
        read_until(b"run id", 2)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return proc.returncode, out, seen


def test_cli_first_ctrl_c_asks_and_yes_aggregates_what_has_arrived(fake, tmp_path, db_path):
    import json

    code, out, seen = _cli_with_terminal(fake, tmp_path, db_path, b"\n")  # Enter = yes
    assert code == 0, seen
    data = json.loads(out)
    assert data["status"] == "ok" and data["aggregated_early"] is True
    assert [c["status"] for c in data["candidates"]] == ["ok", "cancelled"]
    assert (
        "Alpha says water matters."
        in (fake.requests_for("agg")[0]["body"]["messages"][-1]["content"])
    )
    assert b"aggregated early" in seen


def test_cli_ctrl_c_answered_no_stops_the_run(fake, tmp_path, db_path):
    import json

    code, out, seen = _cli_with_terminal(fake, tmp_path, db_path, b"n\n")
    assert code == 130, seen
    data = json.loads(out)
    assert data["status"] == "cancelled" and data["aggregated_early"] is False
    assert not fake.requests_for("agg")
