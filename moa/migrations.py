"""Versioned schema migrations: small named functions, applied once each, never edited."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable

import sqlite_utils

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []
MIGRATIONS_TABLE = "_moa_migrations"


def migration(fn: Callable[[sqlite_utils.Database], None]):
    MIGRATIONS.append(fn)
    return fn


def migrate(db: sqlite_utils.Database, upto: str | None = None) -> list[str]:
    """Apply the migrations not yet recorded (up to and including `upto`); return their names."""
    done = set()
    if db[MIGRATIONS_TABLE].exists():
        done = {row["name"] for row in db[MIGRATIONS_TABLE].rows}
    applied = []
    for fn in MIGRATIONS:
        if fn.__name__ not in done:
            with db.conn:
                fn(db)
                db[MIGRATIONS_TABLE].insert(
                    {"name": fn.__name__, "applied_at": _dt.datetime.now(_dt.UTC).isoformat()},
                    pk="name",
                )
            applied.append(fn.__name__)
        if fn.__name__ == upto:
            break
    return applied


@migration
def m001_runs_and_calls(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": str,
            "created_at": str,
            "ended_at": str,
            "name": str,
            "prompt": str,
            "system_prompt": str,
            "status": str,
            "error": str,
            "layers": int,
            "n_proposers": int,
            "proposers": str,  # model ids, comma-separated, for filters and Datasette facets
            "aggregator": str,
            "final_text": str,
            "tokens_in": int,
            "tokens_out": int,
            "cost_usd": float,
            "wall_s": float,
            "config_json": str,
            "pid": int,
            "parent_run_id": str,
        },
        pk="id",
    )
    db["calls"].create(
        {
            "id": int,
            "run_id": str,
            "layer": int,
            "role": str,
            "idx": int,
            "model": str,
            "label": str,
            "params_json": str,
            "text": str,
            "status": str,
            "error": str,
            "started_at": str,
            "ended_at": str,
            "start_s": float,
            "latency_s": float,
            "ttft_s": float,
            "tokens_in": int,
            "tokens_out": int,
            "cost_usd": float,
            "attempts": int,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["runs"].create_index(["created_at"])
    db["runs"].create_index(["status"])
    db["calls"].create_index(["run_id", "layer", "role", "idx"], unique=True)
    db["calls"].create_index(["model"])


@migration
def m002_full_text_search(db: sqlite_utils.Database) -> None:
    # Triggers keep the index in step with every insert/update, including old rows via rebuild.
    db["runs"].enable_fts(["prompt", "final_text"], create_triggers=True, tokenize="porter")
    db["runs"].rebuild_fts()
