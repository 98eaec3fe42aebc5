"""Evaluations in the SQLite log: tables evals, eval_items and judge_calls (migration m004), and
eval_turns for the second turns of two-turn questions (m011)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from moa.llm import redact
from moa.records import pid_alive, process_start, utc_now
from moa.store import Store

ITEM_FIELDS = (
    "category",
    "run_id",
    "status",
    "score",
    "outcome",
    "extracted",
    "error",
    "cost_usd",
    "latency_s",
    "tokens_out",
    "judge_cost_usd",
)
JUDGE_FIELDS = (
    "prompt_name",
    "model",
    "messages_json",
    "text",
    "rating",
    "verdict",
    "status",
    "error",
    "created_at",
    "latency_s",
    "tokens_in",
    "tokens_out",
    "cost_usd",
)


@dataclass
class EvalSummary:
    """One row of the list of evaluations."""

    id: str
    created_at: str
    name: str
    question_set: str
    n_questions: int
    contenders: str
    scoring: str
    judge_model: str | None
    status: str
    error: str | None
    n_items: int  # stored items (answered or not)
    n_scored: int
    n_contenders: int  # from the stored plan (names may hold commas: not from `contenders`)


class EvalStore:
    """Reads and writes evaluation rows through a Store (its connection per thread, its locks)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------------ evaluations

    def create(self, row: dict[str, Any]) -> None:
        row = {**row, "pid": os.getpid(), "pid_start": process_start(os.getpid())}
        row["status"] = "running"
        cols = ", ".join(row)
        with self.store._write() as conn:
            conn.execute(
                f"INSERT INTO evals ({cols}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )

    def get(self, eval_id: str) -> dict[str, Any] | None:
        self.recover_interrupted()
        return next(self.store.db.query("SELECT * FROM evals WHERE id = ?", [eval_id]), None)

    def find_resumable(self, fingerprint: str) -> str | None:
        """The newest unfinished evaluation of this exact plan, if any."""
        self.recover_interrupted()
        row = self.store.db.execute(
            "SELECT id FROM evals WHERE fingerprint = ? AND status IN ('interrupted', 'cancelled') "
            "ORDER BY created_at DESC LIMIT 1",
            [fingerprint],
        ).fetchone()
        return row[0] if row else None

    def claim(self, eval_id: str) -> None:
        """This process now runs the evaluation (a resume after a crash or a cancel)."""
        with self.store._write() as conn:
            conn.execute(
                "UPDATE evals SET status = 'running', error = NULL, ended_at = NULL, pid = ?, "
                "pid_start = ? WHERE id = ?",
                (os.getpid(), process_start(os.getpid()), eval_id),
            )

    def finish(self, eval_id: str, status: str, error: str | None = None) -> None:
        with self.store._write() as conn:
            conn.execute(
                "UPDATE evals SET status = ?, error = ?, ended_at = ? WHERE id = ?",
                (status, redact(error), utc_now(), eval_id),
            )

    def recover_interrupted(self) -> int:
        """Evaluations left `running` by a process that is gone become `interrupted`."""
        rows = self.store.db.execute(
            "SELECT id, pid, pid_start FROM evals WHERE status = 'running'"
        ).fetchall()
        # A live process on the pid that started at another time reuses it: ours is gone.
        dead = [eid for eid, pid, started in rows if not pid_alive(pid, started)]
        if dead and not self.store.read_only:  # a read-only log is shown as it is
            with self.store._write() as conn:
                for eid in dead:
                    conn.execute(
                        "UPDATE evals SET status = 'interrupted', error = 'the process running it "
                        "stopped before it finished' WHERE id = ? AND status = 'running'",
                        (eid,),
                    )
        return len(dead)

    def list(self, limit: int = 50) -> list[EvalSummary]:
        self.recover_interrupted()
        rows = self.store.db.execute(
            "SELECT e.id, e.created_at, e.name, e.question_set, e.n_questions, e.contenders, "
            "e.scoring, e.judge_model, e.status, e.error, "
            "(SELECT count(*) FROM eval_items i WHERE i.eval_id = e.id), "
            "(SELECT count(*) FROM eval_items i WHERE i.eval_id = e.id AND i.status = 'scored'), "
            "json_array_length(e.plan_json, '$.contenders') "
            "FROM evals e ORDER BY e.created_at DESC, e.id DESC LIMIT ?",
            [limit],
        ).fetchall()
        return [EvalSummary(*r) for r in rows]

    def delete(self, eval_id: str) -> bool:
        """The evaluation and its judge calls; its answer runs stay in the log."""
        with self.store._write() as conn:
            conn.execute("DELETE FROM judge_calls WHERE eval_id = ?", (eval_id,))
            conn.execute("DELETE FROM eval_items WHERE eval_id = ?", (eval_id,))
            conn.execute("DELETE FROM eval_turns WHERE eval_id = ?", (eval_id,))
            return conn.execute("DELETE FROM evals WHERE id = ?", (eval_id,)).rowcount > 0

    # ------------------------------------------------------------ items

    def items(self, eval_id: str) -> dict[tuple[str, str], dict[str, Any]]:
        rows = self.store.db.query("SELECT * FROM eval_items WHERE eval_id = ?", [eval_id])
        return {(r["question_id"], r["contender"]): r for r in rows}

    def save_item(self, eval_id: str, question_id: str, contender: str, **values: Any) -> None:
        unknown = set(values) - set(ITEM_FIELDS)
        if unknown:
            raise ValueError(f"unknown eval_items fields: {sorted(unknown)}")
        values["error"] = redact(values.get("error"))
        values["updated_at"] = utc_now()
        cols = ["eval_id", "question_id", "contender", *values]
        updates = ", ".join(f"{k} = excluded.{k}" for k in values)
        with self.store._write() as conn:
            conn.execute(
                f"INSERT INTO eval_items ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                f"ON CONFLICT (eval_id, question_id, contender) DO UPDATE SET {updates}",
                [eval_id, question_id, contender, *values.values()],
            )

    # ------------------------------------------------------------ second turns

    def turn_items(self, eval_id: str) -> dict[tuple[str, str, int], dict[str, Any]]:
        """The items of turns after the first, keyed (question id, contender, turn)."""
        rows = self.store.db.query("SELECT * FROM eval_turns WHERE eval_id = ?", [eval_id])
        return {(r["question_id"], r["contender"], r["turn"]): r for r in rows}

    def item(self, eval_id: str, question_id: str, contender: str) -> dict[str, Any] | None:
        """One first-turn item as stored now."""
        return next(
            self.store.db.query(
                "SELECT * FROM eval_items WHERE eval_id = ? AND question_id = ? AND contender = ?",
                [eval_id, question_id, contender],
            ),
            None,
        )

    def save_turn_item(
        self, eval_id: str, question_id: str, contender: str, turn: int, **values: Any
    ) -> None:
        unknown = set(values) - set(ITEM_FIELDS)
        if unknown:
            raise ValueError(f"unknown eval_turns fields: {sorted(unknown)}")
        values["error"] = redact(values.get("error"))
        values["updated_at"] = utc_now()
        cols = ["eval_id", "question_id", "contender", "turn", *values]
        updates = ", ".join(f"{k} = excluded.{k}" for k in values)
        with self.store._write() as conn:
            conn.execute(
                f"INSERT INTO eval_turns ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                f"ON CONFLICT (eval_id, question_id, contender, turn) DO UPDATE SET {updates}",
                [eval_id, question_id, contender, turn, *values.values()],
            )

    # ------------------------------------------------------------ judge calls

    def judge_calls(self, eval_id: str) -> dict[tuple[str, str, str], dict[str, Any]]:
        rows = self.store.db.query("SELECT * FROM judge_calls WHERE eval_id = ?", [eval_id])
        return {(r["question_id"], r["contender"], r["kind"]): r for r in rows}

    def save_judge_call(
        self, eval_id: str, question_id: str, contender: str, kind: str, **values: Any
    ) -> None:
        unknown = set(values) - set(JUDGE_FIELDS)
        if unknown:
            raise ValueError(f"unknown judge_calls fields: {sorted(unknown)}")
        values["error"] = redact(values.get("error"))
        cols = ["eval_id", "question_id", "contender", "kind", *values]
        updates = ", ".join(f"{k} = excluded.{k}" for k in values)
        with self.store._write() as conn:
            conn.execute(
                f"INSERT INTO judge_calls ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                f"ON CONFLICT (eval_id, question_id, contender, kind) DO UPDATE SET {updates}",
                [eval_id, question_id, contender, kind, *values.values()],
            )


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)
