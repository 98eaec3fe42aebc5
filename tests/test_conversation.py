"""Conversations: what each model is sent of earlier turns, over real HTTP, and how they are stored."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from moa import conversation, engine
from moa.config import ModelSpec
from moa.store import Store, StoreWriter
from tests import conftest
from tests.conftest import ROOT, make_config


def turn(store, cfg, prompt, conv_id=None, **kw):
    """One turn, logged, as the CLI and the Run page run it."""
    conv = store.get_conversation(conv_id) if conv_id else None
    plan = conversation.plan_turn(conv, prompt)
    return engine.run_sync(
        cfg,
        prompt,
        on_event=StoreWriter(store),
        history=plan.history,
        conversation_id=plan.conversation_id,
        turn=plan.turn,
        **kw,
    )


def contents(request):
    return [(m["role"], m["content"]) for m in request["body"]["messages"]]


def test_turn_two_sends_turn_one_message_and_final_answer_not_its_candidates(fake, tmp_path):
    store = Store(tmp_path / "moa.db")
    cfg = make_config(fake, ["a", "b"])
    fake.set("a", text="Alpha draft: soil matters most.")
    fake.set("b", text="Beta draft: light matters most.")
    fake.set("agg", text="Agreed answer: soil and light both matter.")
    first = turn(store, cfg, "How do plants grow?")
    assert (first.status, first.turn) == ("ok", 1)
    fake.reset()
    fake.set("agg", text="Shorter: soil and light.")
    second = turn(store, cfg, "Make it shorter.", first.conversation_id)
    assert (second.conversation_id, second.turn) == (first.conversation_id, 2)

    for model in ("a", "b"):
        (req,) = fake.requests_for(model)
        msgs = contents(req)
        assert msgs[-3:] == [
            ("user", "How do plants grow?"),
            ("assistant", "Agreed answer: soil and light both matter."),
            ("user", "Make it shorter."),
        ]
        sent = json.dumps(req["body"])
        assert "Alpha draft" not in sent and "Beta draft" not in sent  # history = "final"
    (agg,) = fake.requests_for("agg")
    msgs = contents(agg)
    assert msgs[0][0] == "system"
    assert msgs[1:3] == [
        ("user", "How do plants grow?"),
        ("assistant", "Agreed answer: soil and light both matter."),
    ]
    # The latest message is the last thing the aggregator reads, after this turn's candidates.
    last_role, last = msgs[-1]
    assert last_role == "user" and last.rstrip().endswith("Make it shorter.")
    assert "<candidate id=" in last
    assert "Alpha draft" not in json.dumps(msgs[:-1])


def test_history_own_sends_each_proposer_its_own_earlier_answer(fake, tmp_path):
    store = Store(tmp_path / "moa.db")
    cfg = make_config(fake, ["a", "b"], history="own")
    fake.set("a", text="Alpha draft one.")
    fake.set("b", text="Beta draft one.")
    fake.set("agg", text="Final one.")
    first = turn(store, cfg, "Question one?")
    fake.reset()
    turn(store, cfg, "Question two?", first.conversation_id)
    assert contents(fake.requests_for("a")[0])[-2] == ("assistant", "Alpha draft one.")
    assert contents(fake.requests_for("b")[0])[-2] == ("assistant", "Beta draft one.")
    assert contents(fake.requests_for("agg")[0])[2] == ("assistant", "Final one.")


def test_a_failed_turn_is_shown_but_not_sent_and_retry_keeps_it_in_the_log(fake, tmp_path):
    store = Store(tmp_path / "moa.db")
    cfg = make_config(fake, ["a"])
    fake.set("agg", text="First final.")
    first = turn(store, cfg, "One?")
    cid = first.conversation_id
    fake.set("agg", fault="empty")
    failed = turn(store, cfg, "Two?", cid)
    assert (failed.status, failed.turn) == ("failed", 2)
    # A follow-up after the failure is sent turn 1 only.
    fake.reset()
    fake.set("agg", text="Third final.")
    third = turn(store, cfg, "Three?", cid)
    assert third.turn == 3
    sent = json.dumps(fake.requests_for("a")[0]["body"])
    assert "One?" in sent and "Two?" not in sent
    # Retry runs turn 3 again in its place; the first attempt stays.
    conv = store.get_conversation(cid)
    plan, last = conversation.plan_retry(conv)
    assert (plan.turn, last.run_id) == (3, third.run_id)
    retried = engine.run_sync(
        cfg,
        last.prompt,
        on_event=StoreWriter(store),
        history=plan.history,
        conversation_id=cid,
        turn=plan.turn,
    )
    conv = store.get_conversation(cid)
    assert [r.turn for r in conv.runs] == [1, 2, 3, 3]
    assert [r.run_id for r in conv.turns] == [first.run_id, failed.run_id, retried.run_id]
    assert [r.status for r in conv.turns] == ["ok", "failed", "ok"]
    summary = store.conversation_summary(cid)
    assert (summary.n_turns, summary.last_status) == (3, "ok")


def test_history_is_left_out_oldest_first_for_a_model_with_a_small_window(fake, tmp_path):
    from moa import llm

    llm.litellm().register_model(
        {"openai/tiny": {"max_input_tokens": 260, "max_tokens": 260, "litellm_provider": "openai"}}
    )
    store = Store(tmp_path / "moa.db")
    cfg = make_config(fake, ["a", "tiny"])
    for spec in cfg.proposers + [cfg.aggregator]:
        spec.max_tokens = 40
    long = "Water and light matter. " * 12  # ~60 tokens a final answer
    fake.set("agg", text=long)
    cid = None
    for i in range(1, 5):
        rec = turn(store, cfg, f"Question number {i}?", cid)
        cid = rec.conversation_id
    fake.reset()
    fake.set("agg", text="done")
    rec = turn(store, cfg, "Question number 5?", cid)
    tiny = next(c for c in rec.proposer_calls if c.model == "openai/tiny")
    wide = next(c for c in rec.proposer_calls if c.model == "openai/a")
    assert tiny.history_note and tiny.history_note.startswith("turns 1–")
    assert "left out for openai/tiny: 260-token window" in tiny.history_note
    assert wide.history_note is None
    sent_tiny = contents(fake.requests_for("tiny")[0])
    assert sent_tiny[-1] == ("user", "Question number 5?")  # never the latest message
    assert ("user", "Question number 1?") not in sent_tiny
    assert ("user", "Question number 4?") in sent_tiny  # the newest turns stay
    assert ("user", "Question number 1?") in contents(fake.requests_for("a")[0])
    # The note is stored with the call and shown by `moa show`.
    stored = store.get_run(rec.run_id)
    assert any(c.history_note == tiny.history_note for c in stored.calls)


def test_the_estimate_counts_the_history(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-000")  # nothing is called
    store = Store(tmp_path / "moa.db")
    cfg = make_config(fake, ["a"])
    for spec in (*cfg.proposers, cfg.aggregator):
        spec.model = "openai/gpt-4o-mini"  # a priced model; nothing is called here
        spec.api_base = None
    history = [conversation.HistoryTurn(1, "q " * 500, "answer " * 2000)]
    bare = engine.estimate_cost(cfg, "next?")
    with_history = engine.estimate_cost(cfg, "next?", history=history)
    assert with_history.usd > bare.usd * 1.5  # ~2,500 history tokens, read by both calls
    cfg.max_cost_usd = (bare.usd + with_history.usd) / 2
    with pytest.raises(engine.InputError, match="over max_cost_usd"):
        engine.check(cfg, "next?", history=history)
    del store


def test_a_branch_shares_its_prefix_and_continues_on_its_own(fake, tmp_path):
    store = Store(tmp_path / "moa.db")
    cfg = make_config(fake, ["a"])
    cid = None
    for i in (1, 2, 3):
        fake.set("agg", text=f"Final {i}.")
        cid = turn(store, cfg, f"Message {i}", cid).conversation_id
    parent = store.get_conversation(cid)
    # Edit message 2 and re-run: a new conversation sharing turn 1.
    plan = conversation.plan_branch(parent, 2, edit=True)
    store.create_conversation(plan.conversation_id, plan.title, plan.parent_id, plan.branch_turn)
    fake.reset()
    fake.set("agg", text="Edited final.")
    rec = engine.run_sync(
        cfg,
        "Message 2, edited",
        on_event=StoreWriter(store),
        history=plan.history,
        conversation_id=plan.conversation_id,
        turn=plan.turn,
    )
    sent = contents(fake.requests_for("a")[0])
    assert sent[-3:] == [("user", "Message 1"), ("assistant", "Final 1."), ("user", rec.prompt)]
    branch = store.get_conversation(plan.conversation_id)
    assert [r.prompt for r in branch.turns] == ["Message 1", "Message 2, edited"]
    assert branch.shared(branch.turns[0]) and not branch.shared(branch.turns[1])
    assert (branch.parent_id, branch.branch_turn) == (cid, 2)
    assert store.conversation_summary(branch.id).n_turns == 2
    # The parent is untouched; it cannot be deleted while the branch shares its turns.
    assert [r.prompt for r in store.get_conversation(cid).turns] == [
        "Message 1",
        "Message 2",
        "Message 3",
    ]
    with pytest.raises(Exception, match="branch"):
        store.delete_conversation(cid)
    # Continue from turn 3: shares all three.
    plan = conversation.plan_branch(store.get_conversation(cid), 3, edit=False)
    assert (plan.turn, [h.turn for h in plan.history]) == (4, [1, 2, 3])
    assert store.delete_conversation(branch.id) == 1
    assert store.get_conversation(branch.id) is None


def test_search_finds_a_conversation_by_any_turn(fake, tmp_path):
    store = Store(tmp_path / "moa.db")
    cfg = make_config(fake, ["a"])
    one = turn(store, cfg, "Tell me about volcanoes").conversation_id
    turn(store, cfg, "Now glaciers please", one)
    other = turn(store, cfg, "Something about deserts").conversation_id
    assert [c.id for c in store.search_conversations("glaciers")] == [one]
    assert [c.id for c in store.search_conversations("volcanoes")] == [one]
    assert {c.id for c in store.search_conversations()} == {one, other}
    assert store.count_conversations() == 2
    assert store.count_conversations("glaciers") == 1
    assert store.search_conversations()[0].id == other  # latest activity first


def test_an_old_database_upgrades_each_run_into_a_one_turn_conversation(tmp_path):
    import sqlite_utils

    from moa.migrations import migrate

    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    migrate(db, upto="m005_fallback_aggregator_index")
    db["runs"].insert_all(
        [
            {
                "id": "0001aaaa",
                "created_at": "2026-01-01T00:00:00",
                "prompt": "Old one\nline two",
                "status": "ok",
                "proposers": "openai/a",
                "aggregator": "openai/agg",
                "config_json": "{}",
                "final_text": "old answer",
                "cost_usd": 0.5,
            },
            {
                "id": "0002bbbb",
                "created_at": "2026-01-02T00:00:00",
                "prompt": "Old two",
                "status": "failed",
                "proposers": "openai/a",
                "aggregator": "openai/agg",
                "config_json": "{}",
            },
        ]
    )
    db.conn.close()
    store = Store(path)
    convs = store.search_conversations()
    assert [(c.id, c.title, c.n_turns, c.last_status) for c in convs] == [
        ("c0002bbbb", "Old two", 1, "failed"),
        ("c0001aaaa", "Old one line two", 1, "ok"),
    ]
    conv = store.get_conversation("c0001aaaa")
    assert [(r.run_id, r.turn, r.prompt) for r in conv.runs] == [
        ("0001aaaa", 1, "Old one\nline two")
    ]
    assert store.resolve_conversation("0002bbbb") == "c0002bbbb"
    assert store.search_conversations("answer")[0].id == "c0001aaaa"
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_export_and_import_give_back_the_identical_conversation(fake, tmp_path):
    from moa import export, report

    store = Store(tmp_path / "moa.db")
    cfg = make_config(fake, ["a", "b"])
    fake.set("a", text="<script>alert(1)</script> Alpha.")
    cid = turn(store, cfg, "First <b>question</b>").conversation_id
    turn(store, cfg, "Second question", cid)
    conv = store.get_conversation(cid)
    data = json.dumps(export.conversation_to_json(conv))
    html = report.conversation_to_html(conv)
    assert html.count('<section class="turn">') == 2 and "<script>" not in html
    assert "Turn 2: Second question" in html
    md = export.conversation_to_markdown(conv)
    assert md.count("## Turn ") == 2
    other = Store(tmp_path / "other.db")
    imported = other.import_conversation(export.load_export(data))
    again = other.get_conversation(imported.id)
    assert export.conversation_to_json(again) == export.conversation_to_json(conv)
    with pytest.raises(Exception, match="already in"):
        other.import_conversation(export.load_export(data))


def moa(*args, stdin=None, env=None):
    return conftest.moa(*args, stdin=stdin, env=env, timeout=240)


@pytest.fixture
def config_file(fake, tmp_path):
    path = tmp_path / "chat.toml"
    base = fake.base_url
    path.write_text(
        f'name = "chat test"\n[aggregator]\nmodel = "openai/agg"\napi_base = "{base}"\n'
        f'[[proposers]]\nmodel = "openai/a"\napi_base = "{base}"\n'
        f'[[proposers]]\nmodel = "openai/b"\napi_base = "{base}"\n'
    )
    return path


def test_moa_chat_driven_through_a_pipe_runs_one_turn_per_line(fake, config_file, db_path):
    fake.set("agg", text="The final answer.")
    proc = moa(
        "chat",
        "--config",
        str(config_file),
        "--json",
        "--db",
        str(db_path),
        stdin="first question\nsecond question\n",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    one, two = (json.loads(line) for line in lines)
    assert one["conversation_id"] == two["conversation_id"]
    assert (one["turn"], two["turn"]) == (1, 2)
    assert (one["prompt"], two["prompt"]) == ("first question", "second question")
    # The second turn was sent the first one's final answer.
    sent = json.dumps(fake.requests_for("a")[-1]["body"])
    assert "first question" in sent and "The final answer." in sent
    # run --continue adds a third; show prints the conversation; history lists it once.
    cont = moa(
        "run",
        "third question",
        "--continue",
        two["run_id"],
        "--config",
        str(config_file),
        "--json",
        "--db",
        str(db_path),
    )
    assert cont.returncode == 0, cont.stderr
    three = json.loads(cont.stdout)
    assert (three["conversation_id"], three["turn"]) == (one["conversation_id"], 3)
    shown = json.loads(moa("show", one["conversation_id"], "--json", "--db", str(db_path)).stdout)
    assert shown["conversation_id"] == one["conversation_id"]
    assert shown["title"] == "first question"
    assert [t["turn"] for t in shown["turns"]] == [1, 2, 3]
    hist = json.loads(moa("history", "--json", "--db", str(db_path)).stdout)
    assert [(h["conversation_id"], h["n_turns"]) for h in hist] == [(one["conversation_id"], 3)]


def test_chat_commands_new_and_retry(fake, config_file, db_path):
    fake.set("agg", text="Answer.")
    proc = moa(
        "chat",
        "--config",
        str(config_file),
        "--json",
        "--db",
        str(db_path),
        stdin="alpha\n/retry\n/new\nbeta\n/bogus\n/exit\ngamma\n",
    )
    assert proc.returncode == 0, proc.stderr
    turns = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [(t["prompt"], t["turn"]) for t in turns] == [("alpha", 1), ("alpha", 1), ("beta", 1)]
    assert turns[0]["conversation_id"] == turns[1]["conversation_id"] != turns[2]["conversation_id"]
    assert "unknown command '/bogus'" in proc.stderr


def test_an_unknown_conversation_id_exits_2_naming_it(fake, config_file, db_path):
    for args in (
        ["run", "hi", "--continue", "cnope", "--config", str(config_file)],
        ["chat", "--continue", "cnope", "--config", str(config_file)],
        ["show", "cnope"],
        ["export", "cnope"],
    ):
        proc = moa(*args, "--db", str(db_path), stdin="")
        assert proc.returncode == 2, (args, proc.stderr)
        assert "no conversation or run with id 'cnope'" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert fake.requests == []


def test_sigkill_during_turn_two_keeps_turn_one_whole(fake, config_file, db_path):
    import signal
    import time

    fake.set("agg", text="Turn one final.")
    one = json.loads(
        moa("run", "first", "--config", str(config_file), "--json", "--db", str(db_path)).stdout
    )
    fake.set("a", delay_s=30)  # turn 2 hangs in its proposer stage
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moa",
            "run",
            "second",
            "--continue",
            one["conversation_id"],
            "--config",
            str(config_file),
            "--db",
            str(db_path),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not fake.requests_for("a")[1:]:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(db_path)  # a new process recovers the dead run
    conv = store.get_conversation(one["conversation_id"])
    assert [(r.turn, r.status) for r in conv.runs] == [(1, "ok"), (2, "interrupted")]
    assert conv.runs[0].final_text == "Turn one final."
    assert store.conversation_summary(conv.id).last_status == "interrupted"
    assert conv.history() and conv.history()[0].final == "Turn one final."
    with sqlite3.connect(db_path) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_model_spec_history_key_is_validated():
    from moa import config as config_mod

    with pytest.raises(config_mod.ConfigError, match='history = .*"final".*"own"'):
        config_mod.from_dict(
            {"history": "all", "aggregator": {"model": "x"}, "proposers": [{"model": "y"}]}
        )
    cfg = config_mod.from_dict(
        {"history": "own", "aggregator": {"model": "x"}, "proposers": [{"model": "y"}]}
    )
    assert config_mod.loads(config_mod.dumps(cfg)).history == "own"
    assert ModelSpec(model="x").max_tokens == 512


def test_chat_ctrl_c_cancels_the_turn_and_a_second_one_exits(fake, config_file, db_path):
    import signal
    import time

    fake.set("a", delay_s=30)  # the turn hangs in its proposer stage
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moa",
            "chat",
            "--config",
            str(config_file),
            "--json",
            "--db",
            str(db_path),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdin.write("a slow question\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not fake.requests_for("a"):
        time.sleep(0.1)
    assert fake.requests_for("a"), "the turn never started"
    proc.send_signal(signal.SIGINT)  # first: cancel the running turn, keep chatting
    line = proc.stdout.readline()
    turn = json.loads(line)
    assert (turn["status"], turn["turn"]) == ("cancelled", 1)
    assert proc.poll() is None  # still waiting for the next message
    proc.send_signal(signal.SIGINT)  # second, with no turn running: exit
    assert proc.wait(30) == 130
    err = proc.stderr.read()
    assert "cancelling this turn" in err and "Traceback" not in err
    conv = Store(db_path).get_conversation(turn["conversation_id"])
    assert [r.status for r in conv.runs] == ["cancelled"]
