"""Re-aggregation, exports (JSON, Markdown, HTML report) and import, through the store and CLI."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from moa import cli, engine, export, report
from moa.config import ModelSpec
from moa.store import Store, StoreWriter
from tests.conftest import make_config

XSS = [
    "<script>document.title='pwned'</script>",
    "<img src=x onerror=\"document.title='pwned'\">",
    "[click](javascript:document.title='pwned')",
    "<style>body{display:none}</style>",
    '<iframe src="javascript:alert(1)"></iframe>',
]


def stored_run(fake, store, **kw):
    fake.set("a", text="Water the plant weekly. Give it bright light.")
    fake.set("b", text="Use well-drained soil. Give it bright light.")
    fake.set("agg", text="Give it bright light. Water the plant weekly. Repot every spring.")
    cfg = make_config(fake, ["a", "b"], **kw)
    return engine.run_sync(cfg, "How do I keep a fern alive?", on_event=StoreWriter(store))


def test_reaggregate_calls_only_the_new_aggregator_and_links_the_source(fake, tmp_path):
    store = Store(tmp_path / "moa.db")
    source = stored_run(fake, store)
    fake.requests.clear()
    fake.set("judge2", text="Bright light and weekly water.")
    new_agg = ModelSpec(model="openai/judge2", api_base=fake.base_url, label="second opinion")
    again = asyncio.run(
        engine.reaggregate(store.get_run(source.run_id), new_agg, on_event=StoreWriter(store))
    )
    assert [r["body"]["model"] for r in fake.requests] == ["judge2"]  # no proposer was called
    assert again.status == "ok" and again.final_text == "Bright light and weekly water."
    assert again.parent_run_id == source.run_id and again.run_id != source.run_id
    assert [c.text for c in again.proposer_calls] == [c.text for c in source.proposer_calls]
    assert again.aggregator_call.label == "second opinion"
    user = fake.requests[0]["body"]["messages"][-1]["content"]
    assert "Water the plant weekly." in user and "Use well-drained soil." in user
    stored = store.get_run(again.run_id)
    assert stored.parent_run_id == source.run_id
    assert stored.config.aggregator.model == "openai/judge2"


def test_reaggregate_with_another_synthesis_prompt(fake, tmp_path):
    store = Store(tmp_path / "moa.db")
    source = stored_run(fake, store)
    fake.requests.clear()
    again = engine.run_sync(
        engine.reaggregate_config(source, aggregator_prompt="Answer in one line."),
        source.prompt,
        reuse=source,
    )
    assert again.status == "ok"
    assert fake.requests[0]["body"]["messages"][0]["content"] == "Answer in one line."


def test_a_run_without_good_candidates_cannot_be_reaggregated(fake, tmp_path):
    fake.set("a", fault="empty")
    record = engine.run_sync(make_config(fake, ["a"]), "hi", limits=engine.Limits(max_retries=0))
    with pytest.raises(engine.InputError, match="no successful candidates to re-aggregate"):
        engine.run_sync(record.config, record.prompt, reuse=record)


def test_export_then_import_gives_back_the_identical_run(fake, tmp_path, capsys):
    db1, db2 = tmp_path / "one.db", tmp_path / "two.db"
    record = stored_run(fake, Store(db1))
    out = tmp_path / "run.json"
    assert (
        cli.main(["export", record.run_id, "--format", "json", "-o", str(out), "--db", str(db1)])
        == 0
    )
    assert cli.main(["import", str(out), "--db", str(db2)]) == 0
    assert capsys.readouterr().out.strip() == record.run_id
    original, imported = Store(db1).get_run(record.run_id), Store(db2).get_run(record.run_id)
    for field in (
        "run_id",
        "config",
        "prompt",
        "system_prompt",
        "status",
        "error",
        "created_at",
        "ended_at",
        "wall_s",
        "parent_run_id",
    ):
        assert getattr(imported, field) == getattr(original, field), field
    assert [c.to_dict() for c in imported.calls] == [c.to_dict() for c in original.calls]
    assert export.run_to_json(imported) == export.run_to_json(original)
    # Importing the same run twice is refused, leaving the first copy alone.
    assert cli.main(["import", str(out), "--db", str(db2)]) == 2
    assert "already in" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a MoA Studio run export"),
        (b'{"run_id": "x", "candidates": []}', "has no 'prompt'"),
        (
            b'{"run_id": "x", "candidates": [], "prompt": "p", "status": "ok", "config": {"layers": 9}}',
            "its config is invalid",
        ),
    ],
)
def test_a_bad_import_file_is_refused_naming_the_problem(tmp_path, content, message, capsys):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    db = tmp_path / "moa.db"
    assert cli.main(["import", str(path), "--db", str(db)]) == 2
    assert message in capsys.readouterr().err
    assert Store(db).count_runs() == 0


def hostile_run(fake, store):
    fake.set("a", text="Fine answer. " + " ".join(XSS))
    fake.set("agg", text="Fine answer. " + XSS[1] + " " + XSS[0])
    cfg = make_config(fake, ["a", "b"])
    cfg.proposers[1].label = "<img src=x onerror=alert(1)>"
    cfg.name = "<script>alert('name')</script>"
    return engine.run_sync(cfg, "<b>prompt</b>" + XSS[0], on_event=StoreWriter(store))


def test_the_html_report_escapes_every_piece_of_model_text(fake, tmp_path):
    record = hostile_run(fake, Store(tmp_path / "moa.db"))
    page = report.run_to_html(record)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "<script" not in page.lower()
    assert "<img" not in page.lower() and "<iframe" not in page.lower()
    assert "<style>body" not in page
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in page
    # Highlights are there: the kept sentence is tinted, the payload sentences are text.
    assert re.search(r'<span class="seg" style="background: rgba\(76, 120, 168', page)
    assert "Fine answer." in page


def test_the_markdown_export_fences_model_text_and_escapes_labels(fake, tmp_path):
    record = hostile_run(fake, Store(tmp_path / "moa.db"))
    md = export.run_to_markdown(record)
    assert "&lt;img src=x onerror=alert(1)&gt;" in md  # the label, escaped
    assert "&lt;script&gt;alert('name')&lt;/script&gt;" in md  # the config name, escaped
    # Model text sits inside fences, so a Markdown viewer shows it as code, not HTML.
    body = md.split("## Final answer", 1)[1]
    assert body.lstrip().startswith("```")


def test_cli_export_formats(fake, tmp_path, capsys):
    db = tmp_path / "moa.db"
    record = stored_run(fake, Store(db))
    assert cli.main(["export", record.run_id, "--db", str(db)]) == 0
    assert capsys.readouterr().out.startswith(f"# MoA run {record.run_id}")
    assert cli.main(["export", record.run_id, "--format", "html", "--db", str(db)]) == 0
    assert "<!doctype html>" in capsys.readouterr().out
    assert cli.main(["export", record.run_id, "--format", "json", "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == record.run_id
    assert cli.main(["export", "nope", "--db", str(db)]) == 2
