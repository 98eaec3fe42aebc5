"""Live runs: the engine in a background thread, followed by the script thread to redraw."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from moa import engine, llm
from moa.config import RunConfig
from moa.events import (
    CallFailed,
    CallFinished,
    CallRetrying,
    CallStarted,
    Event,
    RunFinished,
    RunStarted,
    TokenDelta,
    fan_out,
)
from moa.records import CallRecord, RunRecord, new_run_id

if TYPE_CHECKING:
    from moa.conversation import TurnPlan
    from moa.store import Store

# A click on Stop (or any widget) makes Streamlit interrupt the script and run it again, so the
# engine must not live in the script thread. It runs in its own thread with its own asyncio
# loop; a LiveRun in st.session_state holds thread-safe snapshots of what arrived, and each
# script run draws from them until the run is done. The store writer sees every event,
# whatever the page does.

CallKey = tuple[int, str, int]

FRAME_S = 0.05  # at most 20 redraws a second: tokens arriving closer together share one
IDLE_S = 0.15  # with nothing new, still yield this often so a Stop click is handled


class LiveRun:
    """One run in progress: thread-safe snapshots of its calls, a version per call, Stop."""

    def __init__(
        self,
        config: RunConfig,
        prompt: str,
        system_prompt: str | None = None,
        run_id: str | None = None,
        keys: Mapping[str, str] | None = None,
        plan: TurnPlan | None = None,
    ) -> None:
        self.run_id = run_id or new_run_id()
        # Where the run goes in a conversation (None: the first turn of a new one).
        self.plan = plan
        # The browser session's own API keys (moa.ui.keys): handed to the engine thread's
        # context, never to os.environ, and dropped when the run ends.
        self._keys = dict(keys or {})
        self.config, self.prompt, self.system_prompt = config, prompt, system_prompt
        self.cancel = engine.Cancel()
        self.started = threading.Event()  # RunStarted arrived: every call exists, as waiting
        self.done = threading.Event()
        self.t0 = time.monotonic()
        self.error: str | None = None  # the engine thread itself crashed (a bug, not a model)
        self.store_error: str | None = None  # the store refused a write; the run went on
        self._lock = threading.Lock()
        self._changed = threading.Event()  # set by every event: wakes the drawing loop at once
        # The engine mutates its CallRecords in place from its own thread; the script thread
        # only ever reads copies taken here under the lock, so a card never shows a half-update.
        self._record = RunRecord(run_id=self.run_id, config=config, prompt=prompt)
        self._record.system_prompt = system_prompt
        if plan is not None:
            self._record.conversation_id, self._record.turn = plan.conversation_id, plan.turn
        self._calls: dict[CallKey, CallRecord] = {}
        self._versions: dict[CallKey, int] = {}
        self._notes: dict[CallKey, str] = {}
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ engine side

    def start(self, store: Store) -> LiveRun:
        from moa.store import StoreWriter

        writer = StoreWriter(store)
        plan = self.plan
        if plan is not None and plan.new and plan.parent_id:
            store.create_conversation(
                plan.conversation_id, plan.title, plan.parent_id, plan.branch_turn
            )

        def save(event: Event) -> None:
            # A database that refuses a write must not kill the run on screen; the page says so.
            try:
                writer(event)
            except Exception as e:
                self.store_error = llm.redact(str(e))

        def main() -> None:
            # A new thread starts with an empty context: the session's keys are set here, and
            # asyncio.run's tasks inherit them.
            llm.set_session_keys(self._keys)
            try:
                asyncio.run(
                    engine.run(
                        self.config,
                        self.prompt,
                        system_prompt=self.system_prompt,
                        # The page first: a token reaches the screen before its database write.
                        on_event=fan_out(self.on_event, save),
                        cancel=self.cancel,
                        run_id=self.run_id,
                        checked=True,
                        history=plan.history if plan is not None else (),
                        conversation_id=plan.conversation_id if plan is not None else None,
                        turn=plan.turn if plan is not None else 1,
                    )
                )
            except BaseException as e:  # a bug in the engine: show it instead of hanging
                self.error = llm.redact(f"{type(e).__name__}: {e}")
                with self._lock:
                    if self._record.status == "running":
                        self._record.status = "failed"
                        self._record.error = f"the run stopped unexpectedly: {self.error}"
            finally:
                self._keys = {}
                self.started.set()
                self.done.set()
                self._changed.set()

        self._thread = threading.Thread(target=main, name=f"moa-run-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def on_event(self, event: Event) -> None:
        """Event handler (engine thread): snapshot what changed and bump versions."""
        with self._lock:
            match event:
                case RunStarted(record=record):
                    self._record = _shell(record)
                    for call in record.calls:
                        self._snap(call)
                    self.started.set()
                case (
                    CallStarted(call=call)
                    | TokenDelta(call=call)
                    | CallFinished(call=call)
                    | CallFailed(call=call)
                ):
                    self._notes.pop(call.key, None)  # a retry note lasts until it moves on
                    self._snap(call)
                case CallRetrying(call=call, error=error, delay_s=delay):
                    self._notes[call.key] = f"retrying in {delay:.1f} s: {error}"
                    self._snap(call)
                case RunFinished(record=record):
                    # Calls that never started are marked cancelled without an event of their own.
                    for call in record.calls:
                        self._snap(call)
                    self._record = _shell(record)
        self._changed.set()

    def _snap(self, call: CallRecord) -> None:
        self._calls[call.key] = copy.copy(call)
        self._versions[call.key] = self._versions.get(call.key, 0) + 1

    # ------------------------------------------------------------ script side

    @property
    def running(self) -> bool:
        return not self.done.is_set()

    def stop(self) -> None:
        self.cancel.cancel()

    @property
    def stopping(self) -> bool:
        return self.cancel.requested and self.running

    def aggregate_now(self) -> None:
        """Stop waiting for the proposers still running: the aggregator reads what arrived."""
        self.cancel.aggregate_now()

    @property
    def aggregating_early(self) -> bool:
        return self.cancel.early_requested and self.running

    @property
    def can_aggregate_now(self) -> bool:
        """Proposers are still answering (so there is something to cut short)."""
        return (
            self.running
            and not self.cancel.requested
            and not self.cancel.early_requested
            and self.cancel.stage == "proposers"
        )

    def elapsed_s(self) -> float:
        return time.monotonic() - self.t0

    def record(self) -> RunRecord:
        """A consistent copy of the run as it stands (the whole RunRecord once done)."""
        with self._lock:
            record = copy.copy(self._record)
            record.calls = [copy.copy(c) for c in self._calls.values()]
        record.calls.sort(key=lambda c: (c.layer, c.role != "proposer", c.index))
        return record

    def changes(self, drawn: dict[CallKey, int]) -> list[tuple[CallRecord, str | None]]:
        """Calls whose version differs from `drawn` (updated in place), with their notes."""
        out = []
        with self._lock:
            for key, version in self._versions.items():
                if drawn.get(key) != version:
                    drawn[key] = version
                    out.append((copy.copy(self._calls[key]), self._notes.get(key)))
        return out

    def wait(self, timeout_s: float | None = None) -> bool:
        return self.done.wait(timeout_s)

    def wait_for_change(self, timeout_s: float) -> bool:
        """Block until an event arrives (or the timeout); True if one did."""
        changed = self._changed.wait(timeout_s)
        self._changed.clear()
        return changed


def _shell(record: RunRecord) -> RunRecord:
    """The run's own fields without its calls (those are kept as snapshots)."""
    shell = copy.copy(record)
    shell.calls = []
    return shell


def follow(
    live: LiveRun,
    draw_call: Callable[[CallRecord, str | None], None],
    draw_header: Callable[[], None],
    flush: Callable[[], None],
    checkpoint: Callable[[], object],
) -> None:
    """Redraw changed calls until the run is done (script thread).

    Wakes as soon as an event arrives, but redraws at most every FRAME_S, so a burst of tokens
    from 8 streams becomes one redraw. `checkpoint` must touch Streamlit (e.g. read
    st.session_state): that is where a Stop click or any other rerun request interrupts this
    loop, even while nothing arrives.
    """
    drawn: dict[CallKey, int] = {}
    header_at = -1.0
    while True:
        finished = live.done.is_set()  # read first: the drain below then sees the last events
        frame = time.monotonic()
        for call, note in live.changes(drawn):
            draw_call(call, note)
        flush()
        if finished or frame - header_at >= 0.25:  # the header's elapsed time ticks 4× a second
            draw_header()
            header_at = frame
        if finished:
            return
        checkpoint()
        rest = FRAME_S - (time.monotonic() - frame)
        if rest > 0:
            time.sleep(rest)
        live.wait_for_change(IDLE_S)
