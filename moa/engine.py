"""The layered Mixture-of-Agents run: proposer layers in parallel, then the aggregator.

Reads top to bottom as the algorithm (`run`): check the inputs, run each proposer layer with
all its calls concurrent (layer k>1 sees layer k-1's answers), then stream the synthesis.
Transport lives in `moa.llm`, storage in `moa.store`, display in `moa.ui`; all of them learn
what happens through the events of `moa.events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from moa import conversation, llm, prompts, strategies
from moa.config import ConfigError, ModelSpec, RunConfig, concurrency_for, endpoint_key
from moa.conversation import HistoryTurn
from moa.events import (
    CallFailed,
    CallFinished,
    CallQueued,
    CallRetrying,
    CallStarted,
    EventHandler,
    LayerFinished,
    RunFinished,
    RunStarted,
    TokenDelta,
)
from moa.records import CallRecord, RunRecord, new_run_id, utc_now

# A call keeps at most this many characters of its answer: a runaway or hostile server streaming
# megabytes would otherwise grow memory, the database row, every redraw and the attribution
# without bound. Past it the stream is closed, CUT_NOTE marks the text, and the call ends ok.
MAX_ANSWER_CHARS = 1_000_000
CUT_NOTE = "\n\n[answer cut at {:,} characters]"
EARLY_NOTE = "cancelled by Aggregate now: the aggregator used the answers that had arrived"


class InputError(ValueError):
    """The run cannot start: bad prompt, model, key or budget. Nothing was called."""


@dataclass
class Limits:
    """How many calls may run at once per provider, and how failed calls are retried."""

    # Local calls go to one decoder that batches them (moa.local.SEQUENCES per model).
    per_provider: dict[str, int] = field(default_factory=lambda: {"local": 4})
    default: int = 16
    max_retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 10.0


class Cancel:
    """Thread-safe stop button: `cancel()` from any thread ends the run as `cancelled`.

    `aggregate_now()` is the gentler button: the proposers still running are cancelled and
    the aggregator writes the final answer from the candidates that have finished (as soon as
    one has, if none has yet). `stage` says where the run is: "proposers", "aggregator", or
    None before it starts and after it ends.
    """

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._early = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._on_early: list = []  # callbacks run in the engine's loop when aggregate_now()
        self.stage: str | None = None

    @property
    def requested(self) -> bool:
        return self._flag.is_set()

    @property
    def early_requested(self) -> bool:
        return self._early.is_set()

    def aggregate_now(self) -> None:
        self._early.set()
        if self._loop is not None and not self._loop.is_closed():
            for callback in list(self._on_early):
                self._loop.call_soon_threadsafe(callback)

    def cancel(self) -> None:
        self._flag.set()
        if self._loop is not None and self._task is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._task.cancel)

    def _bind(self, task: asyncio.Task) -> None:
        self._loop, self._task = task.get_loop(), task


@dataclass
class Estimate:
    """Upper-bound cost of a run before it starts: max_tokens for every output."""

    usd: float  # sum over models whose price is known
    unknown_models: list[str]  # models with no known price (not counted in usd)

    def describe(self) -> str:
        text = f"${self.usd:.4f}"
        if self.unknown_models:
            text += f" (+ unknown price for {', '.join(sorted(set(self.unknown_models)))})"
        return text


# ---------------------------------------------------------------- before the run


def estimate_cost(
    config: RunConfig,
    prompt: str,
    system_prompt: str | None = None,
    reuse: RunRecord | None = None,
    single: bool = False,
    history: Sequence[HistoryTurn] = (),
) -> Estimate:
    """Prompt tokens via litellm's counter × prices, max_tokens as the bound for each output.

    With `reuse` (re-aggregation) only the aggregator is called, on the stored candidates.
    The conversation's earlier turns count in full: an upper bound (a small window may leave
    some out).
    """
    usd, unknown = 0.0, []
    base_in = _LazyTokens(
        config.aggregator.model, prompts.proposer_messages(prompt, system_prompt), history
    )
    if single:
        spec = config.proposers[0]
        cost = _cost(spec, base_in, spec.max_tokens)
        return Estimate(usd=cost or 0.0, unknown_models=[] if cost is not None else [spec.model])
    prev_out = 0  # tokens of the previous layer's answers, which later calls read
    if reuse is not None:
        texts = [c.text for _, c in reuse.aggregated_candidates()]
        prev_out = llm.count_tokens(config.aggregator.model, text="\n".join(texts))
    for _layer in range(0 if reuse is not None else config.layers):
        for spec in config.proposers:
            cost = _cost(spec, base_in, spec.max_tokens, prev_out + 200)
            if cost is None:
                unknown.append(spec.model)
            else:
                usd += cost
        prev_out = sum(p.max_tokens for p in config.proposers)
    # The fallback aggregator runs only if the aggregator fails, but an upper bound counts it.
    for agg in filter(None, (config.aggregator, config.fallback_aggregator)):
        cost = _cost(agg, base_in, agg.max_tokens, prev_out + 400)
        if cost is None:
            unknown.append(agg.model)
        else:
            usd += cost
    extra_usd, extra_unknown = strategies.estimate_extra(
        config, lambda spec, out, extra: _cost(spec, base_in, out, extra), prev_out
    )
    return Estimate(usd=usd + extra_usd, unknown_models=unknown + extra_unknown)


class _LazyTokens:
    """The prompt's token count, counted only if a priced model needs it: loading a tokenizer
    costs ~0.4 s the first time in a process, before the first request could leave."""

    def __init__(
        self, model: str, messages: list[dict[str, str]], history: Sequence[HistoryTurn] = ()
    ) -> None:
        self.model, self.messages, self.history, self.n = model, messages, history, None

    def __int__(self) -> int:
        if self.n is None:
            self.n = llm.count_tokens(self.model, self.messages)
            self.n += conversation.history_tokens(self.model, self.history)
        return self.n


def _cost(spec: ModelSpec, prompt: _LazyTokens, tokens_out: int, extra_in: int = 0) -> float | None:
    """The upper-bound cost of one call; None when the model's price is unknown. The spec's
    own prices (input/output_cost_per_mtok) come first."""
    if not spec.own_prices:
        if spec.model.startswith("local/"):
            return 0.0
        if not llm.has_price(spec.model):
            return None
    return llm.cost_usd(spec, int(prompt) + extra_in, tokens_out)


def check(
    config: RunConfig,
    prompt: str,
    system_prompt: str | None = None,
    reuse: RunRecord | None = None,
    single: bool = False,
    history: Sequence[HistoryTurn] = (),
) -> Estimate:
    """Every reason a run cannot start, as one InputError naming the fix; else the estimate.

    A conversation's history never makes a run fail this check (old turns are left out for a
    model whose window is too small); the latest message alone must fit.
    """
    if not prompt or not prompt.strip():
        raise InputError("the prompt is empty: type a question or task for the models")
    if reuse is not None and not reuse.aggregated_candidates():
        raise InputError(
            f"run {reuse.run_id} has no successful candidates to re-aggregate; re-run it instead"
        )
    specs = [(f"proposers[{i}]", p) for i, p in enumerate(config.proposers)]
    aggregators = [("aggregator", config.aggregator)]
    if config.fallback_aggregator is not None:
        aggregators.append(("fallback_aggregator", config.fallback_aggregator))
    for key in ("judge", "critic", "cascade_model"):
        if getattr(config, key) is not None:
            aggregators.append((key, getattr(config, key)))
    checked = [*specs, *aggregators]
    if reuse is not None:
        checked = aggregators  # the stored candidates are reused: no proposer is called
    if single:
        if len(config.proposers) != 1:
            raise InputError(f"a single-model run takes 1 model, {len(config.proposers)} given")
        checked = specs  # the one model answers alone: no aggregator is called
    for where, spec in checked:
        try:
            llm.check_model(spec, where)
        except (llm.ModelInputError, ConfigError) as e:
            raise InputError(str(e)) from None
        window = llm.context_window(spec.model)
        if window:
            used = llm.count_tokens(spec.model, prompts.proposer_messages(prompt, system_prompt))
            if used + spec.max_tokens > window:
                raise InputError(
                    f"{where}: the prompt is {used:,} tokens and max_tokens is {spec.max_tokens:,}, "
                    f"but {spec.model} holds {window:,}; shorten the prompt or lower max_tokens"
                )
    estimate = estimate_cost(config, prompt, system_prompt, reuse, single, history)
    if config.max_cost_usd is not None and estimate.usd > config.max_cost_usd:
        raise InputError(
            f"estimated cost {estimate.describe()} is over max_cost_usd = ${config.max_cost_usd:g}; "
            "raise the cap, lower max_tokens, or use fewer or cheaper models"
        )
    return estimate


# ---------------------------------------------------------------- the run


def run_sync(config: RunConfig, prompt: str, **kwargs) -> RunRecord:
    """`run` for callers without an event loop (CLI, scripts)."""
    return asyncio.run(run(config, prompt, **kwargs))


async def run(
    config: RunConfig,
    prompt: str,
    *,
    system_prompt: str | None = None,
    on_event: EventHandler | None = None,
    cancel: Cancel | None = None,
    limits: Limits | None = None,
    run_id: str | None = None,
    checked: bool = False,
    reuse: RunRecord | None = None,
    single: bool = False,
    history: Sequence[HistoryTurn] = (),
    conversation_id: str | None = None,
    turn: int = 1,
) -> RunRecord:
    """One MoA run. Raises InputError before any call if the inputs are unusable.

    `history`: the conversation's earlier turns (`moa.conversation.sendable`); the run becomes
    turn `turn` of `conversation_id`.

    `reuse`: a stored run whose proposer calls are copied instead of called, so only the
    aggregator runs (re-aggregation: compare aggregators or synthesis prompts cheaply).
    `single`: the config's one proposer answers the prompt alone, with no aggregator (a
    baseline for evaluations). Its answer is stored in the final-answer position, so the store,
    exports and history treat it like any run's final answer.
    """
    if not checked:
        check(config, prompt, system_prompt, reuse, single, history)
    runner = _Runner(
        config, prompt, system_prompt, on_event, cancel or Cancel(), limits or Limits(), reuse
    )
    runner.single = single
    runner.history = list(history)
    runner.conversation_id, runner.turn = conversation_id, turn
    return await runner.run(run_id or new_run_id())


def reaggregate_config(
    source: RunRecord,
    aggregator: ModelSpec | None = None,
    aggregator_prompt: str | None = None,
    strategy: str | None = None,
) -> RunConfig:
    """The source run's config with another aggregator, synthesis prompt and/or strategy."""
    cfg = replace(source.config)
    if strategy is not None:
        cfg.strategy = strategy
    if aggregator is not None:
        cfg.aggregator = aggregator
    if aggregator_prompt is not None:
        cfg.aggregator_prompt = aggregator_prompt.strip() or None
    return cfg


async def reaggregate(
    source: RunRecord,
    aggregator: ModelSpec | None = None,
    aggregator_prompt: str | None = None,
    strategy: str | None = None,
    **kwargs,
) -> RunRecord:
    """A new run that reuses `source`'s candidates and calls only the (new) aggregator, or
    the calls of another strategy (`strategy`)."""
    cfg = reaggregate_config(source, aggregator, aggregator_prompt, strategy)
    return await run(cfg, source.prompt, system_prompt=source.system_prompt, reuse=source, **kwargs)


class _Runner:
    def __init__(
        self,
        config: RunConfig,
        prompt: str,
        system_prompt: str | None,
        on_event: EventHandler | None,
        cancel: Cancel,
        limits: Limits,
        reuse: RunRecord | None = None,
    ) -> None:
        self.config, self.prompt, self.system_prompt = config, prompt, system_prompt
        self.reuse = reuse
        self.single = False
        self.history: list[HistoryTurn] = []
        self.conversation_id: str | None = None
        self.turn = 1
        self.emit: EventHandler = on_event or (lambda event: None)
        self.cancel, self.limits = cancel, limits
        self.semaphores: dict[str, asyncio.Semaphore] = {}
        self.specs: dict[tuple[int, str, int], ModelSpec] = {}
        self.last_errors: dict[tuple[int, str, int], str] = {}  # per call, while it retries
        self.t0 = 0.0
        self.cascade_calls: list[CallRecord] = []

    # What moa.strategies uses to make its calls and read the run.
    def add_call(self, call: CallRecord, spec: ModelSpec) -> None:
        self._add_call(call, spec)

    async def call(self, call: CallRecord, messages: list[dict[str, str]], check=None) -> None:
        await self._call(call, messages, check)

    async def aggregate(self, previous: list[str], note: str | None = None) -> CallRecord:
        return await self._aggregate(previous, note)

    def proposer_messages(self, call: CallRecord, previous: list[str]) -> list[dict[str, str]]:
        return self._proposer_messages(call, previous)

    def with_history(
        self, call: CallRecord, messages: list[dict[str, str]]
    ) -> list[dict[str, str]]:
        """A strategy call's messages with the conversation's earlier turns, as fit its model."""
        return self._with_history(call, messages)

    async def run(self, run_id: str) -> RunRecord:
        record = RunRecord(run_id=run_id, config=self.config, prompt=self.prompt)
        record.system_prompt = self.system_prompt
        record.parent_run_id = self.reuse.run_id if self.reuse is not None else None
        record.conversation_id, record.turn = self.conversation_id, self.turn
        record.outcome = {}  # filled in place by the strategy: live views see it grow
        self.record = record
        self._plan_calls()
        self.t0 = time.monotonic()
        self.cancel._bind(asyncio.current_task())
        # Set before RunStarted, so a page drawing the run knows at once what can be cut.
        proposers_run = not self.single and self.reuse is None
        self.cancel.stage = "proposers" if proposers_run else "aggregator"
        self.emit(RunStarted(record))
        for call in record.calls:
            self.emit(CallQueued(run_id, call))
        try:
            if self.cancel.requested:
                raise asyncio.CancelledError
            await self._layers_then_synthesis()
        except asyncio.CancelledError:
            record.status, record.error = "cancelled", "cancelled by the user"
            for call in record.calls:
                if call.status in ("waiting", "running"):
                    call.status = "cancelled"
        self.cancel.stage = None
        record.wall_s = round(time.monotonic() - self.t0, 4)
        record.ended_at = utc_now()
        self.emit(RunFinished(record))
        return record

    def _plan_calls(self) -> None:
        """Every call of the run exists from the start, so a UI can show it as waiting."""
        if self.single:
            spec = self.config.proposers[0]
            self._add_call(CallRecord(2, "aggregator", 0, spec.model, spec.display), spec)
            return
        if self.reuse is not None:
            # Copies of the stored proposer calls, exactly as they were (nothing is re-called).
            self.record.calls = [
                CallRecord.from_dict(c.to_dict()) for c in self.reuse.proposer_calls
            ]
            self.config = replace(self.config, layers=self.reuse.last_layer)
            self.record.config = self.config
        if self.config.cascade and self.reuse is None:
            # Only the cascade's two calls at first; the panel is planned if it escalates.
            self.cascade_calls = strategies.cascade_pair(self)
            return
        self._plan_panel()

    def _plan_panel(self) -> None:
        """The proposer layers (except calls already planned) and the strategy's calls."""
        for layer in range(1, self.config.layers + 1 if self.reuse is None else 1):
            for i, spec in enumerate(self.config.proposers):
                call = CallRecord(layer, "proposer", i, spec.model, spec.display)
                if call.key not in self.specs:
                    self._add_call(call, spec)
        strategies.plan(self)

    def _add_call(self, call: CallRecord, spec: ModelSpec) -> None:
        call.params = {
            k: v
            for k, v in {
                "temperature": spec.temperature,
                "max_tokens": spec.max_tokens,
                "system_prompt": spec.system_prompt,
                "api_base": spec.api_base,
                "timeout_s": self.config.timeout_for(spec),
            }.items()
            if v is not None
        }
        self.specs[call.key] = spec
        self.record.calls.append(call)

    async def _layers_then_synthesis(self) -> None:
        if self.single:
            return await self._single_answer()
        record, previous = self.record, []
        if self.cascade_calls:
            if await strategies.cascade(self, self.cascade_calls):
                return  # the two answers agreed: the panel is never run
            planned = len(record.calls)
            self._plan_panel()
            for call in record.calls[planned:]:
                self.emit(CallQueued(record.run_id, call))
        if self.reuse is not None:
            previous = [c.text for _, c in record.aggregated_candidates()]
        self.cancel.stage = "proposers"
        for layer in range(1, self.config.layers + 1 if self.reuse is None else 1):
            calls = [c for c in record.calls if c.layer == layer and c.role == "proposer"]
            # A cascade's two calls have run already.
            await self._proposer_layer([c for c in calls if c.status == "waiting"], previous)
            ok = [c for c in calls if c.status == "ok"]
            self.emit(LayerFinished(record.run_id, layer, len(ok), len(calls) - len(ok)))
            if record.aggregated_early:
                if ok:
                    previous = [c.text for c in ok]
                for c in record.calls:  # later layers never run
                    if c.role == "proposer" and c.status == "waiting":
                        c.status, c.error = "cancelled", EARLY_NOTE
                break
            if not ok:
                reasons = "; ".join(f"{c.label}: {c.error}" for c in calls)
                record.status = "failed"
                record.error = f"all {len(calls)} proposers of layer {layer} failed ({reasons})"
                for c in record.calls:
                    if c.status == "waiting":
                        c.status = "cancelled"
                return
            previous = [c.text for c in ok]

        self.cancel.stage = "aggregator"
        # The last layer that answered ("Aggregate now" may have cut a later one short).
        last = max((c.layer for c in record.proposer_calls if c.status == "ok"), default=0)
        candidates = [
            (i, c)
            for i, c in enumerate(record.proposer_calls)
            if c.layer == last and c.status == "ok"
        ]
        await strategies.STRATEGIES[self.config.strategy](self, candidates)

    async def _aggregate(self, previous: list[str], note: str | None = None) -> CallRecord:
        """The synthesis (and its fallback): sets the run's status; returns the answering call.

        `note`: more instructions for the aggregator (rank's combined ranking)."""
        record = self.record
        agg = record.aggregator_call
        await self._call(agg, self._aggregator_messages(agg, previous, note))
        fallback = self.config.fallback_aggregator
        first = agg
        if agg.status in ("failed", "timeout") and fallback is not None:
            # The same synthesis by another model, recorded as a second aggregator call (index
            # 1): the failed one stays on the page and in the store with its error.
            agg = CallRecord(agg.layer, "aggregator", 1, fallback.model, fallback.display)
            self._add_call(agg, fallback)
            self.emit(CallQueued(record.run_id, agg))
            await self._call(agg, self._aggregator_messages(agg, previous, note))
        if agg.status == "ok":
            record.status = "ok"
        else:
            record.status = "failed"
            record.error = f"aggregator {first.label} {first.status}: {first.error}"
            if agg is not first:
                record.error += f"; fallback aggregator {agg.label} {agg.status}: {agg.error}"
        return agg

    async def _proposer_layer(self, calls: list[CallRecord], previous: list[str]) -> None:
        """All of a layer's calls at once; "Aggregate now" cancels those still going."""
        tasks = [
            asyncio.ensure_future(self._call(c, self._proposer_messages(c, previous)))
            for c in calls
        ]
        done = asyncio.Event()

        def cut() -> None:
            if done.is_set() or self.record.aggregated_early:
                return
            if not any(c.status == "ok" for c in calls):
                return  # nothing to aggregate yet: cut as soon as the first answer is in
            self.record.aggregated_early = True
            for task in tasks:
                task.cancel()

        def on_finished(_task: asyncio.Future) -> None:
            if self.cancel.early_requested:
                cut()

        for task in tasks:
            task.add_done_callback(on_finished)
        self.cancel._on_early.append(cut)
        try:
            if self.cancel.early_requested:
                cut()
            # return_exceptions: a call cancelled by "Aggregate now" must not end the run;
            # Stop cancels this gather itself, which still raises here.
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            done.set()
            self.cancel._on_early.remove(cut)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
        for c in calls:
            if c.status in ("waiting", "running"):  # cut while waiting for its turn
                c.status, c.error, c.ended_at = "cancelled", EARLY_NOTE, utc_now()
                self.emit(CallFailed(self.record.run_id, c))

    def _aggregator_messages(
        self, call: CallRecord, previous: list[str], note: str | None = None
    ) -> list[dict[str, str]]:
        messages = prompts.aggregator_messages(
            self.prompt,
            previous,
            self.config.aggregator_prompt,
            _join(self.system_prompt, self.specs[call.key].system_prompt),
        )
        if note:
            messages[0]["content"] += "\n\n" + note
        return self._with_history(call, messages)

    def _with_history(
        self, call: CallRecord, messages: list[dict[str, str]]
    ) -> list[dict[str, str]]:
        """The earlier turns between the system message and the new request, as fit this model.

        The new request stays the last message, plain, whatever the history holds.
        """
        if not self.history:
            return messages
        spec = self.specs[call.key]
        slot = call.index if call.role == "proposer" else None
        turns = conversation.turn_messages(self.history, self.config.history, slot)
        fitted = conversation.fit(spec.model, messages[:-1], turns, messages[-1:], spec.max_tokens)
        if fitted.left_out:
            call.history_note = conversation.left_out_note(
                fitted.left_out, spec.model, fitted.window
            )
        return fitted.messages

    async def _single_answer(self) -> None:
        call = self.record.calls[0]
        system = _join(self.system_prompt, self.specs[call.key].system_prompt)
        await self._call(
            call, self._with_history(call, prompts.proposer_messages(self.prompt, system))
        )
        self.record.status = "ok" if call.status == "ok" else "failed"
        if call.status != "ok":
            self.record.error = f"{call.label} {call.status}: {call.error}"

    def _proposer_messages(self, call: CallRecord, previous: list[str]) -> list[dict[str, str]]:
        system = _join(self.system_prompt, self.specs[call.key].system_prompt)
        if call.layer == 1:
            return self._with_history(call, prompts.proposer_messages(self.prompt, system))
        return self._with_history(call, prompts.layer_messages(self.prompt, previous, system))

    def _semaphore(self, spec: ModelSpec) -> asyncio.Semaphore | _ProcessSlot:
        limit = concurrency_for(self.config, spec)  # the config's [concurrency] table first
        if limit is not None:
            return _ProcessSlot.for_provider(*limit)
        provider = spec.provider or spec.model
        if provider in self.limits.per_provider:
            # Shared by every run in this process (other threads, other event loops): two
            # browser sessions running local models must still take turns on the CPU.
            return _ProcessSlot.for_provider(provider, self.limits.per_provider[provider])
        if provider not in self.semaphores:
            self.semaphores[provider] = asyncio.Semaphore(self.limits.default)
        return self.semaphores[provider]

    async def _call(
        self,
        call: CallRecord,
        messages: list[dict[str, str]],
        check: Callable[[str], str | None] | None = None,
    ) -> None:
        """One model call with timeout and retries; its outcome is written into `call`.

        `check`: reads a complete answer; a message back makes the call failed with it (a
        ranking or selection that cannot be parsed is a failure, never a guess)."""
        spec = self.specs[call.key]
        timeout = self.config.timeout_for(spec)
        run_id = self.record.run_id
        async with self._semaphore(spec):
            call.status, call.started_at = "running", utc_now()
            start = time.monotonic()
            call.start_s = round(start - self.t0, 4)
            self.emit(CallStarted(run_id, call))
            flight = _Flight.enter(spec)
            try:
                async with asyncio.timeout(timeout):
                    ended = await self._stream_with_retries(call, spec, messages, timeout, start)
            except TimeoutError:
                call.status = "timeout"
                call.error = f"no complete answer within {timeout:g} s (timeout_s)"
                last = self.last_errors.pop(call.key, None)
                if last is not None:  # the retries used up the time: say what kept failing
                    n = call.attempts - 1
                    when = f"after {n} retr{'y' if n == 1 else 'ies'}" if n else "before a retry"
                    call.error += f": timed out {when}; last error: {last}"
            except asyncio.CancelledError:
                early = self.record.aggregated_early and call.role == "proposer"
                call.status = "cancelled"
                call.error = EARLY_NOTE if early else "cancelled by the user"
                self._finish(call, start)
                self.emit(CallFailed(run_id, call))
                raise
            except Exception as e:  # the provider's own message, keys redacted
                call.status, call.error = "failed", llm.classify(e).message
            else:
                if ended is not None and ended.finish_reason is None and flight.overlapped:
                    call.status, call.error = "failed", _cut_off_message(spec, call)
                elif call.text.strip():
                    call.status = "ok"
                    problem = check(call.text) if check is not None else None
                    if problem:
                        call.status, call.error = "failed", problem
                else:
                    call.status, call.error = "failed", "the model returned an empty answer"
            finally:
                flight.leave()
            self._finish(call, start, messages)
            self.emit(
                CallFinished(run_id, call) if call.status == "ok" else CallFailed(run_id, call)
            )

    async def _stream_with_retries(
        self,
        call: CallRecord,
        spec: ModelSpec,
        messages: list[dict[str, str]],
        timeout: float,
        start: float,
    ) -> llm.Chunk | None:
        """The stream's closing chunk (its finish_reason), or None if the cap cut it short."""
        while True:
            call.attempts += 1
            try:
                # aclosing: leaving the loop early (the cap) closes the stream at once.
                async with contextlib.aclosing(llm.astream(spec, messages, timeout)) as stream:
                    async for chunk in stream:
                        if chunk.end:
                            call.finish_reason = chunk.finish_reason
                            self.last_errors.pop(call.key, None)
                            return chunk
                        if chunk.text:
                            if call.ttft_s is None:
                                call.ttft_s = round(time.monotonic() - start, 4)
                            if self._append(call, chunk.text):
                                return None  # cut at MAX_ANSWER_CHARS: read no further
                        if chunk.tokens_out is not None:
                            call.tokens_in, call.tokens_out = chunk.tokens_in, chunk.tokens_out
                self.last_errors.pop(call.key, None)
                return None
            except asyncio.CancelledError:
                raise
            except Exception as e:
                info = llm.classify(e)
                self.last_errors[call.key] = info.message
                # After the first token a retry would repeat text the user already saw.
                if not info.retryable or call.text or call.attempts > self.limits.max_retries:
                    raise
                delay = info.retry_after_s
                if delay is None:
                    delay = self.limits.backoff_base_s * 2 ** (call.attempts - 1)
                    delay *= 0.75 + random.random() / 2  # jitter: callers don't retry in lockstep
                delay = min(delay, self.limits.backoff_max_s)
                self.emit(CallRetrying(self.record.run_id, call, info.message, delay))
                await asyncio.sleep(delay)

    def _append(self, call: CallRecord, text: str) -> bool:
        """Add a streamed delta to the call's text; True once the text reached the cap."""
        room = MAX_ANSWER_CHARS - len(call.text)
        cut = len(text) > room
        if cut:
            text = text[: max(room, 0)] + CUT_NOTE.format(MAX_ANSWER_CHARS)
            # Usage the provider may report covers what it sent, not what was kept.
            call.tokens_in = call.tokens_out = None
        call.text += text
        self.emit(TokenDelta(self.record.run_id, call, text))
        return cut

    def _finish(self, call: CallRecord, start: float, messages: list | None = None) -> None:
        call.ended_at = utc_now()
        call.latency_s = round(time.monotonic() - start, 4)
        if call.text and call.tokens_out is None and messages is not None:
            # The provider sent no usage (some servers don't): count with litellm's tokenizer.
            call.tokens_in = llm.count_tokens(call.model, messages)
            call.tokens_out = llm.count_tokens(call.model, text=call.text)
        if call.tokens_out is not None:
            spec = self.specs.get(call.key)
            priced = spec if spec is not None and spec.model == call.model else call.model
            call.cost_usd = llm.cost_usd(priced, call.tokens_in or 0, call.tokens_out)


class _ProcessSlot:
    """A per-provider (or per-api_base) limit shared across threads and event loops (asyncio
    locks are not). One slot per name: runs that give the same server different limits share
    it, and the limit is the one the latest of them asked for."""

    _all: dict[str, _ProcessSlot] = {}
    _guard = threading.Lock()

    def __init__(self, n: int) -> None:
        self.limit, self.active = n, 0

    @classmethod
    def for_provider(cls, provider: str, n: int) -> _ProcessSlot:
        with cls._guard:
            slot = cls._all.setdefault(provider, cls(n))
            slot.limit = n
            return slot

    def _try_acquire(self) -> bool:
        with self._guard:
            if self.active < self.limit:
                self.active += 1
                return True
            return False

    async def __aenter__(self) -> None:
        # Polling keeps the wait cancellable (a thread blocked in acquire() could not be).
        delay = 0.002
        while not self._try_acquire():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def __aexit__(self, *exc: object) -> None:
        with self._guard:
            self.active -= 1


class _Flight:
    """A call in flight to an api_base, process-wide: did another call to it overlap this one?

    A server that serves one request at a time (llama-cpp-python's) ends the stream in progress
    when a second request arrives, without a finish_reason; the overlap is how we can tell.
    """

    _open: dict[str, set[_Flight]] = {}
    _guard = threading.Lock()

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.overlapped = False

    @classmethod
    def enter(cls, spec: ModelSpec) -> _Flight:
        flight = cls(endpoint_key(spec.api_base) if spec.api_base else None)
        if flight.key is not None:
            with cls._guard:
                others = cls._open.setdefault(flight.key, set())
                for other in others:
                    other.overlapped = True
                flight.overlapped = bool(others)
                others.add(flight)
        return flight

    def leave(self) -> None:
        if self.key is not None:
            with self._guard:
                self._open.get(self.key, set()).discard(self)


def _cut_off_message(spec: ModelSpec, call: CallRecord) -> str:
    base = endpoint_key(spec.api_base or "")
    got = f"after {len(call.text):,} characters" if call.text else "before any text"
    return (
        f"the stream from {base} ended {got} without a finish_reason, while another call to the "
        "same server was in flight: the server probably serves one request at a time and cut "
        "this one off (llama-cpp-python's server does). Let its calls take turns: add "
        f'`[concurrency]` with `"{base}" = 1` to the config, or set "Calls at once" for this '
        "server in the sidebar"
    )


def _join(*parts: str | None) -> str | None:
    text = "\n\n".join(p for p in parts if p and p.strip())
    return text or None
