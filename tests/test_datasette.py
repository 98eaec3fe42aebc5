"""The log opens cleanly in Datasette: tables, readable columns and full-text search."""

from __future__ import annotations

import pytest

from moa import engine
from moa.store import Store, StoreWriter
from tests.conftest import make_config

datasette_app = pytest.importorskip("datasette.app", reason="datasette is a dev requirement")


def test_datasette_browses_and_searches_the_log(fake, tmp_path):
    import asyncio

    path = tmp_path / "moa.db"
    store = Store(path)
    fake.set("agg", text="Sourdough needs a lively starter.")
    record = engine.run_sync(
        make_config(fake, ["a", "b"]), "Bread tips?", on_event=StoreWriter(store)
    )
    store.close()

    async def browse():
        ds = datasette_app.Datasette([str(path)])
        tables = (await ds.client.get("/moa.json")).json()["tables"]
        runs = (await ds.client.get("/moa/runs.json?_shape=objects")).json()
        found = (await ds.client.get("/moa/runs.json?_search=starter&_shape=objects")).json()
        calls = (
            await ds.client.get(f"/moa/calls.json?run_id={record.run_id}&_shape=objects")
        ).json()
        return {t["name"]: t for t in tables}, runs, found, calls

    tables, runs, found, calls = asyncio.run(browse())
    assert tables["runs"]["fts_table"] == "runs_fts"  # Datasette offers a search box
    assert {"prompt", "final_text", "status", "cost_usd", "wall_s"} <= set(
        tables["runs"]["columns"]
    )
    assert [r["id"] for r in runs["rows"]] == [record.run_id]
    assert [r["id"] for r in found["rows"]] == [record.run_id]
    assert {c["role"] for c in calls["rows"]} == {"proposer", "aggregator"}
