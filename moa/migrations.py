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


@migration
def m003_attribution_columns(db: sqlite_utils.Database) -> None:
    # What the aggregator kept, per candidate call, so charts across thousands of runs need no
    # re-computation: its share of the final answer and whether it was the main source.
    db["calls"].add_column("share", float)
    db["calls"].add_column("main_source", int)
    db["runs"].add_column("novel_share", float)
    db["runs"].create_index(["aggregator"])


@migration
def m004_evaluations(db: sqlite_utils.Database) -> None:
    # An evaluation puts every question to every contender; each answer is a normal run (linked
    # by eval_items.run_id, no foreign key so deleting a run stays possible). The unique keys
    # are what makes an interrupted evaluation resumable without repeating finished calls.
    db["evals"].create(
        {
            "id": str,
            "created_at": str,
            "ended_at": str,
            "name": str,
            "question_set": str,
            "n_questions": int,
            "contenders": str,  # names, comma-separated, for Datasette facets
            "scoring": str,  # match | judge | pairwise
            "judge_model": str,
            "baseline": str,
            "status": str,  # running | ok | failed | cancelled | interrupted
            "error": str,
            "fingerprint": str,  # hash of the plan: the same command resumes the same evaluation
            "max_cost_usd": float,
            "estimate_usd": float,
            "pid": int,
            "plan_json": str,  # questions, contender configs, judge: enough to resume
        },
        pk="id",
    )
    db["eval_items"].create(
        {
            "id": int,
            "eval_id": str,
            "question_id": str,
            "category": str,
            "contender": str,
            "run_id": str,
            "status": str,  # running | answered | scored | failed | unscored
            "score": float,
            "outcome": str,  # pairwise: win | tie | loss
            "extracted": str,  # match scoring: what was read as the answer
            "error": str,
            "cost_usd": float,
            "latency_s": float,
            "tokens_out": int,
            "judge_cost_usd": float,
            "updated_at": str,
        },
        pk="id",
        foreign_keys=[("eval_id", "evals", "id")],
    )
    db["judge_calls"].create(
        {
            "id": int,
            "eval_id": str,
            "question_id": str,
            "contender": str,
            "kind": str,  # single | contender-first | contender-second
            "prompt_name": str,  # MT-Bench judge prompt used
            "model": str,
            "messages_json": str,
            "text": str,
            "rating": float,
            "verdict": str,
            "status": str,
            "error": str,
            "created_at": str,
            "latency_s": float,
            "tokens_in": int,
            "tokens_out": int,
            "cost_usd": float,
        },
        pk="id",
        foreign_keys=[("eval_id", "evals", "id")],
    )
    db["evals"].create_index(["fingerprint"])
    db["eval_items"].create_index(["eval_id", "question_id", "contender"], unique=True)
    db["eval_items"].create_index(["run_id"])
    db["judge_calls"].create_index(["eval_id", "question_id", "contender", "kind"], unique=True)


@migration
def m005_fallback_aggregator_index(db: sqlite_utils.Database) -> None:
    # The History model filter also finds runs whose answer came from a fallback aggregator
    # (aggregator calls with idx > 0), which the denormalised runs.aggregator column does not
    # name: this index makes that lookup a range scan instead of a pass over every call.
    db["calls"].create_index(["model", "role", "idx"])


@migration
def m006_conversations(db: sqlite_utils.Database) -> None:
    # A session is a conversation of MoA turns. Each run is one turn (conversation_id, turn);
    # a retry takes the same turn number, so the failed run stays in the log. A branch shares
    # its parent's turns before `branch_turn` (they are read from the parent, not copied). The
    # list columns (n_turns, last_status, totals, models) are kept up to date on every write,
    # so History pages through conversations without touching runs or calls.
    db["conversations"].create(
        {
            "id": str,
            "title": str,
            "created_at": str,
            "updated_at": str,
            "n_turns": int,
            "last_status": str,
            "parent_id": str,
            "branch_turn": int,
            "models": str,
            "tokens_in": int,
            "tokens_out": int,
            "cost_usd": float,
        },
        pk="id",
    )
    db["conversations"].create_index(["updated_at"])
    db["conversations"].create_index(["parent_id"])
    db["runs"].add_column("conversation_id", str)
    db["runs"].add_column("turn", int)
    db["calls"].add_column("history_note", str)
    # Every run logged before conversations existed becomes a one-turn conversation.
    db.execute("UPDATE runs SET conversation_id = 'c' || id, turn = 1")
    db.execute(
        "INSERT INTO conversations (id, title, created_at, updated_at, n_turns, last_status, "
        "models, tokens_in, tokens_out, cost_usd) SELECT 'c' || id, substr(trim(replace("
        "replace(prompt, char(10), ' '), char(13), ' ')), 1, 200), created_at, "
        "coalesce(ended_at, created_at), 1, status, "
        "trim(coalesce(proposers, '') || ', ' || coalesce(aggregator, ''), ', '), tokens_in, "
        "tokens_out, cost_usd FROM runs"
    )
    db["runs"].create_index(["conversation_id", "turn"])


@migration
def m007_run_process_start(db: sqlite_utils.Database) -> None:
    # When the process that owns a `running` run or evaluation started (clock ticks since boot,
    # from /proc/<pid>/stat): a live process holding the same pid later is told apart by it.
    for table in ("runs", "evals"):
        if db[table].exists() and "pid_start" not in db[table].columns_dict:
            db[table].add_column("pid_start", int)


@migration
def m008_finish_reason_and_flags(db: sqlite_utils.Database) -> None:
    # Why each call stopped ("length" = it hit max_tokens mid-answer), and whether the run's
    # aggregator was started early by "Aggregate now" (its slow proposers cancelled).
    if "finish_reason" not in db["calls"].columns_dict:
        db["calls"].add_column("finish_reason", str)
    if "aggregated_early" not in db["runs"].columns_dict:
        db["runs"].add_column("aggregated_early", int)


@migration
def m010_attribution_cache(db: sqlite_utils.Database) -> None:
    # A run's attribution and panel analysis as computed when it finished, so a stored run opens
    # with the same highlights without recomputing them (moa/analysis.py). `fingerprint` covers
    # the texts and the matcher version: a stale row is recomputed, never shown.
    if not db["attribution_cache"].exists():
        db["attribution_cache"].create(
            {
                "run_id": str,
                "fingerprint": str,
                "matcher": str,
                "analysis_json": str,
                "created_at": str,
            },
            pk="run_id",
        )


@migration
def m011_eval_turns(db: sqlite_utils.Database) -> None:
    # MT-Bench's second turns: a question's follow-up is asked in the conversation of the
    # contender's first answer and scored on its own. Its item has the columns of eval_items
    # plus the turn; the first turn stays in eval_items, so older evaluations read unchanged.
    # Judge calls on a second turn are judge_calls rows whose kind starts with "turn2:".
    if db["eval_turns"].exists():
        return
    db["eval_turns"].create(
        {
            "id": int,
            "eval_id": str,
            "question_id": str,
            "contender": str,
            "turn": int,
            "category": str,
            "run_id": str,
            "status": str,  # running | answered | scored | failed | unscored
            "score": float,
            "outcome": str,
            "extracted": str,
            "error": str,
            "cost_usd": float,
            "latency_s": float,
            "tokens_out": int,
            "judge_cost_usd": float,
            "updated_at": str,
        },
        pk="id",
        foreign_keys=[("eval_id", "evals", "id")],
    )
    db["eval_turns"].create_index(["eval_id", "question_id", "contender", "turn"], unique=True)
    db["eval_turns"].create_index(["run_id"])


@migration
def m009_strategy(db: sqlite_utils.Database) -> None:
    # The run's strategy as History filters it ("vote", "synthesize+cascade"; runs from before
    # strategies existed synthesised), what the strategy produced (ranking, vote table,
    # selection, critique steps, cascade decision) as JSON, and whether a cascade escalated.
    db["runs"].add_column("strategy", str, not_null_default="synthesize")
    db["runs"].add_column("outcome_json", str)
    db["runs"].add_column("escalated", int)
    db["runs"].create_index(["strategy"])
