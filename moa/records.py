"""What a run produced: one CallRecord per model call, gathered in a RunRecord."""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from moa.config import RunConfig

# Run statuses. "running" only ever appears in the store while a run is live.
RUN_STATUSES = ("running", "ok", "failed", "cancelled", "interrupted")
# Call statuses: waiting (queued), running (sent, maybe streaming), then one of the ends.
CALL_STATUSES = ("waiting", "running", "ok", "failed", "timeout", "cancelled", "interrupted")


def utc_now() -> str:
    """ISO-8601 UTC timestamp with milliseconds, sortable as text."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def process_start(pid: int | None) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux /proc), or None if unknown.

    Stored beside a pid, it tells the process that wrote a row from an unrelated one that was
    given the same pid later.
    """
    if not pid:
        return None
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22, starttime; `fields` begins at field 3
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int | None, started: int | None = None) -> bool:
    """Whether a process with this id still exists (no signal is sent).

    With `started` (its `process_start` when it was recorded), a live process whose start time
    differs is another process that reuses the pid: the recorded one is gone.
    """
    if not pid:
        return False
    if started is not None:
        now = process_start(pid)
        if now is not None:
            return now == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours
    return True


def new_run_id() -> str:
    """Time-ordered id: 12 hex digits of milliseconds then 8 random hex digits."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(4)}"


def new_conversation_id() -> str:
    """Like a run id with a leading "c", so `show ID` can never confuse the two kinds."""
    return "c" + new_run_id()


@dataclass
class CallRecord:
    """One call to one model: a proposer in a layer, or the aggregator."""

    layer: int  # proposer layers are 1..N; the aggregator is layer N+1
    role: str  # "proposer" | "aggregator" | strategy calls: "ranker" "selector" "critic" "reviser"
    index: int  # position within its layer (aggregator: 0, its fallback 1)
    model: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    status: str = "waiting"
    text: str = ""
    error: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    start_s: float | None = None  # seconds since the run started (for timelines)
    latency_s: float | None = None
    ttft_s: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    attempts: int = 0
    # Earlier conversation turns left out of this call because its model's window is too small,
    # e.g. "turns 1–3 left out for local/smollm2-135m: 2,048-token window".
    history_note: str | None = None
    finish_reason: str | None = None  # as the provider said: "stop", "length", …; None unknown

    @property
    def cut_at_max_tokens(self) -> bool:
        """The model stopped because it reached max_tokens, not because it was done."""
        return self.finish_reason == "length"

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.layer, self.role, self.index)

    @property
    def tokens_per_s(self) -> float | None:
        if not self.tokens_out or not self.latency_s or self.ttft_s is None:
            return None
        gen = self.latency_s - self.ttft_s
        return self.tokens_out / gen if gen > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CallRecord:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass
class RunRecord:
    """Everything about one MoA run: config, every call, the final answer, totals."""

    run_id: str
    config: RunConfig
    prompt: str
    system_prompt: str | None = None
    status: str = "running"
    error: str | None = None
    created_at: str = field(default_factory=utc_now)
    ended_at: str | None = None
    wall_s: float | None = None
    calls: list[CallRecord] = field(default_factory=list)
    pid: int = field(default_factory=os.getpid)
    pid_start: int | None = field(default_factory=lambda: process_start(os.getpid()))
    parent_run_id: str | None = None  # set when candidates were reused from another run
    conversation_id: str | None = None  # the conversation this run is a turn of
    turn: int = 1  # its position in the conversation, 1-based (a retry takes the same position)
    # "Aggregate now": the proposers still running were cancelled and the aggregator read
    # the candidates that had finished.
    aggregated_early: bool = False
    # What the strategy produced (moa/strategies.py): one section per kind of output (cascade,
    # ranking, vote, selection, critique) and "final": the key of the call whose text is the
    # final answer when that is not the aggregator.
    outcome: dict[str, Any] | None = None

    @property
    def proposer_calls(self) -> list[CallRecord]:
        return [c for c in self.calls if c.role == "proposer"]

    @property
    def aggregator_calls(self) -> list[CallRecord]:
        """The aggregator (index 0) and, if it failed and one is configured, its fallback (1)."""
        return sorted((c for c in self.calls if c.role == "aggregator"), key=lambda c: c.index)

    @property
    def aggregator_call(self) -> CallRecord | None:
        """The call the final answer comes from: the first that succeeded, else the last tried."""
        calls = self.aggregator_calls
        return next((c for c in calls if c.status == "ok"), calls[-1] if calls else None)

    @property
    def final_call(self) -> CallRecord | None:
        """The call whose text is the final answer: the aggregator's, unless the strategy chose
        another (a selected or voted candidate, the last revision, the cascade's answer)."""
        key = (self.outcome or {}).get("final")
        if key:
            found = [c for c in self.calls if list(c.key) == list(key)]
            if found:
                return found[0]
        return self.aggregator_call

    @property
    def final_text(self) -> str | None:
        final = self.final_call
        return final.text if final is not None and final.status == "ok" else None

    @property
    def last_layer(self) -> int:
        return max((c.layer for c in self.proposer_calls), default=0)

    def attributed_candidates(self) -> list[tuple[int, CallRecord]]:
        """The candidates the final answer is attributed to: those the aggregator saw, or only
        the one a strategy returned verbatim (select, a vote majority, a cascade's answer)."""
        seen = self.aggregated_candidates()
        chosen = self.final_call
        if chosen is not None and chosen.role not in ("aggregator", "reviser"):
            return [(pos, c) for pos, c in seen if c is chosen]
        return seen

    def aggregated_candidates(self) -> list[tuple[int, CallRecord]]:
        """The candidates the aggregator saw, as (position in proposer_calls, call)."""
        last = self.last_layer
        if self.aggregated_early:
            # Later layers never ran: the aggregator read the last layer that had answers.
            last = max((c.layer for c in self.proposer_calls if c.status == "ok"), default=last)
        return [
            (i, c)
            for i, c in enumerate(self.proposer_calls)
            if c.layer == last and c.status == "ok"
        ]

    def usage(self) -> dict[str, Any]:
        """Totals over all calls; cost is None if any call that ran has an unknown price."""
        ran = [c for c in self.calls if c.status not in ("waiting",)]
        costs = [c.cost_usd for c in ran if c.tokens_in is not None or c.tokens_out]
        return {
            "tokens_in": sum(c.tokens_in or 0 for c in ran),
            "tokens_out": sum(c.tokens_out or 0 for c in ran),
            "cost_usd": None if any(x is None for x in costs) else round(sum(costs), 8),
            "wall_s": self.wall_s,
        }
