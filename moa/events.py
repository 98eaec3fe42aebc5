"""Typed events the engine emits while a run happens; the CLI, UI and store consume them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moa.records import CallRecord, RunRecord


@dataclass(frozen=True)
class RunStarted:
    record: RunRecord


@dataclass(frozen=True)
class CallQueued:
    """A call exists and waits for its turn (layer not started, or provider limit)."""

    run_id: str
    call: CallRecord


@dataclass(frozen=True)
class CallStarted:
    run_id: str
    call: CallRecord


@dataclass(frozen=True)
class TokenDelta:
    run_id: str
    call: CallRecord  # call.text already includes `text`
    text: str


@dataclass(frozen=True)
class CallRetrying:
    """A 429/5xx before any token: the call waits `delay_s` and tries again."""

    run_id: str
    call: CallRecord
    error: str
    delay_s: float


@dataclass(frozen=True)
class CallFinished:
    run_id: str
    call: CallRecord  # status "ok", with usage, cost, latency, ttft


@dataclass(frozen=True)
class CallFailed:
    run_id: str
    call: CallRecord  # status "failed" | "timeout" | "cancelled"; error is the provider's message


@dataclass(frozen=True)
class LayerFinished:
    run_id: str
    layer: int
    n_ok: int
    n_failed: int


@dataclass(frozen=True)
class RunFinished:
    record: RunRecord  # status "ok" | "failed" | "cancelled"


Event = (
    RunStarted
    | CallQueued
    | CallStarted
    | TokenDelta
    | CallRetrying
    | CallFinished
    | CallFailed
    | LayerFinished
    | RunFinished
)
EventHandler = Callable[[Event], None]


def fan_out(*handlers: EventHandler | None) -> EventHandler:
    """One handler that calls each of `handlers` in order (None entries are skipped)."""
    active = [h for h in handlers if h is not None]

    def handle(event: Event) -> None:
        for h in active:
            h(event)

    return handle
