"""Panel analysis (consensus, unique, contradictions, diversity), its cache in the store, its
place in run --json / the HTML report, and the semantic matcher's fallback."""

from __future__ import annotations

import json
import sqlite3

import pytest

from bench.attribution import evaluate_panel
from moa import analysis, embeddings, engine, export, migrations, panel_view, report
from moa import attribution as attribution_mod
from moa.attribution import attribute
from moa.panel import analyse, same_settings_warning
from moa.store import Store, StoreWriter
from moa.ui.render import Kept
from tests.conftest import make_config

CANDIDATES = [
    "Apollo 11 landed on the Moon on July 20, 1969. Neil Armstrong was the first person to walk "
    "on the lunar surface. The crew brought back about 21 kg of lunar samples.",
    "The Moon landing took place on July 20, 1969. Armstrong stepped onto the surface first, "
    "followed by Buzz Aldrin. Michael Collins stayed in orbit in the command module.",
    "Apollo 11 reached the Moon in July 1968. Neil Armstrong became the first human to set foot "
    "on the Moon. About 600 million people watched the broadcast on television.",
]
FINAL = (
    "Apollo 11 landed on the Moon on July 20, 1969, and Neil Armstrong was the first person to "
    "walk on its surface, followed by Buzz Aldrin. Michael Collins remained in orbit. The crew "
    "returned with roughly 21 kg of samples."
)


def test_consensus_unique_and_contradiction_on_a_small_panel():
    p = analyse(attribute(FINAL, CANDIDATES))
    assert any(pt.candidates == [0, 1, 2] and "first person" in pt.text for pt in p.consensus)
    dropped = [pt.text for pt in p.dropped_unique]
    assert any("600 million" in t for t in dropped)  # only candidate 2 said it, final dropped it
    kept_unique = [pt.text for pt in p.unique if pt.kept]
    assert any("21 kg" in t for t in kept_unique)
    (date,) = [c for c in p.contradictions if c.kind == "number"]
    texts = [s["text"] for s in date.sides]
    assert any("1969" in t for t in texts) and any("1968" in t for t in texts)
    took = date.sides[date.final_side]["text"]
    assert "1969" in took  # the final answer sided with the right date
    assert 0.0 <= p.diversity <= 1.0


def test_identical_candidates_have_no_diversity_and_same_settings_warn():
    text = "Water boils at 100 degrees Celsius at sea level. Salt raises the boiling point."
    p = analyse(attribute(text, [text, text, text]))
    assert p.diversity == pytest.approx(0.0)
    assert not p.unique and len(p.consensus) == 2
    warn = same_settings_warning([("local/smollm2-135m", 0.7, None)] * 3)
    assert warn and "Diversity is the point" in warn
    assert same_settings_warning([("a", 0.7, None), ("a", 0.9, None)]) is None


def test_panel_labelled_cases_reach_their_floors():
    # Floors a little under bench/RESULTS.md's figures, so a regression fails.
    r = evaluate_panel()
    assert r["consensus"]["precision"] >= 0.5 and r["consensus"]["recall"] >= 0.5, r
    assert r["unique"]["precision"] >= 0.5 and r["unique"]["recall"] >= 0.5, r
    assert r["contradictions"]["recall"] >= 0.6, r


# --- run --json, the report, hostile text ---------------------------------------------------

XSS = [
    "<script>document.title='pwned'</script> Water boils at 100 degrees at sea level.",
    '<img src=x onerror="document.title=1"> Water boils at 90 degrees at sea level.',
]


def stored_run(fake, store, a: str, b: str, final: str):
    fake.set("a", text=a)
    fake.set("b", text=b)
    fake.set("agg", text=final)
    cfg = make_config(fake, ["a", "b"])
    return engine.run_sync(cfg, "Question?", on_event=StoreWriter(store))


def test_run_json_has_the_panel_with_candidate_indexes(fake, tmp_path):
    store = Store(tmp_path / "moa.db")
    rec = stored_run(
        fake,
        store,
        "Ferns like bright indirect light. Water the fern every week.",
        "Give the fern bright, indirect light. Mist the leaves in dry winters.",
        "Ferns want bright but indirect light. Water weekly.",
    )
    out = export.run_to_json(rec)
    panel = out["panel"]
    assert set(panel) >= {"consensus", "unique", "contradictions", "diversity"}
    (light,) = [p for p in panel["consensus"] if "light" in p["text"]]
    assert light["candidates"] == [0, 1] and light["kept"] is True
    misting = [p for p in panel["unique"] if "Mist" in p["text"]]
    assert misting and misting[0]["candidates"] == [1] and misting[0]["kept"] is False
    assert isinstance(panel["diversity"], float)
    assert panel["matcher"] in ("semantic", "lexical")
    json.dumps(out)  # serialisable as is


def test_hostile_candidate_text_stays_inert_in_panel_and_report(fake, tmp_path):
    store = Store(tmp_path / "moa.db")
    rec = stored_run(fake, store, XSS[0], XSS[1], "Water boils at 100 degrees at sea level.")
    found = analysis.for_run(rec, store)
    markup = panel_view.panel_html(rec, found)
    assert found.panel.contradictions  # 100 vs 90: the hostile sentences are the two sides
    assert "<script" not in markup and "<img" not in markup
    assert "&lt;script&gt;" in markup
    page = report.run_to_html(rec, found)
    assert "<script" not in page.lower() and "<img" not in page
    assert "The panel" in page


# --- the store's cache: a stored run replays without recomputing ----------------------------

CAKE = (  # two candidates and a final answer that keeps from both
    "Preheat the oven to 200 C. Grease a 20 cm tin with butter.",
    "Line the tin with baking paper. Let the cake cool for ten minutes.",
    "Heat the oven to 200 degrees first. Line the tin with paper. Serve warm.",
)


def test_stored_run_replays_identical_highlights_without_recomputing(fake, tmp_path, monkeypatch):
    store = Store(tmp_path / "moa.db")
    rec = stored_run(fake, store, *CAKE)
    live = analysis.for_run(rec, store)  # written by the store writer as the run finished
    assert live.from_cache
    live_html = Kept(rec, live.attribution, live.candidate_ids).final_html(rec.final_text)

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(analysis, "attribute", boom)
    monkeypatch.setattr(analysis, "analyse", boom)
    stored = store.get_run(rec.run_id)
    replay = analysis.for_run(stored, store)
    assert replay.from_cache
    assert (
        Kept(stored, replay.attribution, replay.candidate_ids).final_html(stored.final_text)
        == live_html
    )
    assert replay.panel.to_json(replay.candidate_ids) == live.panel.to_json(live.candidate_ids)
    assert (
        export.run_to_json(stored, replay)["attribution"]
        == export.run_to_json(rec, live)["attribution"]
    )


def test_exports_of_a_stored_conversation_read_the_cached_highlights(
    fake, tmp_path, monkeypatch, capsys
):
    from moa import cli

    store = Store(tmp_path / "moa.db")
    rec = stored_run(fake, store, *CAKE)
    live = export.run_to_json(rec, analysis.for_run(rec, store))

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(analysis, "attribute", boom)
    monkeypatch.setattr(analysis, "analyse", boom)
    conv = store.get_conversation(rec.conversation_id)
    (turn,) = export.conversation_to_json(conv, store)["turns"]
    assert turn["attribution"] == live["attribution"] and turn["panel"] == live["panel"]
    assert "from a (score" in report.conversation_to_html(conv, store)  # highlighted
    assert "Line the tin" in export.conversation_to_markdown(conv, store)
    # The CLI's show --json and every export format, on the conversation and on the run.
    db = str(tmp_path / "moa.db")
    for args in (
        ["show", conv.id, "--json"],
        ["export", conv.id, "--format", "json"],
        ["export", rec.run_id, "--format", "md"],
        ["export", rec.run_id, "--format", "html"],
    ):
        assert cli.main([*args, "--db", db]) == 0, args
    assert (
        json.loads(capsys.readouterr().out.split("\n}\n")[0] + "\n}")["turns"][0]["attribution"]
        == live["attribution"]
    )


def test_a_changed_run_is_recomputed_not_served_stale(fake, tmp_path):
    store = Store(tmp_path / "moa.db")
    rec = stored_run(fake, store, "Use a set. It is fast.", "Use a list.", "Use a set.")
    rec.calls[-1].text = "Use a list."  # the final answer changed: the fingerprint differs
    again = analysis.for_run(rec, store)
    assert not again.from_cache
    assert again.attribution.segments[0].segment.text == "Use a list."


def test_m010_adds_the_cache_table_to_an_old_database(tmp_path):
    path = tmp_path / "old.db"
    import sqlite_utils

    db = sqlite_utils.Database(sqlite3.connect(path))
    migrations.migrate(db, upto="m005_fallback_aggregator_index")
    assert not db["attribution_cache"].exists()
    assert "m010_attribution_cache" in migrations.migrate(db)
    assert db["attribution_cache"].exists()
    assert migrations.migrate(db) == []  # applied once


# --- the semantic matcher's package missing -------------------------------------------------


@pytest.fixture
def no_embeddings(monkeypatch):
    missing = embeddings.WeightFile("moa_no_such_embeddings_package", "model.onnx", 1, "0" * 64)
    monkeypatch.setattr(embeddings, "MODEL", missing)
    embeddings.reset()
    yield
    embeddings.reset()


def test_missing_embeddings_package_falls_back_to_lexical_with_a_notice(no_embeddings):
    result = attribute(FINAL, CANDIDATES, matcher="semantic")
    assert result.matcher == "lexical"
    assert "moa_no_such_embeddings_package" in result.notice and "pip install" in result.notice
    lexical = attribute(FINAL, CANDIDATES, matcher="lexical")
    assert result.to_json() == lexical.to_json()
    found = analysis.RunAnalysis(result, [0, 1, 2], analyse(result))
    line = panel_view.matcher_line(found)
    assert "lexical matcher" in line and "not installed" in line
    assert found.panel_json()["matcher"] == "lexical"


def test_weights_failing_their_checksum_are_refused(monkeypatch):
    bad = embeddings.WeightFile(
        embeddings.MODEL.package, embeddings.MODEL.path, embeddings.MODEL.size, "f" * 64
    )
    monkeypatch.setattr(embeddings, "MODEL", bad)
    embeddings.reset()
    try:
        with pytest.raises(embeddings.EmbeddingsUnavailable, match="SHA-256"):
            embeddings.get_embedder()
        result = attribute(FINAL, CANDIDATES, matcher="semantic")
        assert result.matcher == "lexical" and "SHA-256" in result.notice
    finally:
        embeddings.reset()


def test_default_matcher_is_semantic_and_says_so():
    assert attribution_mod.DEFAULT_MATCHER == "semantic"
    assert attribute(FINAL, CANDIDATES).matcher == "semantic"


# --- the run view (Streamlit AppTest) -------------------------------------------------------

from tests.test_app import app, html, loopback, presets, run  # noqa: E402,F401  (fixtures)


def test_run_view_shows_the_panel_and_names_the_matcher(loopback):  # noqa: F811
    at = run(app(), "What do plants need?")
    page = html(at)
    assert "The panel" in page
    assert "semantic matcher" in page  # the legend and the panel both say which matcher
    assert "consensus" in page and "diversity" in page
    assert "<script>document.title" not in page  # candidate text stays escaped
    (section,) = [h.value for h in at.html if "moa-panel" in h.value]
    assert "Roots take up water" in section


def test_insights_per_aggregator_counts_dropped_unique_points_and_sides(fake, tmp_path):
    from moa import panel_insights

    store = Store(tmp_path / "moa.db")
    stored_run(
        fake,
        store,
        "Water boils at 100 degrees at sea level. Add salt for flavour.",
        "Water boils at 90 degrees at sea level. Use a lid to save energy.",
        "Water boils at 100 degrees at sea level. Use a lid to save energy.",
    )
    (row,) = panel_insights.compute(store)
    assert row.model == "openai/agg" and row.runs == 1
    assert row.unique >= 1 and row.unique_dropped >= 1  # "Add salt" was dropped
    assert row.contradictions == 1 and row.took_tie == 1  # 100 vs 90, one proposer each
    assert row.drop_rate == row.unique_dropped / row.unique


def test_candidates_are_embedded_as_their_calls_finish(fake, tmp_path):
    from moa import semantic

    store = Store(tmp_path / "moa.db")
    unit = "Octopuses have three hearts and blue blood, which is rich in copper."
    stored_run(fake, store, unit, "Squid can change colour in a fraction of a second.", "Ok.")
    analysis._prewarm_pool.submit(lambda: None).result()  # the background queue is done
    assert embeddings.get_embedder().has(semantic.clean(unit))
