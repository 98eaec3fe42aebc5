"""The SQLite log of every run and call (sqlite-utils, WAL), written as events arrive."""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from moa import config as config_mod
from moa.config import ModelSpec, RunConfig
from moa.conversation import Conversation
from moa.events import (
    CallFailed,
    CallFinished,
    CallStarted,
    Event,
    RunFinished,
    RunStarted,
    TokenDelta,
)
from moa.llm import redact
from moa.migrations import migrate
from moa.records import CallRecord, RunRecord, pid_alive

DEFAULT_DB = config_mod.ROOT / "data" / "moa.db"
PARTIAL_FLUSH_S = 0.5  # how often a streaming call's partial text is saved (crash safety)
_ACTIVE_RUNS: set[str] = set()  # runs this process is writing; others still "running" are dead


class StoreError(RuntimeError):
    """The database cannot be opened or written; the message says which file and why."""


def default_path() -> Path:
    return Path(os.environ.get("MOA_DB") or DEFAULT_DB)


@dataclass
class RunSummary:
    """One row of the history table."""

    id: str
    created_at: str
    name: str
    prompt: str
    proposers: str
    aggregator: str
    status: str
    error: str | None
    wall_s: float | None
    tokens_in: int | None
    tokens_out: int | None
    cost_usd: float | None
    final_text: str | None
    parent_run_id: str | None
    n_proposer_calls: int = 0
    n_failed: int = 0  # proposer calls that failed, timed out or were interrupted
    n_cancelled: int = 0  # proposer calls cancelled (Stop, or cut by Aggregate now)
    aggregated_early: bool = False
    evaluation: bool = False  # an answer of an evaluation (eval_items links it)
    strategy: str | None = None

    @property
    def kind(self) -> str:
        """ "evaluation", "re-aggregation" or "run"."""
        if self.evaluation:
            return "evaluation"
        return "re-aggregation" if self.parent_run_id else "run"

    def status_text(self) -> str:
        """The status with what it hides: "ok · 1 of 3 failed", "ok · aggregated early"."""
        bits = [self.status]
        if self.aggregated_early:
            bits.append("aggregated early")
        n = self.n_proposer_calls
        if self.n_failed:
            bits.append(f"{self.n_failed} of {n} failed")
        if self.n_cancelled and self.status != "cancelled":
            bits.append(f"{self.n_cancelled} of {n} cancelled")
        return " · ".join(bits)


# Kinds of run the History filter tells apart (see RunSummary.kind).
RUN_KINDS = ("run", "re-aggregation", "evaluation")
_IN_EVAL = "runs.id IN (SELECT run_id FROM eval_items WHERE run_id IS NOT NULL)"


@dataclass
class ConversationSummary:
    """One row of the conversation list."""

    id: str
    title: str
    created_at: str
    updated_at: str
    n_turns: int
    last_status: str | None
    parent_id: str | None
    branch_turn: int | None
    models: str | None
    tokens_in: int | None
    tokens_out: int | None
    cost_usd: float | None


_CONVERSATION_COLUMNS = ", ".join(ConversationSummary.__dataclass_fields__)


class ConversationError(ValueError):
    """A conversation cannot be changed as asked; the message says why and what to do."""


def title_of(prompt: str) -> str:
    """A conversation's title: its first message on one line, at most 200 characters."""
    return " ".join(prompt.split())[:200] or "Untitled"


class Store:
    """A database file; each thread gets its own connection (sqlite3 objects are thread-bound)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._local = threading.local()
        # Why writes are refused (a read-only file or folder), or None. A read-only log can
        # still be read (History, `moa history/show/export`); anything that would write says
        # so up front, before a model is called (`check_writable`).
        self.read_only: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self.db
            db.enable_wal()
            self.read_only = self._probe_write()
            if self.read_only is None:
                migrate(db)
                self.recover_interrupted()
            elif _pending_migrations(db):
                raise StoreError(self.read_only)  # an old file that must be upgraded to be read
        except sqlite3.DatabaseError as e:
            raise StoreError(_explain(self.path, e)) from None
        except OSError as e:
            raise StoreError(f"cannot open database {self.path}: {e.strerror or e}") from None

    def _probe_write(self) -> str | None:
        """Try a write and roll it back: SQLite opens a file it may not write read-only without
        a word, and only the first write fails. Returns the read-only message, or None."""
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                conn.execute(f"PRAGMA user_version = {int(version)}")
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.OperationalError as e:
            if _is_read_only(e):
                return read_only_message(self.path, e)
            raise
        return None

    def check_writable(self) -> None:
        """StoreError naming the file and the fix if this database cannot be written now.

        Called before a run starts, so a read-only log refuses the run instead of half-saving
        it (the file may have become read-only since it was opened).
        """
        try:
            self.read_only = self._probe_write()
        except sqlite3.DatabaseError as e:
            raise StoreError(_explain(self.path, e)) from None
        if self.read_only:
            raise StoreError(self.read_only)

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            # isolation_level=None: we open write transactions ourselves, as BEGIN IMMEDIATE,
            # so two writers queue on the lock instead of deadlocking on an upgrade.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA foreign_keys = ON")
            # WAL + NORMAL: a commit no longer waits for an fsync (~6 ms each on this disk, and
            # a run's events are written on its event loop: ~60 ms between layers). A killed
            # process loses nothing committed; only a power cut can lose the last commits.
            conn.execute("PRAGMA synchronous = NORMAL")
            db = self._local.db = sqlite_utils.Database(conn)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise StoreError(self.read_only)
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as e:
            raise StoreError(_explain(self.path, e)) from None
        try:
            yield conn
        except sqlite3.DatabaseError as e:
            conn.execute("ROLLBACK")  # nothing of this transaction is kept
            raise StoreError(_explain(self.path, e)) from None
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            try:
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as e:
                conn.execute("ROLLBACK")
                raise StoreError(_explain(self.path, e)) from None

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.conn.close()
            self._local.db = None

    # ------------------------------------------------------------ writing

    def start_run(self, record: RunRecord) -> None:
        """Log a run as it starts; a run outside a conversation becomes a one-turn one."""
        _ACTIVE_RUNS.add(record.run_id)
        with self._write() as conn:
            self._insert_run(conn, record)

    def _insert_run(self, conn: sqlite3.Connection, record: RunRecord) -> None:
        if record.conversation_id is None:
            record.conversation_id, record.turn = "c" + record.run_id, 1
        self._ensure_conversation(conn, record.conversation_id, record.prompt, record.created_at)
        conn.execute(
            "INSERT OR REPLACE INTO runs (id, created_at, name, prompt, system_prompt, status, "
            "layers, n_proposers, proposers, aggregator, config_json, pid, parent_run_id, "
            "conversation_id, turn, pid_start) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                record.run_id,
                record.created_at,
                record.config.name,
                record.prompt,
                record.system_prompt,
                record.status,
                record.config.layers,
                len(record.config.proposers),
                ", ".join(p.model for p in record.config.proposers),
                record.config.aggregator.model,
                json.dumps(config_mod.to_dict(record.config)),
                record.pid,
                record.parent_run_id,
                record.conversation_id,
                record.turn,
                record.pid_start,
            ),
        )
        conn.execute(
            "UPDATE runs SET strategy = ? WHERE id = ?",
            (record.config.strategy_label, record.run_id),
        )
        for call in record.calls:
            self._upsert_call(conn, record.run_id, call)
        self._refresh_conversation(conn, record.conversation_id)

    def create_conversation(
        self,
        conversation_id: str,
        title: str,
        parent_id: str | None = None,
        branch_turn: int | None = None,
    ) -> None:
        """A conversation row before its first turn runs (a branch names what it shares)."""
        from moa.records import utc_now

        now = utc_now()
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO conversations (id, title, created_at, updated_at, n_turns, "
                "parent_id, branch_turn) VALUES (?,?,?,?,?,?,?)",
                (conversation_id, title_of(title), now, now, 0, parent_id, branch_turn),
            )
            self._refresh_conversation(conn, conversation_id)

    @staticmethod
    def _ensure_conversation(
        conn: sqlite3.Connection, conversation_id: str, prompt: str, created_at: str
    ) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO conversations (id, title, created_at, updated_at, n_turns) "
            "VALUES (?,?,?,?,0)",
            (conversation_id, title_of(prompt), created_at, created_at),
        )

    @staticmethod
    def _refresh_conversation(conn: sqlite3.Connection, conversation_id: str | None) -> None:
        """Recompute a conversation's list columns from its runs (its shared turns count too)."""
        if conversation_id is None:
            return
        conn.execute(
            "UPDATE conversations SET "
            "n_turns = coalesce(branch_turn, 1) - 1 + (SELECT count(DISTINCT turn) FROM runs "
            "  WHERE conversation_id = :id), "
            "updated_at = max(created_at, coalesce((SELECT max(coalesce(ended_at, created_at)) "
            "  FROM runs WHERE conversation_id = :id), created_at)), "
            "last_status = (SELECT status FROM runs WHERE conversation_id = :id "
            "  ORDER BY turn DESC, rowid DESC LIMIT 1), "
            "models = (SELECT trim(coalesce(proposers, '') || ', ' || coalesce(aggregator, ''), "
            "  ', ') FROM runs WHERE conversation_id = :id ORDER BY turn DESC, rowid DESC LIMIT 1), "
            "tokens_in = (SELECT sum(tokens_in) FROM runs WHERE conversation_id = :id), "
            "tokens_out = (SELECT sum(tokens_out) FROM runs WHERE conversation_id = :id), "
            "cost_usd = (SELECT CASE WHEN count(*) = count(cost_usd) THEN sum(cost_usd) END "
            "  FROM runs WHERE conversation_id = :id AND status != 'running') "
            "WHERE id = :id",
            {"id": conversation_id},
        )

    def save_call(self, run_id: str, call: CallRecord) -> None:
        with self._write() as conn:
            self._upsert_call(conn, run_id, call)

    def save_partial_text(self, run_id: str, call: CallRecord) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE calls SET text = ? WHERE run_id = ? AND layer = ? AND role = ? AND idx = ?",
                (call.text, run_id, call.layer, call.role, call.index),
            )

    def finish_run(self, record: RunRecord) -> None:
        from moa import analysis as analysis_mod

        analysis = analysis_mod.compute(record)  # before the write lock: embedding takes a while
        with self._write() as conn:
            self._finish_run(conn, record, analysis)
        _ACTIVE_RUNS.discard(record.run_id)
        self._cache_analysis(record, analysis)

    def _cache_analysis(self, record: RunRecord, analysis) -> None:
        from moa import analysis as analysis_mod

        if analysis.attribution is not None:
            self.save_analysis(
                record.run_id,
                analysis_mod.fingerprint(record),
                analysis.attribution.matcher,
                analysis_mod.to_json(analysis),
            )

    def _finish_run(self, conn: sqlite3.Connection, record: RunRecord, analysis=None):
        """Write the finished run; returns its moa.analysis.RunAnalysis (for the cache)."""
        from moa import analysis as analysis_mod  # the matcher loads only when a run finishes

        usage = record.usage()
        if analysis is None:
            analysis = analysis_mod.compute(record)
        shares, novel_share = _shares(record, analysis.attribution, analysis.candidate_ids)
        for call in record.calls:
            self._upsert_call(conn, record.run_id, call)
        for (layer, index), (share, main) in shares.items():
            conn.execute(
                "UPDATE calls SET share = ?, main_source = ? WHERE run_id = ? AND layer = ? "
                "AND role = 'proposer' AND idx = ?",
                (share, main, record.run_id, layer, index),
            )
        conn.execute(
            "UPDATE runs SET novel_share = ?, aggregated_early = ? WHERE id = ?",
            (novel_share, int(record.aggregated_early), record.run_id),
        )
        cascade = (record.outcome or {}).get("cascade")
        conn.execute(
            "UPDATE runs SET outcome_json = ?, escalated = ? WHERE id = ?",
            (
                json.dumps(record.outcome) if record.outcome else None,
                None if cascade is None else int(bool(cascade.get("escalated"))),
                record.run_id,
            ),
        )
        conn.execute(
            "UPDATE runs SET status = ?, error = ?, ended_at = ?, final_text = ?, tokens_in = ?, "
            "tokens_out = ?, cost_usd = ?, wall_s = ? WHERE id = ?",
            (
                record.status,
                redact(record.error),
                record.ended_at,
                record.final_text,
                usage["tokens_in"],
                usage["tokens_out"],
                usage["cost_usd"],
                record.wall_s,
                record.run_id,
            ),
        )
        self._refresh_conversation(conn, record.conversation_id)
        return analysis

    def save_run(self, record: RunRecord) -> None:
        """Write a whole finished run at once, in one transaction (imports)."""
        with self._write() as conn:
            self._insert_run(conn, record)
            self._finish_run(conn, record)

    def import_conversation(self, conv: Conversation) -> Conversation:
        """Write an exported conversation, all or nothing; ConversationError if it clashes.

        A branch whose parent is in this database keeps the link and brings only its own turns;
        otherwise the turns it shared are imported as its own and it stands alone.
        """
        if self.conversation_summary(conv.id) is not None:
            raise ConversationError(f"conversation {conv.id} is already in {self.path}")
        linked = bool(conv.parent_id and self.conversation_summary(conv.parent_id))
        runs = [r for r in conv.runs if not linked or r.conversation_id == conv.id]
        for r in runs:
            if self.get_run(r.run_id) is not None:
                raise ConversationError(f"run {r.run_id} is already in {self.path}")
        with self._write() as conn:
            conn.execute(
                "INSERT INTO conversations (id, title, created_at, updated_at, n_turns, "
                "parent_id, branch_turn) VALUES (?,?,?,?,0,?,?)",
                (
                    conv.id,
                    conv.title,
                    conv.created_at,
                    conv.updated_at,
                    conv.parent_id if linked else None,
                    conv.branch_turn if linked else None,
                ),
            )
            for r in runs:
                r.conversation_id = conv.id
                self._insert_run(conn, r)
                self._finish_run(conn, r)
        if not linked:
            conv.parent_id = conv.branch_turn = None
        return conv

    @staticmethod
    def _upsert_call(conn: sqlite3.Connection, run_id: str, call: CallRecord) -> None:
        conn.execute(
            "INSERT INTO calls (run_id, layer, role, idx, model, label, params_json, text, status, "
            "error, started_at, ended_at, start_s, latency_s, ttft_s, tokens_in, tokens_out, "
            "cost_usd, attempts, history_note, finish_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (run_id, layer, role, idx) DO UPDATE SET model = excluded.model, "
            "label = excluded.label, params_json = excluded.params_json, text = excluded.text, "
            "status = excluded.status, error = excluded.error, started_at = excluded.started_at, "
            "ended_at = excluded.ended_at, start_s = excluded.start_s, "
            "latency_s = excluded.latency_s, ttft_s = excluded.ttft_s, "
            "tokens_in = excluded.tokens_in, tokens_out = excluded.tokens_out, "
            "cost_usd = excluded.cost_usd, attempts = excluded.attempts, "
            "history_note = excluded.history_note, finish_reason = excluded.finish_reason",
            (
                run_id,
                call.layer,
                call.role,
                call.index,
                call.model,
                call.label,
                json.dumps(call.params),
                call.text,
                call.status,
                redact(call.error),
                call.started_at,
                call.ended_at,
                call.start_s,
                call.latency_s,
                call.ttft_s,
                call.tokens_in,
                call.tokens_out,
                call.cost_usd,
                call.attempts,
                call.history_note,
                call.finish_reason,
            ),
        )

    def recover_interrupted(self) -> int:
        """Runs left `running` by a process that is gone become `interrupted`, keeping their calls."""
        rows = self.db.execute(
            "SELECT id, pid, pid_start FROM runs WHERE status = 'running'"
        ).fetchall()
        # Our own pid on a run we are not writing is an earlier process that had the same pid
        # (a container restarted: the app is pid 1 again), so it is dead too. Another live
        # process on the run's pid is someone else if it started at another time.
        dead = [
            rid
            for rid, pid, started in rows
            if rid not in _ACTIVE_RUNS and (pid == os.getpid() or not pid_alive(pid, started))
        ]
        if not dead:
            return 0
        with self._write() as conn:
            for rid in dead:
                conn.execute(
                    "UPDATE calls SET status = 'interrupted' WHERE run_id = ? "
                    "AND status IN ('waiting', 'running')",
                    (rid,),
                )
                conn.execute(
                    "UPDATE runs SET status = 'interrupted', error = 'the process running it stopped "
                    "before the run finished' WHERE id = ?",
                    (rid,),
                )
                row = conn.execute("SELECT conversation_id FROM runs WHERE id = ?", (rid,))
                self._refresh_conversation(conn, (row.fetchone() or [None])[0])
        return len(dead)

    def delete_run(self, run_id: str) -> bool:
        """Delete one run; its conversation goes too when it was the last turn of it."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT conversation_id FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            conn.execute("DELETE FROM calls WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM attribution_cache WHERE run_id = ?", (run_id,))
            deleted = conn.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount > 0
            if row and row[0]:
                left = conn.execute(
                    "SELECT count(*) FROM runs WHERE conversation_id = ?", (row[0],)
                ).fetchone()[0]
                branches = conn.execute(
                    "SELECT count(*) FROM conversations WHERE parent_id = ?", (row[0],)
                ).fetchone()[0]
                if left == 0 and branches == 0:
                    conn.execute("DELETE FROM conversations WHERE id = ?", (row[0],))
                else:
                    self._refresh_conversation(conn, row[0])
            return deleted

    def delete_conversation(self, conversation_id: str) -> int:
        """Delete a conversation with all its runs; the number of runs deleted.

        A conversation that branches share turns with is refused (ConversationError): deleting
        it would take the branches' first turns with it.
        """
        with self._write() as conn:
            branches = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM conversations WHERE parent_id = ?", (conversation_id,)
                )
            ]
            if branches:
                raise ConversationError(
                    f"conversation {conversation_id} has {len(branches)} branch(es) that share "
                    f"its turns ({', '.join(branches[:5])}); delete those first"
                )
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM runs WHERE conversation_id = ?", (conversation_id,)
                )
            ]
            for rid in ids:
                conn.execute("DELETE FROM calls WHERE run_id = ?", (rid,))
                conn.execute("DELETE FROM attribution_cache WHERE run_id = ?", (rid,))
            conn.execute("DELETE FROM runs WHERE conversation_id = ?", (conversation_id,))
            conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
            return len(ids)

    def rename_conversation(self, conversation_id: str, title: str) -> None:
        title = " ".join(title.split())[:200]
        if not title:
            raise ConversationError("the title is empty: type a name for the conversation")
        with self._write() as conn:
            conn.execute(
                "UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id)
            )

    def save_analysis(self, run_id: str, fingerprint: str, matcher: str | None, data: str) -> None:
        """Cache a run's attribution + panel (moa.analysis); a read-only store just skips it."""
        if self.read_only:
            return
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO attribution_cache (run_id, fingerprint, matcher, "
                    "analysis_json, created_at) VALUES (?,?,?,?,?)",
                    (run_id, fingerprint, matcher, data, _dt.datetime.now(_dt.UTC).isoformat()),
                )
        except StoreError:
            pass  # a cache: the run itself is intact, the next open recomputes

    def load_analysis(self, run_id: str, fingerprint: str) -> str | None:
        try:
            row = next(
                self.db.query(
                    "SELECT analysis_json FROM attribution_cache "
                    "WHERE run_id = ? AND fingerprint = ?",
                    [run_id, fingerprint],
                ),
                None,
            )
        except sqlite3.OperationalError:
            return None  # a read-only log not yet migrated to m010: computed instead
        return row["analysis_json"] if row else None

    # ------------------------------------------------------------ reading

    def get_run(self, run_id: str) -> RunRecord | None:
        r = next(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]), None)
        if r is None:
            return None
        return _record(
            r,
            self.db.query(
                "SELECT * FROM calls WHERE run_id = ? ORDER BY layer, role DESC, idx", [run_id]
            ),
        )

    def _records(self, where: str, params: list[Any]) -> list[RunRecord]:
        """The runs matching `where` (over `runs`), each with its calls: two queries in all."""
        rows = list(self.db.query(f"SELECT * FROM runs WHERE {where} ORDER BY turn, rowid", params))
        calls: dict[str, list[dict[str, Any]]] = {r["id"]: [] for r in rows}
        for c in self.db.query(
            f"SELECT * FROM calls WHERE run_id IN (SELECT id FROM runs WHERE {where}) "
            "ORDER BY layer, role DESC, idx",
            params,
        ):
            calls[c["run_id"]].append(c)
        return [_record(r, calls[r["id"]]) for r in rows]

    def resolve_conversation(self, some_id: str) -> str | None:
        """A conversation id, or a run id meaning its conversation; None if neither exists."""
        row = self.db.execute("SELECT id FROM conversations WHERE id = ?", [some_id]).fetchone()
        if row:
            return row[0]
        row = self.db.execute("SELECT conversation_id FROM runs WHERE id = ?", [some_id]).fetchone()
        return row[0] if row and row[0] else None

    def conversation_summary(self, conversation_id: str) -> ConversationSummary | None:
        row = self.db.execute(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = ?", [conversation_id]
        ).fetchone()
        return ConversationSummary(*row) if row else None

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        """The whole conversation: the turns it shares with its parent, then its own runs."""
        summary = self.conversation_summary(conversation_id)
        if summary is None:
            return None
        conv = Conversation(
            id=summary.id,
            title=summary.title,
            created_at=summary.created_at,
            updated_at=summary.updated_at,
            parent_id=summary.parent_id,
            branch_turn=summary.branch_turn,
        )
        if summary.parent_id and summary.branch_turn:
            parent = self.get_conversation(summary.parent_id)
            if parent is not None:
                conv.runs = [r for r in parent.runs if r.turn < summary.branch_turn]
        # Two queries for the whole conversation (one per run made 101 for 50 turns).
        conv.runs += self._records("conversation_id = ?", [conversation_id])
        return conv

    def branches(self, conversation_id: str) -> list[ConversationSummary]:
        rows = self.db.execute(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE parent_id = ? "
            "ORDER BY created_at",
            [conversation_id],
        ).fetchall()
        return [ConversationSummary(*r) for r in rows]

    def search_conversations(
        self,
        query: str = "",
        *,
        limit: int = 50,
        offset: int = 0,
        model: str | None = None,
        status: str | None = None,
        since: str | None = None,
        until: str | None = None,
        name: str | None = None,
        kind: str | None = None,
        strategy: str | None = None,
    ) -> list[ConversationSummary]:
        """Conversations, latest activity first; with words or filters, those with a matching
        turn, ordered by their newest matching turn.

        The matching runs are read newest first and stop once a page of distinct conversations
        is found, so a search stays as fast as the run search it is built on.
        """
        if not (fts_query(query) or model or status or since or until or name or kind or strategy):
            rows = self.db.execute(
                f"SELECT {_CONVERSATION_COLUMNS} FROM conversations "
                "ORDER BY updated_at DESC, rowid DESC LIMIT ? OFFSET ?",
                [limit, offset],
            ).fetchall()
            return [ConversationSummary(*r) for r in rows]
        where, params = self.where_clause(query, model, status, since, until, name, kind, strategy)
        cursor = self.db.execute(
            f"SELECT runs.conversation_id FROM {_source(query)}{where} ORDER BY {_order(query)} DESC",
            params,
        )
        seen: dict[str, None] = {}
        for (cid,) in cursor:
            seen.setdefault(cid, None)
            if len(seen) >= offset + limit:
                break
        cursor.close()
        ids = list(seen)[offset:]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id IN ({marks})", ids
        ).fetchall()
        by_id = {r[0]: ConversationSummary(*r) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def count_conversations(
        self,
        query: str = "",
        *,
        model: str | None = None,
        status: str | None = None,
        since: str | None = None,
        until: str | None = None,
        name: str | None = None,
        cap: int | None = 10_000,
        kind: str | None = None,
        strategy: str | None = None,
    ) -> int:
        """How many conversations match, counting at most `cap` (a pager shows "10,000+")."""
        if not (fts_query(query) or model or status or since or until or name or kind or strategy):
            return self.db.execute("SELECT count(*) FROM conversations").fetchone()[0]
        where, params = self.where_clause(query, model, status, since, until, name, kind, strategy)
        inner = f"SELECT DISTINCT runs.conversation_id FROM {_source(query)}{where}"
        if cap is not None:
            inner += f" LIMIT {int(cap) + 1}"
        return self.db.execute(f"SELECT count(*) FROM ({inner})", params).fetchone()[0]

    def where_clause(
        self,
        query: str,
        model: str | None,
        status: str | None,
        since: str | None,
        until: str | None,
        name: str | None = None,
        kind: str | None = None,
        strategy: str | None = None,
    ) -> tuple[str, list[Any]]:
        """` WHERE …` over `runs` (and `runs_fts` when there are words) with its parameters."""
        where, params = [], []
        if kind == "evaluation":
            where.append(_IN_EVAL)
        elif kind == "re-aggregation":
            where.append(f"runs.parent_run_id IS NOT NULL AND NOT {_IN_EVAL}")
        elif kind == "run":
            where.append(f"runs.parent_run_id IS NULL AND NOT {_IN_EVAL}")
        elif kind:
            raise ValueError(f"kind must be one of {', '.join(RUN_KINDS)}")
        fts = fts_query(query)
        if fts:
            where.append("runs_fts MATCH ?")
            params.append(fts)
        if model:
            # The denormalised columns answer this without touching the calls table; a fallback
            # aggregator (idx > 0) is found through the calls index of migration m005.
            where.append(
                "(runs.aggregator = ? OR instr(', ' || runs.proposers || ',', ?) > 0 OR runs.id IN "
                "(SELECT run_id FROM calls WHERE model = ? AND role = 'aggregator' AND idx > 0))"
            )
            params += [model, f", {model},", model]
        for column, value in (("status", status), ("name", name), ("strategy", strategy)):
            if value:
                where.append(f"runs.{column} = ?")
                params.append(value)
        if since:
            where.append("runs.created_at >= ?")
            params.append(since)
        if until:
            where.append("runs.created_at < ?")
            params.append(until)
        return (" WHERE " + " AND ".join(where) if where else ""), params

    def count_matching(
        self,
        query: str = "",
        *,
        model: str | None = None,
        status: str | None = None,
        since: str | None = None,
        until: str | None = None,
        name: str | None = None,
        cap: int | None = 10_000,
        kind: str | None = None,
        strategy: str | None = None,
    ) -> int:
        """How many runs match, counting at most `cap` (a pager shows "10,000+")."""
        where, params = self.where_clause(query, model, status, since, until, name, kind, strategy)
        inner = f"SELECT 1 FROM {_source(query)}{where}"
        if cap is not None:
            inner += f" LIMIT {int(cap) + 1}"
        sql = f"SELECT count(*) FROM ({inner})"
        return self.db.execute(sql, params).fetchone()[0]

    def latest_strategies(self, conversation_ids: list[str]) -> dict[str, str]:
        """Each conversation's latest turn's strategy label (for the History list)."""
        if not conversation_ids:
            return {}
        marks = ",".join("?" * len(conversation_ids))
        rows = self.db.execute(
            f"SELECT conversation_id, strategy FROM runs WHERE conversation_id IN ({marks}) "
            "ORDER BY turn, rowid",
            conversation_ids,
        ).fetchall()
        return {cid: label for cid, label in rows if label}  # later turns overwrite earlier

    def strategies(self) -> list[str]:
        """Every strategy label that appears in the log, for the History filter."""
        rows = self.db.execute("SELECT DISTINCT strategy FROM runs ORDER BY strategy").fetchall()
        return [r[0] for r in rows if r[0]]

    def models(self) -> list[str]:
        """Every model id that appears in the log, for filter pickers."""
        rows = self.db.execute("SELECT DISTINCT model FROM calls ORDER BY model").fetchall()
        return [r[0] for r in rows]

    def search_runs(
        self,
        query: str = "",
        *,
        limit: int = 50,
        offset: int = 0,
        model: str | None = None,
        status: str | None = None,
        since: str | None = None,
        until: str | None = None,
        name: str | None = None,
        kind: str | None = None,
        strategy: str | None = None,
    ) -> list[RunSummary]:
        """Newest first; `query` is plain words (quotes and FTS operators are taken literally).

        "Newest" is the order runs were logged (rowid): the same as their start times, except
        that an imported run sorts by when it was imported. Ordering by rowid lets SQLite (and
        FTS5) stop after one page instead of sorting every match: < 100 ms at 100,000 runs.
        """
        where, params = self.where_clause(query, model, status, since, until, name, kind, strategy)
        sql = (
            "SELECT runs.id, runs.created_at, runs.name, runs.prompt, runs.proposers, "
            "runs.aggregator, runs.status, runs.error, runs.wall_s, runs.tokens_in, "
            "runs.tokens_out, runs.cost_usd, runs.final_text, runs.parent_run_id, runs.strategy "
            f"FROM {_source(query)}{where} ORDER BY {_order(query)} DESC LIMIT ? OFFSET ?"
        )
        rows = self.db.execute(sql, [*params, limit, offset]).fetchall()
        summaries = [RunSummary(*row[:-1], strategy=row[-1]) for row in rows]
        self._add_counts(summaries)
        return summaries

    def latest_turns(self, conversation_ids: list[str]) -> dict[str, RunSummary]:
        """Each conversation's latest run, with its failed/cancelled proposer counts (History's
        status column: "ok · 1 of 3 failed") and its kind."""
        if not conversation_ids:
            return {}
        marks = ",".join("?" * len(conversation_ids))
        rows = self.db.execute(
            "SELECT runs.conversation_id, runs.id, runs.created_at, runs.name, runs.prompt, "
            "runs.proposers, runs.aggregator, runs.status, runs.error, runs.wall_s, "
            "runs.tokens_in, runs.tokens_out, runs.cost_usd, runs.final_text, "
            "runs.parent_run_id FROM runs WHERE runs.rowid IN (SELECT max(rowid) FROM runs "
            f"WHERE conversation_id IN ({marks}) GROUP BY conversation_id)",
            list(conversation_ids),
        ).fetchall()
        out = {row[0]: RunSummary(*row[1:]) for row in rows}
        self._add_counts(list(out.values()))
        return out

    def _add_counts(self, summaries: list[RunSummary]) -> None:
        """Failed/cancelled proposer counts, the early flag and evaluation membership of one
        page of runs (one indexed query each, not one per run)."""
        if not summaries:
            return
        by_id = {r.id: r for r in summaries}
        marks = ",".join("?" * len(by_id))
        ids = list(by_id)
        for run_id, n, failed, cancelled in self.db.execute(
            "SELECT run_id, count(*), sum(status IN ('failed', 'timeout', 'interrupted')), "
            f"sum(status = 'cancelled') FROM calls WHERE run_id IN ({marks}) "
            "AND role = 'proposer' GROUP BY run_id",
            ids,
        ):
            r = by_id[run_id]
            r.n_proposer_calls, r.n_failed, r.n_cancelled = n, failed or 0, cancelled or 0
        if "aggregated_early" in self.db["runs"].columns_dict:
            for run_id, early in self.db.execute(
                f"SELECT id, aggregated_early FROM runs WHERE id IN ({marks})", ids
            ):
                by_id[run_id].aggregated_early = bool(early)
        if self.db["eval_items"].exists():
            for (run_id,) in self.db.execute(
                f"SELECT DISTINCT run_id FROM eval_items WHERE run_id IN ({marks})", ids
            ):
                by_id[run_id].evaluation = True

    def count_runs(self) -> int:
        return self.db.execute("SELECT count(*) FROM runs").fetchone()[0]


def _outcome(text: str | None) -> dict[str, Any] | None:
    """A run's stored strategy outcome; a hand-edited, unreadable one is left out."""
    try:
        value = json.loads(text or "null")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _record(r: dict[str, Any], call_rows: Iterable[dict[str, Any]]) -> RunRecord:
    """A stored run (a `runs` row) and its calls (rows of `calls`, in order) as a RunRecord."""
    record = RunRecord(
        run_id=r["id"],
        config=_stored_config(r),
        prompt=r["prompt"],
        system_prompt=r["system_prompt"],
        status=r["status"],
        error=r["error"],
        created_at=r["created_at"],
        ended_at=r["ended_at"],
        wall_s=r["wall_s"],
        pid=r["pid"],
        pid_start=r.get("pid_start"),
        parent_run_id=r["parent_run_id"],
        conversation_id=r.get("conversation_id"),
        turn=r.get("turn") or 1,
        aggregated_early=bool(r.get("aggregated_early")),
        outcome=_outcome(r.get("outcome_json")),
    )
    for c in call_rows:
        c["index"], c["params"] = c["idx"], json.loads(c["params_json"] or "{}")
        record.calls.append(CallRecord.from_dict(c))
    return record


def _stored_config(row: dict[str, Any]) -> RunConfig:
    """The run's config; if the stored JSON is unusable (hand-edited file), rebuilt from columns."""
    try:
        return config_mod.from_dict(json.loads(row["config_json"] or "{}"))
    except (ValueError, TypeError):
        proposers = [m.strip() for m in (row["proposers"] or "unknown").split(",")]
        return RunConfig(
            proposers=[ModelSpec(model=m) for m in proposers[:8]],
            aggregator=ModelSpec(model=row["aggregator"] or "unknown"),
            name=row["name"] or "Untitled",
            layers=max(1, min(4, row["layers"] or 1)),
        )


def _shares(
    record: RunRecord, attr, ids: list[int]
) -> tuple[dict[tuple[int, int], tuple[float, int]], float | None]:
    """Each aggregated candidate's share of the final answer, and whether it was the main one."""
    if attr is None:
        return {}, None
    calls = record.proposer_calls
    out = {}
    for local, pos in enumerate(ids):
        c = calls[pos]
        out[(c.layer, c.index)] = (round(attr.share[local], 4), int(attr.main_source == local))
    return out, round(attr.novel_share, 4)


def _source(query: str) -> str:
    """FROM clause: driven by the full-text index when there are words to match."""
    if fts_query(query):
        return "runs_fts JOIN runs ON runs.rowid = runs_fts.rowid"
    return "runs"


def _order(query: str) -> str:
    # Ordering by the FTS table's own rowid lets FTS5 stream matches newest first and stop after
    # a page (0.3 ms); runs.rowid, though equal, makes SQLite sort every match (200+ ms).
    return "runs_fts.rowid" if fts_query(query) else "runs.rowid"


def fts_query(text: str) -> str:
    """User text → an FTS5 query of quoted words (AND), so operators and quotes can't error.

    The last word also matches as a prefix ("revie" finds "review"), so results follow the
    user's typing; a word the user has finished (text ending in a space) is matched whole.
    """
    words = [w for w in "".join(ch if ch.isalnum() else " " for ch in text).split() if w]
    quoted = ['"' + w.replace('"', '""') + '"' for w in words[:32]]
    if quoted and not text[-1:].isspace() and len(words) <= 32:
        quoted[-1] += "*"  # a prefix query matches the whole word too
    return " ".join(quoted)


class StoreWriter:
    """Event consumer that keeps the database in step with a live run."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._last_flush: dict[tuple[str, int, str, int], float] = {}

    def __call__(self, event: Event) -> None:
        match event:
            case RunStarted(record=record):
                self.store.start_run(record)
            case CallStarted(run_id=run_id, call=call):
                self.store.save_call(run_id, call)
            case TokenDelta(run_id=run_id, call=call):
                key = (run_id, *call.key)
                now = time.monotonic()
                if now - self._last_flush.get(key, 0.0) >= PARTIAL_FLUSH_S:
                    self._last_flush[key] = now
                    self.store.save_partial_text(run_id, call)
            case CallFinished(run_id=run_id, call=call) | CallFailed(run_id=run_id, call=call):
                self._last_flush.pop((run_id, *call.key), None)
                self.store.save_call(run_id, call)
                if call.role == "proposer" and call.status == "ok":
                    from moa import analysis  # its vectors are ready when the run finishes

                    analysis.prewarm(call.text)
            case RunFinished(record=record):
                self.store.finish_run(record)


def _pending_migrations(db: sqlite_utils.Database) -> bool:
    from moa.migrations import MIGRATIONS, MIGRATIONS_TABLE

    if not db[MIGRATIONS_TABLE].exists():
        return True
    done = {row["name"] for row in db[MIGRATIONS_TABLE].rows}
    return any(fn.__name__ not in done for fn in MIGRATIONS)


def _is_read_only(e: sqlite3.DatabaseError) -> bool:
    name = getattr(e, "sqlite_errorname", "") or ""
    return name.startswith("SQLITE_READONLY") or "readonly" in str(e) or "read-only" in str(e)


def _who() -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    except (ImportError, KeyError, AttributeError):
        return "this user"


def read_only_message(path: Path, e: sqlite3.DatabaseError | None = None) -> str:
    """`the database <path> is read-only: <why>; <fix>` — why as a non-root user meets it."""
    path = Path(os.path.abspath(path))
    folder = path.parent
    elsewhere = "or point MOA_DB / --db at a copy in a writable folder"
    try:
        mount_ro = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        mount_ro = False
    name = getattr(e, "sqlite_errorname", "") if e is not None else ""
    if mount_ro:
        why = f"its file system ({folder}) is mounted read-only"
        fix = f"remount it read-write {elsewhere}"
    elif name == "SQLITE_READONLY_DIRECTORY" or not os.access(folder, os.W_OK):
        why = (
            f"its folder {folder} is not writable by {_who()}, and SQLite must create its "
            "-wal and -shm files there"
        )
        fix = f"make the folder writable (chmod u+w '{folder}') {elsewhere}"
    elif not os.access(path, os.W_OK):
        try:
            st = path.stat()
            owned = st.st_uid == os.geteuid()
            mode = st.st_mode & 0o777
        except OSError:
            owned, mode = False, 0
        if owned and not mode & 0o200:
            why = f"the file is not writable by {_who()} (mode {mode:o})"
            fix = f"make it writable (chmod u+w '{path}') {elsewhere}"
        elif owned:
            why = f"the file is marked immutable or append-only (mode {mode:o}; lsattr shows it)"
            fix = f"clear the flag (chattr -i '{path}') {elsewhere}"
        else:
            why = (
                f"the file belongs to another user and is not writable by {_who()} (mode {mode:o})"
            )
            fix = f"run as its owner or give write access (chmod/chown '{path}') {elsewhere}"
    else:
        why = "SQLite refused to write it" + (f" ({e})" if e is not None else "")
        fix = f"check the permissions of the file, its -wal and -shm files and its folder, {elsewhere}"
    return f"the database {path} is read-only: {why}; {fix}"


def _explain(path: Path, e: sqlite3.DatabaseError) -> str:
    msg = str(e)
    if "not a database" in msg or "malformed" in msg:
        return (
            f"{path} is not a usable SQLite database ({msg}); move it aside or point MOA_DB / --db "
            "at another file"
        )
    if _is_read_only(e):
        return read_only_message(path, e)
    if "unable to open" in msg and path.exists() and not os.access(path.parent, os.W_OK):
        return read_only_message(path, e)  # SQLite could not create its -wal/-shm files
    if "unable to open" in msg:
        return f"cannot open database {path} ({msg}); check the folder exists and is writable"
    return f"database {path}: {msg}"
