"""A conversation's history as each model sees it: which earlier turns are sent, and what is cut.

A conversation is a list of runs (turns). Every model of a new turn sees the earlier turns as
user message + answer pairs, between its system message and the new request:

- `history = "final"` (the default, the reference MoA `bot.py` convention): the answer of each
  earlier turn is that turn's final answer, so every model sees the same agreed history and a
  follow-up like "shorter" or "explain point 2" refers to what the user actually read.
- `history = "own"`: each proposer sees its own earlier answers instead (its slot in the last
  proposer layer); the aggregator still sees the final answers, which it wrote.

A turn that failed, was cancelled or was interrupted is shown but never sent. When a model's
context window cannot hold the whole history plus its `max_tokens`, the oldest turns are left out
for that model only, and the call records a note saying which.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from moa import llm
from moa.config import RunConfig, to_dict
from moa.records import RunRecord

Message = dict[str, str]


@dataclass
class Conversation:
    """A conversation as stored: its own runs, after the turns it shares with its parent."""

    id: str
    title: str
    created_at: str
    updated_at: str
    parent_id: str | None = None  # a branch: the conversation it branched from
    branch_turn: int | None = None  # ... and the first turn it does not share with it
    runs: list[RunRecord] = field(default_factory=list)  # shared turns first, every attempt

    @property
    def turns(self) -> list[RunRecord]:
        """One run per position (the newest attempt), in order."""
        return latest_runs(self.runs)

    @property
    def next_turn(self) -> int:
        """The position a follow-up takes."""
        turns = [r.turn for r in self.runs]
        return max(turns, default=(self.branch_turn or 1) - 1) + 1

    def shared(self, run: RunRecord) -> bool:
        """Whether a turn belongs to the parent (a branch shows it but does not own it)."""
        return run.conversation_id != self.id

    def attempts(self, turn: int) -> list[RunRecord]:
        """Every run at one position, oldest first (earlier ones failed and were retried)."""
        return [r for r in self.runs if r.turn == turn]

    def history(self, before: int | None = None) -> list[HistoryTurn]:
        """The turns a new turn at position `before` (default: a follow-up) is sent."""
        upto = self.next_turn if before is None else before
        return sendable([r for r in self.runs if r.turn < upto])


@dataclass(frozen=True)
class HistoryTurn:
    """One earlier turn that can be sent: the user's message and the answers to it."""

    turn: int  # its position in the conversation, 1-based
    user: str
    final: str
    own: tuple[str | None, ...] = ()  # each proposer slot's own answer (None: it failed)
    run_id: str = ""


def latest_runs(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """One run per turn position: the newest attempt (a retry replaces a failed run on screen)."""
    by_turn: dict[int, RunRecord] = {}
    for run in runs:  # in the order they ran
        by_turn[run.turn] = run
    return [by_turn[t] for t in sorted(by_turn)]


def sendable(runs: Sequence[RunRecord]) -> list[HistoryTurn]:
    """The earlier turns models see: per position the newest run that finished with an answer."""
    by_turn: dict[int, RunRecord] = {}
    for run in runs:
        if run.status == "ok" and run.final_text:
            by_turn[run.turn] = run
    out = []
    for t in sorted(by_turn):
        run = by_turn[t]
        # By proposer index (a cascade's extra samples have indices past the proposers').
        last = {c.index: c for c in run.proposer_calls if c.layer == run.last_layer}
        own = tuple(
            last[i].text if i in last and last[i].status == "ok" else None
            for i in range(max(last, default=-1) + 1)
        )
        out.append(HistoryTurn(t, run.prompt, run.final_text or "", own, run.run_id))
    return out


def turn_messages(
    history: Sequence[HistoryTurn], mode: str = "final", slot: int | None = None
) -> list[tuple[int, list[Message]]]:
    """Each earlier turn as (turn, [user, assistant]) for one model (`slot`: a proposer's index)."""
    out = []
    for h in history:
        answer = h.final
        if mode == "own" and slot is not None and slot < len(h.own) and h.own[slot]:
            answer = h.own[slot] or h.final
        out.append(
            (
                h.turn,
                [{"role": "user", "content": h.user}, {"role": "assistant", "content": answer}],
            )
        )
    return out


@dataclass
class Fitted:
    messages: list[Message]
    left_out: list[int]  # turn numbers left out for this model, oldest first
    window: int | None


@functools.lru_cache(maxsize=8192)
def _count(model: str, role: str, content: str) -> int:
    # One message at a time, cached: a 50-turn history is counted once per model, not per call.
    return llm.count_tokens(model, [{"role": role, "content": content}])


@functools.lru_cache(maxsize=256)
def _window(model: str) -> int | None:
    return llm.context_window(model)


def count(model: str, messages: Sequence[Message]) -> int:
    return sum(_count(model, m["role"], m["content"]) for m in messages)


def fit(
    model: str,
    head: list[Message],
    turns: list[tuple[int, list[Message]]],
    tail: list[Message],
    max_tokens: int,
) -> Fitted:
    """head (system) + the newest turns that fit + tail (the new request), for one model.

    The oldest turns go first; the latest message is never cut (`engine.check` refuses a
    prompt that does not fit alone; a request made too long by candidates loses every turn and
    the provider says what is wrong). Models whose window litellm does not know get the whole
    history.
    """
    window = _window(model) if turns else None
    if window is None:
        return Fitted([*head, *(m for _, pair in turns for m in pair), *tail], [], None)
    room = window - max_tokens - count(model, head) - count(model, tail)
    kept: list[tuple[int, list[Message]]] = []
    for turn, pair in reversed(turns):
        need = count(model, pair)
        if need > room:
            break
        room -= need
        kept.append((turn, pair))
    kept.reverse()
    left_out = [t for t, _ in turns[: len(turns) - len(kept)]]
    return Fitted([*head, *(m for _, pair in kept for m in pair), *tail], left_out, window)


def _ranges(numbers: list[int]) -> str:
    parts, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}–{n}")
            start = None
    return ", ".join(parts)


def left_out_note(left_out: list[int], model: str, window: int | None) -> str:
    """`turns 1–3 left out for local/smollm2-135m: 2,048-token window`."""
    what = f"turn {left_out[0]}" if len(left_out) == 1 else f"turns {_ranges(left_out)}"
    size = f"{window:,}-token window" if window else "context window"
    return f"{what} left out for {model}: {size}"


def history_tokens(model: str, history: Sequence[HistoryTurn]) -> int:
    """Tokens the whole history adds to one call (for the cost estimate)."""
    return sum(count(model, pair) for _, pair in turn_messages(history))


@dataclass
class TurnPlan:
    """Where a new run goes: its conversation, its position and the history it is sent."""

    conversation_id: str
    turn: int
    history: list[HistoryTurn]
    title: str
    new: bool = False  # the conversation row does not exist yet
    parent_id: str | None = None
    branch_turn: int | None = None


def plan_turn(conv: Conversation | None, prompt: str) -> TurnPlan:
    """A follow-up in `conv`, or the first turn of a new conversation when it is None."""
    from moa.records import new_conversation_id

    if conv is None:
        return TurnPlan(new_conversation_id(), 1, [], prompt, new=True)
    return TurnPlan(conv.id, conv.next_turn, conv.history(), conv.title)


def plan_retry(conv: Conversation) -> tuple[TurnPlan, RunRecord]:
    """Run the latest turn again in the same position (the earlier attempt stays in the log)."""
    last = conv.turns[-1]
    if conv.shared(last):
        raise ValueError("this branch has no turn of its own yet: ask a follow-up instead")
    return TurnPlan(conv.id, last.turn, conv.history(before=last.turn), conv.title), last


def plan_branch(conv: Conversation, turn: int, *, edit: bool) -> TurnPlan:
    """A new conversation sharing `conv`'s turns before `turn` (edit: the message at `turn` is
    replaced) or up to and including `turn` (continue from there)."""
    from moa.records import new_conversation_id

    first = turn if edit else turn + 1
    return TurnPlan(
        new_conversation_id(),
        first,
        conv.history(before=first),
        conv.title,
        new=True,
        parent_id=conv.id,
        branch_turn=first,
    )


def describe_change(before: RunConfig, after: RunConfig) -> str | None:
    """What changed in the mixture between two turns, in a few words; None if nothing did."""
    changes = []
    models = [p.model for p in before.proposers], [p.model for p in after.proposers]
    if models[0] != models[1]:
        changes.append(f"proposers {', '.join(models[0])} → {', '.join(models[1])}")
    if before.aggregator.model != after.aggregator.model:
        changes.append(f"aggregator {before.aggregator.model} → {after.aggregator.model}")
    if before.layers != after.layers:
        changes.append(f"layers {before.layers} → {after.layers}")
    if before.history != after.history:
        changes.append(f"history {before.history} → {after.history}")
    if not changes:
        a, b = to_dict(before), to_dict(after)
        a.pop("name", None)
        b.pop("name", None)
        if a != b:
            changes.append("settings changed (temperature, limits or prompts)")
    return "; ".join(changes) or None
