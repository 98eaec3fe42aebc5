"""Evaluations: MoA configs vs single models on a question set, for quality, cost and latency.

Reads top to bottom as the procedure: contenders (a preset's mixture, each of its models alone,
Self-MoA), the plan and its pre-run check and estimate, the run (every answer is a normal stored
run, linked to its evaluation item; an interrupted evaluation resumes without repeating finished
calls), scoring (matching or an LLM judge), then results with statistics, a per-category
breakdown, the headline and the Pareto front. A UI drives it through `prepare`,
`run_evaluation` (with a progress callback and a cancel button) and `load_results`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import re
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from moa import config as config_mod
from moa import engine, evalturns, llm, prompts, scoring
from moa.config import ModelSpec, RunConfig
from moa.evalstore import EvalStore, EvalSummary, dumps
from moa.events import EventHandler, fan_out
from moa.questions import Question, QuestionFileError, QuestionSet
from moa.records import RunRecord, new_run_id, utc_now
from moa.store import Store, StoreWriter

SCORINGS = ("auto", "match", "judge", "pairwise")
SCORE_KINDS = {"match": "accuracy", "judge": "rating", "pairwise": "win_rate"}
DEFAULT_CONCURRENCY = 4
SELF_MOA_TEMPERATURE = 0.7
JUDGE_MAX_TOKENS = 1024  # MT-Bench judges explain first, then give the verdict
JUDGE_TIMEOUT_S = 300.0
SELF_MOA_PREFIX = "self-moa:"


class EvalInputError(ValueError):
    """The evaluation cannot start; the message names what to fix. Nothing was called."""


class BudgetError(EvalInputError):
    """The pre-run estimate is over the budget cap."""


# ---------------------------------------------------------------- contenders


@dataclass
class Contender:
    """Something that answers questions: an MoA config, one model alone, or Self-MoA."""

    name: str
    kind: str  # "moa" | "single" | "self-moa"
    config: RunConfig  # single: 1 proposer, aggregator = the same spec (never called)

    @property
    def models(self) -> list[str]:
        specs = self.config.proposers[:1] if self.kind == "single" else self.config.models()
        return list(dict.fromkeys(s.model for s in specs))

    @property
    def final_spec(self) -> ModelSpec:
        """The spec that writes the answer (for the judge's token estimate)."""
        return self.config.proposers[0] if self.kind == "single" else self.config.aggregator

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "config": config_mod.to_dict(self.config)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Contender:
        return cls(d["name"], d["kind"], config_mod.from_dict(d["config"]))


def single(spec: ModelSpec | str, name: str | None = None, timeout_s: float = 120.0) -> Contender:
    """One model answering alone (`spec` may be `provider/model` or `model@http://host/v1`)."""
    if isinstance(spec, str):
        spec = config_mod._spec_from_cli(spec.strip())
    cfg = RunConfig(
        proposers=[spec],
        aggregator=spec,
        name=name or spec.display,
        proposer_timeout_s=timeout_s,
    )
    return Contender(cfg.name, "single", config_mod.validate(cfg))


def mixture(cfg: RunConfig, name: str | None = None) -> Contender:
    return Contender(name or cfg.name, "moa", cfg)


def self_moa(
    cfg: RunConfig,
    model: ModelSpec | str | None = None,
    n: int | None = None,
    temperature: float = SELF_MOA_TEMPERATURE,
    name: str | None = None,
) -> Contender:
    """Self-MoA (Li et al. 2025): n samples of one model at `temperature`, then cfg's aggregator.

    The model defaults to the aggregator's (usually the strongest in a preset); n defaults to the
    number of proposers, so the mixture and Self-MoA make the same number of calls.
    """
    if not 0 < temperature <= 2:
        raise EvalInputError(
            f"Self-MoA temperature = {temperature:g}: use 0 < T <= 2 so the samples differ"
        )
    n = n if n is not None else max(2, len(cfg.proposers))
    if not 1 <= n <= config_mod.LIMITS["proposers"][1]:
        raise EvalInputError(f"Self-MoA samples: {n} given, allowed 1..8")
    if model is None:
        base = cfg.aggregator
    elif isinstance(model, ModelSpec):
        base = model
    else:
        wanted = config_mod._spec_from_cli(model.strip())
        # The preset's own settings for that model (system prompt, max_tokens, endpoint) if it has it.
        base = next(
            (s for s in [*cfg.proposers, cfg.aggregator] if s.model == wanted.model),
            wanted,
        )
    proposers = [
        replace(base, temperature=temperature, label=f"{base.display} #{i + 1}") for i in range(n)
    ]
    new = replace(
        cfg,
        proposers=proposers,
        name=name or f"Self-MoA {base.display} ×{n}",
        max_cost_usd=None,
    )
    return Contender(new.name, "self-moa", config_mod.validate(new))


def from_preset(
    cfg: RunConfig,
    *,
    alone: bool = True,
    with_self_moa: bool = True,
    self_moa_model: ModelSpec | str | None = None,
    n: int | None = None,
    temperature: float = SELF_MOA_TEMPERATURE,
) -> list[Contender]:
    """The one-click comparison: the mixture, each of its models alone, and Self-MoA."""
    out = [mixture(cfg)]
    if alone:
        seen = set()
        for spec in [*cfg.proposers, cfg.aggregator]:
            key = (spec.model, spec.api_base)  # each *model* alone, once
            if key not in seen:
                seen.add(key)
                timed = replace(spec, timeout_s=cfg.timeout_for(spec))
                out.append(single(timed))
    if with_self_moa:
        out.append(self_moa(cfg, self_moa_model, n, temperature))
    return unique_names(out)


_STRATEGY_SUFFIX = re.compile(
    r"@(" + "|".join(config_mod.STRATEGIES) + r")(\+cascade)?$|@(cascade)$", re.IGNORECASE
)


def with_strategy(c: Contender, strategy: str, cascade: bool = False) -> Contender:
    """The contender's mixture with another strategy (and cascade), named `NAME@strategy`."""
    if c.kind == "single":
        raise EvalInputError(
            f"{c.name} is one model alone: a strategy needs a mixture (a preset or config)"
        )
    cfg = config_mod.validate(replace(c.config, strategy=strategy, cascade=cascade))
    return Contender(f"{c.name}@{cfg.strategy_label}", c.kind, cfg)


def parse_contender(text: str) -> Contender:
    """CLI contender: a preset name or a TOML config file → its MoA; `provider/model[@url]` →
    that model alone; `self-moa:PRESET` → Self-MoA on the preset's aggregator model;
    `self-moa:MODEL` → 3 samples of MODEL aggregated by itself. A mixture may end in
    `@STRATEGY` or `@STRATEGY+cascade` (`local-demo@vote`, `local-quick@synthesize+cascade`)."""
    text = text.strip()
    m = _STRATEGY_SUFFIX.search(text)
    if m and text[: m.start()].strip():
        strategy = (m.group(1) or "synthesize").lower()
        return with_strategy(
            parse_contender(text[: m.start()]), strategy, bool(m.group(2) or m.group(3))
        )
    if text.lower().endswith(".toml"):
        return mixture(config_mod.load(text))
    if text.startswith(SELF_MOA_PREFIX):
        rest = text[len(SELF_MOA_PREFIX) :].strip()
        if rest.lower().endswith(".toml"):
            return self_moa(config_mod.load(rest))
        if "/" in rest:
            spec = config_mod._spec_from_cli(rest)
            base = RunConfig(
                proposers=[spec],
                aggregator=replace(spec, temperature=0.2),
                name=spec.display,
            )
            return self_moa(base, spec, n=3)
        return self_moa(config_mod.load_preset(rest))
    if "/" in text:
        return single(text)
    return mixture(config_mod.load_preset(text))


def unique_names(contenders: list[Contender]) -> list[Contender]:
    """Contender names key the results: a repeated name gets " (2)", " (3)"…"""
    seen: dict[str, int] = {}
    out = []
    for c in contenders:
        n = seen[c.name] = seen.get(c.name, 0) + 1
        out.append(c if n == 1 else replace(c, name=f"{c.name} ({n})"))
    return out


def judge_concurrency(contenders: list[Contender]) -> dict[str, int]:
    """The contenders' [concurrency] entries, the tightest of each, for the judge's calls: a
    judge on a server that serves one request at a time takes turns with the answers there."""
    out: dict[str, int] = {}
    for c in contenders:
        for key, limit in c.config.concurrency.items():
            out[key] = min(limit, out.get(key, limit))
    return out


def judge_spec(model: str | ModelSpec) -> ModelSpec:
    """A judge model at temperature 0 with room to explain before its verdict."""
    spec = config_mod._spec_from_cli(model.strip()) if isinstance(model, str) else model
    return replace(spec, temperature=0.0, max_tokens=max(spec.max_tokens, JUDGE_MAX_TOKENS))


# ---------------------------------------------------------------- the plan


@dataclass
class EvalPlan:
    """What to evaluate and how; `resolved()` checks it and fills in the defaults."""

    questions: QuestionSet
    contenders: list[Contender]
    scoring: str = "auto"  # auto | match | judge | pairwise
    judge: ModelSpec | None = None
    baseline: str | None = None  # pairwise: the contender every other one is compared with
    concurrency: int = DEFAULT_CONCURRENCY  # answers (runs) in flight at once
    max_cost_usd: float | None = None  # refuse to start if the estimate is over this
    name: str | None = None

    def resolved(self) -> EvalPlan:
        if not self.questions.questions:
            raise EvalInputError(f"question set {self.questions.name} is empty")
        if not self.contenders:
            raise EvalInputError("no contenders: name at least one preset or model")
        names = [c.name for c in self.contenders]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise EvalInputError(f"two contenders are both named {dup!r}; rename one")
        if not 1 <= self.concurrency <= 64:
            raise EvalInputError(f"concurrency = {self.concurrency} is out of range: allowed 1..64")
        if self.max_cost_usd is not None and not (
            math.isfinite(self.max_cost_usd) and self.max_cost_usd >= 0
        ):
            raise EvalInputError(f"the budget must be $0 or more, got {self.max_cost_usd!r}")
        kind = self.scoring
        if kind not in SCORINGS:
            raise EvalInputError(f"scoring {kind!r} is not one of {', '.join(SCORINGS)}")
        unverifiable = next((q for q in self.questions.questions if not q.verifiable), None)
        two_turn = next((q for q in self.questions.questions if q.followup is not None), None)
        if kind == "auto":
            if unverifiable is None and two_turn is None:
                kind = "match"
            elif self.judge is not None:
                kind = "judge"
            elif unverifiable is not None:
                raise EvalInputError(
                    f"question {unverifiable.id!r} of {self.questions.name} has no verifiable "
                    "answer: name a judge model (--judge MODEL) to grade the answers"
                )
        if kind in ("auto", "match") and two_turn is not None:
            raise EvalInputError(
                f"question {two_turn.id!r} of {self.questions.name} has a second turn, which only "
                "a judge can grade: name a judge model (--judge MODEL) or ask first turns only "
                "(--turns 1)"
            )
        if kind == "match" and unverifiable is not None:
            raise EvalInputError(
                f"scoring 'match' needs an answer for every question; {unverifiable.id!r} of "
                f"{self.questions.name} has none (use a judge instead)"
            )
        baseline = None
        if kind in ("judge", "pairwise"):
            if self.judge is None:
                raise EvalInputError(f"scoring {kind!r} needs a judge model (--judge MODEL)")
            try:
                scoring.judge_prompts()
            except QuestionFileError as e:
                raise EvalInputError(str(e)) from None
        if kind == "pairwise":
            if len(self.contenders) < 2:
                raise EvalInputError("pairwise scoring needs at least two contenders")
            baseline = self.baseline or self.contenders[0].name
            if baseline not in names:
                raise EvalInputError(
                    f"baseline {baseline!r} is not a contender (contenders: {', '.join(names)})"
                )
        judge = judge_spec(self.judge) if self.judge is not None and kind != "match" else None
        return replace(self, scoring=kind, judge=judge, baseline=baseline)

    def to_dict(self) -> dict[str, Any]:
        judge = None
        if self.judge is not None:
            judge = {k: v for k, v in dataclasses.asdict(self.judge).items() if v is not None}
        return {
            "name": self.name,
            "question_set": self.questions.name,
            "question_source": self.questions.source,
            "questions": [q.to_dict() for q in self.questions.questions],
            "contenders": [c.to_dict() for c in self.contenders],
            "scoring": self.scoring,
            "judge": judge,
            "baseline": self.baseline,
            "concurrency": self.concurrency,
            "max_cost_usd": self.max_cost_usd,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalPlan:
        qs = QuestionSet(
            d["question_set"],
            d.get("question_source", ""),
            [Question.from_dict(q) for q in d["questions"]],
        )
        return cls(
            questions=qs,
            contenders=[Contender.from_dict(c) for c in d["contenders"]],
            scoring=d["scoring"],
            judge=ModelSpec(**d["judge"]) if d.get("judge") else None,
            baseline=d.get("baseline"),
            concurrency=d.get("concurrency", DEFAULT_CONCURRENCY),
            max_cost_usd=d.get("max_cost_usd"),
            name=d.get("name"),
        )

    def fingerprint(self) -> str:
        """Same questions, contenders and scoring → same fingerprint (budget and speed aside)."""
        d = self.to_dict()
        for key in ("name", "concurrency", "max_cost_usd", "question_source"):
            d.pop(key)
        return hashlib.sha256(dumps(d).encode()).hexdigest()[:32]


# ---------------------------------------------------------------- check and estimate


@dataclass
class EvalEstimate:
    """Upper bound of what the remaining work costs (max_tokens for every output)."""

    answers_usd: float
    judge_usd: float
    unknown_models: list[str]  # no known price: not counted
    n_runs: int
    n_judge_calls: int

    @property
    def usd(self) -> float:
        return self.answers_usd + self.judge_usd

    def describe(self) -> str:
        text = f"${self.usd:.4f}"
        if self.judge_usd:
            text += f" (answers ${self.answers_usd:.4f} + judge ${self.judge_usd:.4f})"
        if self.unknown_models:
            text += f" + unknown price for {', '.join(sorted(set(self.unknown_models)))}"
        return text


@dataclass
class Prepared:
    """A checked plan, ready to run: a new evaluation, or the unfinished one it resumes."""

    plan: EvalPlan
    eval_id: str | None  # set when an unfinished evaluation of this plan is resumed
    estimate: EvalEstimate
    total: int  # items: questions × contenders, and follow-ups × contenders
    done: int  # items already finished (resumed)


def prepare(
    store: Store, plan: EvalPlan, *, resume: bool = True, eval_id: str | None = None
) -> Prepared:
    """Check the plan and estimate the cost of what is left; write nothing, call no model.

    With `resume`, an interrupted or cancelled evaluation of the very same plan continues;
    `eval_id` resumes that one (its stored plan is used and `plan` may be None).
    """
    es = EvalStore(store)
    if eval_id is not None:
        row = es.get(eval_id)
        if row is None:
            raise EvalInputError(f"no evaluation with id {eval_id!r}")
        if row["status"] == "running":
            raise EvalInputError(f"evaluation {eval_id} is running in another process")
        plan = EvalPlan.from_dict(json.loads(row["plan_json"]))
    plan = plan.resolved()
    if eval_id is None and resume:
        eval_id = es.find_resumable(plan.fingerprint())
    items = es.items(eval_id) if eval_id else {}
    done = {k for k, v in items.items() if v["status"] in ("scored", "failed")}
    answered = {k for k, v in items.items() if v["status"] in ("answered", "unscored")}
    _check_models(plan)
    estimate = estimate_cost(plan, done, answered)
    turn_items = es.turn_items(eval_id) if eval_id else {}
    evalturns.add_estimate(estimate, plan, turn_items)
    if plan.max_cost_usd is not None and estimate.usd > plan.max_cost_usd:
        raise BudgetError(
            f"estimated cost {estimate.describe()} is over the budget of ${plan.max_cost_usd:g}; "
            "raise the cap, use fewer questions (--limit), fewer or cheaper contenders, or a "
            "cheaper judge"
        )
    total = len(plan.questions.questions) * len(plan.contenders) + evalturns.n_items(plan)
    done_turns = evalturns.stored_progress(turn_items)[0]
    return Prepared(plan, eval_id, estimate, total, len(done) + done_turns)


def _check_models(plan: EvalPlan) -> None:
    """Models known, keys set, the longest question fits every context window."""
    longest = max((t for q in plan.questions.questions for t in q.turns), key=len)
    for c in plan.contenders:
        # A single model's config lists it as proposer and (never called) aggregator: check it
        # once, without a per-run cap (its estimate would count the aggregator too).
        cfg = replace(c.config, max_cost_usd=None) if c.kind == "single" else c.config
        try:
            engine.check(cfg, longest)
        except engine.InputError as e:
            raise EvalInputError(f"contender {c.name!r}: {e}") from None
    if plan.judge is not None:
        try:
            llm.check_model(plan.judge, "judge")
        except llm.ModelInputError as e:
            raise EvalInputError(str(e)) from None


def _cost(spec: ModelSpec, tokens_in: Callable[[], int], tokens_out: int) -> float | None:
    """Price of one call (the spec's own prices first, as the engine counts them); the token
    count is only done for models with a price."""
    if spec.model.startswith("local/") and not spec.own_prices:
        return 0.0
    if not _has_price(spec):
        return None
    return llm.cost_usd(spec, tokens_in(), tokens_out)


def _has_price(spec: ModelSpec) -> bool:
    """Priced in its spec (the sidebar's price inputs) or in litellm's map."""
    return spec.own_prices or _priced(spec.model)


_PRICED: dict[str, bool] = {}


def _priced(model: str) -> bool:
    if model not in _PRICED:
        _PRICED[model] = llm.has_price(model)
    return _PRICED[model]


def estimate_cost(
    plan: EvalPlan,
    done: set[tuple[str, str]] = frozenset(),
    answered: set[tuple[str, str]] = frozenset(),
) -> EvalEstimate:
    """Upper-bound cost of the items not in `done` (those in `answered` need only judging)."""
    est = EvalEstimate(0.0, 0.0, [], 0, 0)
    calls_per_item = {"match": 0, "judge": 1, "pairwise": 2}[plan.scoring]
    for q in plan.questions.questions:
        for c in plan.contenders:
            key = (q.id, c.name)
            if key in done:
                continue
            if key not in answered:
                est.n_runs += 1
                usd, unknown = _answer_cost(c, q)
                est.answers_usd += usd
                est.unknown_models += unknown
            if calls_per_item and not (plan.scoring == "pairwise" and c.name == plan.baseline):
                est.n_judge_calls += calls_per_item
                cost = _judge_cost(plan, c, q)
                if cost is None:
                    est.unknown_models.append(plan.judge.model)
                else:
                    est.judge_usd += cost * calls_per_item
    est.unknown_models = sorted(set(est.unknown_models))
    return est


def _answer_cost(c: Contender, q: Question) -> tuple[float, list[str]]:
    """(known cost, models of unknown price) of one answer; token counts only where priced."""
    if c.kind == "single":
        spec = c.config.proposers[0]
        messages = prompts.proposer_messages(q.prompt, spec.system_prompt)
        cost = _cost(spec, lambda: llm.count_tokens(spec.model, messages), spec.max_tokens)
        return (0.0, [spec.model]) if cost is None else (cost, [])
    remote = [s for s in c.config.models() if not s.model.startswith("local/")]
    if not remote:
        return 0.0, []  # local models cost 0
    if not any(_has_price(s) for s in remote):
        return 0.0, list(dict.fromkeys(s.model for s in remote))
    est = engine.estimate_cost(c.config, q.prompt)
    return est.usd, est.unknown_models


def _judge_cost(plan: EvalPlan, c: Contender, q: Question) -> float | None:
    """One judge call: its template, the question, the reference and the answer(s) at max_tokens."""
    judge = plan.judge
    assert judge is not None
    answer_tokens = c.final_spec.max_tokens
    if plan.scoring == "pairwise":
        base = next(x for x in plan.contenders if x.name == plan.baseline)
        answer_tokens += base.final_spec.max_tokens
    text = q.prompt + (q.reference or "")
    return _cost(
        judge,
        lambda: llm.count_tokens(judge.model, text=text) + 400 + answer_tokens,
        judge.max_tokens,
    )


# ---------------------------------------------------------------- one answer


async def run_single(
    config: RunConfig,
    prompt: str,
    *,
    system_prompt: str | None = None,
    on_event: EventHandler | None = None,
    cancel: engine.Cancel | None = None,
    limits: engine.Limits | None = None,
    run_id: str | None = None,
) -> RunRecord:
    """config.proposers[0] answers alone; no aggregator call. Inputs must be checked already."""
    return await engine.run(
        config,
        prompt,
        system_prompt=system_prompt,
        on_event=on_event,
        cancel=cancel,
        limits=limits,
        run_id=run_id,
        checked=True,
        single=True,
    )


# ---------------------------------------------------------------- progress and cancel


@dataclass
class Progress:
    """Where an evaluation stands; passed to `on_progress` after every finished item."""

    eval_id: str
    done: int  # finished items (scored, failed or unscored), resumed ones included
    total: int
    failed: int  # answers that failed
    resumed: int  # items finished before this session started
    elapsed_s: float  # this session
    eta_s: float | None  # from this session's pace; None until an item has finished
    answers_usd: float  # spent on answers so far (known prices only)
    judge_usd: float  # spent on judge calls so far
    message: str  # the item that just finished, e.g. "SmolLM2 · verifiable-7: ✓"

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def describe(self) -> str:
        eta = "?" if self.eta_s is None else _clock(self.eta_s)
        spent = f"${self.answers_usd:.4f}"
        if self.judge_usd:
            spent += f" + judge ${self.judge_usd:.4f}"
        failed = f" · {self.failed} failed" if self.failed else ""
        return (
            f"[{self.done}/{self.total}] {self.fraction:4.0%}{failed} · {spent} · "
            f"{_clock(self.elapsed_s)} elapsed · ETA {eta} · {self.message}"
        )


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class EvalCancel:
    """Thread-safe stop button for a whole evaluation: every run in flight is cancelled."""

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._lock = threading.Lock()
        self._runs: set[engine.Cancel] = set()

    @property
    def requested(self) -> bool:
        return self._flag.is_set()

    def cancel(self) -> None:
        self._flag.set()
        with self._lock:
            runs = list(self._runs)
        for c in runs:
            c.cancel()

    def _for_run(self) -> engine.Cancel:
        c = engine.Cancel()
        with self._lock:
            self._runs.add(c)
        if self.requested:
            c.cancel()
        return c

    def _done(self, c: engine.Cancel) -> None:
        with self._lock:
            self._runs.discard(c)


# ---------------------------------------------------------------- the run


def run_evaluation_sync(store: Store, prepared: Prepared, **kwargs: Any) -> EvalResults:
    """`run_evaluation` for callers without an event loop (CLI, scripts, a UI's worker thread)."""
    return asyncio.run(run_evaluation(store, prepared, **kwargs))


async def run_evaluation(
    store: Store,
    prepared: Prepared,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_event: EventHandler | None = None,
    cancel: EvalCancel | None = None,
    limits: engine.Limits | None = None,
) -> EvalResults:
    """Answer and score every item not finished yet; return the results.

    `on_event` receives the engine events of the contenders' runs (not the judge's).
    """
    es = EvalStore(store)
    plan = prepared.plan
    eval_id = prepared.eval_id
    if eval_id is None:
        eval_id = new_run_id()
        es.create(
            {
                "id": eval_id,
                "created_at": utc_now(),
                "name": plan.name or f"{plan.questions.name} × {len(plan.contenders)} contenders",
                "question_set": plan.questions.name,
                "n_questions": len(plan.questions.questions),
                "contenders": ", ".join(c.name for c in plan.contenders),
                "scoring": plan.scoring,
                "judge_model": plan.judge.model if plan.judge else None,
                "baseline": plan.baseline,
                "fingerprint": plan.fingerprint(),
                "max_cost_usd": plan.max_cost_usd,
                "estimate_usd": prepared.estimate.usd,
                "plan_json": dumps(plan.to_dict()),
            }
        )
    else:
        es.claim(eval_id)
    ev = _Evaluation(
        store,
        plan,
        eval_id,
        on_progress,
        on_event,
        cancel or EvalCancel(),
        limits or engine.Limits(),
    )
    try:
        status, error = await ev.run()
    except BaseException as e:
        es.finish(eval_id, "failed", f"{type(e).__name__}: {e}")
        raise
    es.finish(eval_id, status, error)
    return load_results(store, eval_id)


@dataclass
class _Answer:
    text: str | None  # None: the run failed
    record: RunRecord


def judged_values(
    rows: list[dict[str, Any]], score: float | None, outcome: str | None, problem: str | None
) -> tuple[dict[str, Any], str]:
    """What the judge calls of one answer come to: the item's stored values (status, score,
    outcome, error, judge cost) and a short progress label. First and second turns alike."""
    costs = [r.get("cost_usd") for r in rows]
    judge_cost = None if any(x is None for x in costs) else sum(costs)
    failed = next((r for r in rows if r["status"] != "ok"), None)
    if failed is not None:
        problem = f"judge call {failed['status']}: {failed['error']}"
    elif problem is not None:
        problem = f"the judge gave {problem}: {(rows[-1]['text'] or '')[-120:]!r}"
    status = "scored" if score is not None and failed is None else "unscored"
    values = {
        "status": status,
        "score": score if status == "scored" else None,
        "outcome": outcome,
        "error": problem,
        "judge_cost_usd": judge_cost,
    }
    label = outcome or (f"{score:g}/10" if score is not None else problem or "")
    return values, label


class _Evaluation:
    """One session of an evaluation: the items left, their runs, their scores."""

    def __init__(
        self,
        store: Store,
        plan: EvalPlan,
        eval_id: str,
        on_progress: Callable[[Progress], None] | None,
        on_event: EventHandler | None,
        cancel: EvalCancel,
        limits: engine.Limits,
    ) -> None:
        self.store, self.es, self.plan, self.eval_id = store, EvalStore(store), plan, eval_id
        self.on_progress = on_progress or (lambda p: None)
        self.on_event = fan_out(StoreWriter(store), on_event)
        self.cancel, self.limits = cancel, limits
        self.items = self.es.items(eval_id)
        self.judged = self.es.judge_calls(eval_id)
        self.slots = asyncio.Semaphore(plan.concurrency)
        # Local models generate one at a time on the CPU, but each engine run has its own
        # per-provider limit; without this lock concurrent runs would queue inside llama.cpp and
        # spend their timeouts waiting there.
        self.local = asyncio.Lock()
        self.baseline_answers: dict[str, asyncio.Future[str | None]] = {}
        self.resumed = sum(1 for v in self.items.values() if v["status"] in ("scored", "failed"))
        self.done = self.resumed
        self.failed = sum(1 for v in self.items.values() if v["status"] == "failed")
        self.total = len(plan.questions.questions) * len(plan.contenders)
        self.answers_usd = sum(
            v["cost_usd"] or 0 for v in self.items.values() if v["status"] != "running"
        )
        self.judge_usd = sum(v["cost_usd"] or 0 for v in self.judged.values())
        # Second turns (moa.evalturns) are items of their own.
        self.turn_items = self.es.turn_items(eval_id)
        self.baseline_followups: dict[str, asyncio.Future[tuple[str, str] | None]] = {}
        done2, failed2, spent2 = evalturns.stored_progress(self.turn_items)
        self.total += evalturns.n_items(plan)
        self.resumed += done2
        self.done += done2
        self.failed += failed2
        self.answers_usd += spent2
        self.t0 = time.monotonic()

    async def run(self) -> tuple[str, str | None]:
        loop = asyncio.get_running_loop()
        by_name = {c.name: c for c in self.plan.contenders}
        order = [c.name for c in self.plan.contenders]
        if self.plan.baseline:
            # The baseline first, so the comparisons waiting on its answers can start early.
            order.remove(self.plan.baseline)
            order.insert(0, self.plan.baseline)
            self.baseline_answers = {
                q.id: loop.create_future() for q in self.plan.questions.questions
            }
            self.baseline_followups = evalturns.baseline_futures(self.plan, loop)
        await asyncio.gather(
            *(self._item(q, by_name[name]) for q in self.plan.questions.questions for name in order)
        )
        if self.cancel.requested:
            return "cancelled", "cancelled by the user"
        return self._verdict()

    def _verdict(self) -> tuple[str, str | None]:
        items = self.es.items(self.eval_id)
        for c in self.plan.contenders:
            mine = [v for (_, name), v in items.items() if name == c.name]
            if mine and all(v["status"] == "failed" for v in mine):
                return "failed", f"every answer of {c.name} failed, e.g. {mine[0]['error']}"
        judged = [v for (_, name), v in items.items() if name != self.plan.baseline]
        if self.plan.scoring != "match" and not any(v["status"] == "scored" for v in judged):
            first = next((v["error"] for v in judged if v["error"]), "no verdicts")
            return "failed", f"the judge scored no answer ({first})"
        return "ok", None

    # ------------------------------------------------------------ one item

    async def _item(self, q: Question, c: Contender) -> None:
        try:
            await self._item_inner(q, c)
            if q.followup is not None:
                await evalturns.second_turn(self, q, c)
        except Exception:
            # Stop the rest: they must not keep calling models after the evaluation failed.
            self.cancel.cancel()
            raise
        finally:
            fut = self.baseline_answers.get(q.id)
            if c.name == self.plan.baseline and fut is not None and not fut.done():
                fut.set_result(None)
            evalturns.release_baseline(self, q, c)

    async def _item_inner(self, q: Question, c: Contender) -> None:
        item = self.items.get((q.id, c.name)) or {}
        status = item.get("status")
        if status in ("scored", "failed"):
            if c.name == self.plan.baseline:
                record = self.store.get_run(item["run_id"]) if item.get("run_id") else None
                self.baseline_answers[q.id].set_result(record.final_text if record else None)
            return
        if self.cancel.requested:
            return
        answer = await self._answer(q, c, item)
        if answer is None:  # cancelled: the item stays as it is, to resume later
            return
        if c.name == self.plan.baseline:
            self.baseline_answers[q.id].set_result(answer.text)
        if answer.text is None:
            self._finished(q, c, "failed", f"✗ {answer.record.error}")
            return
        await self._score(q, c, answer.text)

    async def _answer(self, q: Question, c: Contender, item: dict[str, Any]) -> _Answer | None:
        """The contender's answer: adopted from a finished run, else (re)run; None if cancelled."""
        record = self.store.get_run(item["run_id"]) if item.get("run_id") else None
        reuse = None
        if record is not None and record.status in ("ok", "failed"):
            # It finished before the process stopped (or was judged yet): keep it.
            self._save_answer(q, c, record, new=item.get("status") == "running")
            return _Answer(record.final_text if record.status == "ok" else None, record)
        if record is not None and c.kind != "single" and _candidates_complete(record):
            reuse = record  # only the aggregator had not finished: reuse the paid candidates
        run_cancel = self.cancel._for_run()
        try:
            async with self._slot(c.models):
                if self.cancel.requested:
                    return None
                # Linked before the first call, so a crash mid-run leaves a run to resume from.
                run_id = new_run_id()
                self.es.save_item(
                    self.eval_id, q.id, c.name, category=q.category, run_id=run_id, status="running"
                )
                if c.kind == "single":
                    record = await run_single(
                        c.config,
                        q.prompt,
                        on_event=self.on_event,
                        cancel=run_cancel,
                        limits=self.limits,
                        run_id=run_id,
                    )
                else:
                    record = await engine.run(
                        c.config,
                        q.prompt,
                        on_event=self.on_event,
                        cancel=run_cancel,
                        limits=self.limits,
                        run_id=run_id,
                        checked=True,
                        reuse=reuse,
                    )
        finally:
            self.cancel._done(run_cancel)
        if record.status == "cancelled":
            return None
        self._save_answer(q, c, record, new=True)
        return _Answer(record.final_text if record.status == "ok" else None, record)

    def _save_answer(self, q: Question, c: Contender, record: RunRecord, new: bool) -> None:
        usage = record.usage()
        ok = record.status == "ok"
        if new:  # not yet counted in the progress's spending
            self.answers_usd += usage["cost_usd"] or 0
        self.es.save_item(
            self.eval_id,
            q.id,
            c.name,
            category=q.category,
            run_id=record.run_id,
            status="answered" if ok else "failed",
            error=None if ok else record.error,
            cost_usd=usage["cost_usd"],
            latency_s=_latency(record),
            tokens_out=usage["tokens_out"],
        )

    def _slot(self, models: list[str]) -> _Slot:
        return _Slot(
            self.slots, self.local if any(m.startswith("local/") for m in models) else None
        )

    # ------------------------------------------------------------ scoring

    async def _score(self, q: Question, c: Contender, text: str) -> None:
        kind = self.plan.scoring
        if kind == "match":
            m = scoring.match(q, text)
            self.es.save_item(
                self.eval_id,
                q.id,
                c.name,
                status="scored",
                score=1.0 if m.correct else 0.0,
                extracted=m.extracted,
            )
            read = "no answer found" if m.extracted is None else f"read {m.extracted!r}"
            self._finished(q, c, "scored", "✓" if m.correct else f"✗ ({read})")
            return
        if kind == "pairwise" and c.name == self.plan.baseline:
            # Compared with itself the baseline ties: 0.5 by definition, no judge call.
            self.es.save_item(self.eval_id, q.id, c.name, status="scored", score=0.5, outcome="tie")
            self._finished(q, c, "scored", "baseline")
            return
        if kind == "judge":
            prompt_name, messages = scoring.single_messages(q, text)
            row = await self._judge(q, c, "single", prompt_name, messages)
            if row is None:
                return
            rating = row.get("rating")
            self._judged(q, c, [row], rating, None, "no rating" if rating is None else None)
            return
        base_text = await self.baseline_answers[q.id]
        if base_text is None:
            if self.cancel.requested:
                return
            self.es.save_item(
                self.eval_id,
                q.id,
                c.name,
                status="unscored",
                error=f"the baseline {self.plan.baseline} has no answer to compare with",
            )
            self._finished(q, c, "unscored", "no baseline answer")
            return
        first = await self._judge(
            q, c, "contender-first", *scoring.pair_messages(q, text, base_text)
        )
        second = await self._judge(
            q, c, "contender-second", *scoring.pair_messages(q, base_text, text)
        )
        if first is None or second is None:
            return
        outcome = scoring.combine_orders(first.get("verdict"), second.get("verdict"))
        score = None if outcome is None else scoring.OUTCOME_SCORE[outcome]
        self._judged(
            q, c, [first, second], score, outcome, "no verdict" if outcome is None else None
        )

    def _judged(
        self,
        q: Question,
        c: Contender,
        rows: list[dict[str, Any]],
        score: float | None,
        outcome: str | None,
        problem: str | None,
    ) -> None:
        values, label = judged_values(rows, score, outcome, problem)
        self.es.save_item(self.eval_id, q.id, c.name, **values)
        self._finished(q, c, values["status"], label)

    async def _judge(
        self,
        q: Question,
        c: Contender,
        kind: str,
        prompt_name: str,
        messages: list[dict[str, str]],
    ) -> dict[str, Any] | None:
        """One judge call, reused if it already finished; its own row, its own cost."""
        key = (q.id, c.name, kind)
        old = self.judged.get(key)
        if old is not None and old["status"] == "ok":
            return old
        judge = self.plan.judge
        assert judge is not None
        cfg = RunConfig(
            proposers=[judge],
            aggregator=judge,
            name="judge",
            proposer_timeout_s=JUDGE_TIMEOUT_S,
            concurrency=judge_concurrency(self.plan.contenders),
        )
        run_cancel = self.cancel._for_run()
        try:
            async with self._slot([judge.model]):
                if self.cancel.requested:
                    return None
                # Through the engine for its timeouts, retries and cost; not written to `runs`
                # (judge prompts are not the user's runs), but to judge_calls.
                record = await run_single(
                    cfg,
                    messages[1]["content"],
                    system_prompt=messages[0]["content"],
                    cancel=run_cancel,
                    limits=self.limits,
                )
        finally:
            self.cancel._done(run_cancel)
        call = record.calls[0]
        if call.status == "cancelled":
            return None
        text = call.text if call.status == "ok" else ""
        row = {
            "prompt_name": prompt_name,
            "model": judge.model,
            "messages_json": dumps(messages),
            "text": call.text,
            "rating": scoring.parse_rating(text) if kind.endswith("single") else None,
            "verdict": scoring.parse_verdict(text) if not kind.endswith("single") else None,
            "status": call.status,
            "error": call.error,
            "created_at": utc_now(),
            "latency_s": call.latency_s,
            "tokens_in": call.tokens_in,
            "tokens_out": call.tokens_out,
            "cost_usd": call.cost_usd,
        }
        self.es.save_judge_call(self.eval_id, q.id, c.name, kind, **row)
        self.judged[key] = {**row, "kind": kind}
        self.judge_usd += call.cost_usd or 0
        return row

    # ------------------------------------------------------------ progress

    def _finished(self, q: Question, c: Contender, status: str, label: str) -> None:
        self.done += 1
        self.failed += status == "failed"
        elapsed = time.monotonic() - self.t0
        this_session = self.done - self.resumed
        eta = elapsed / this_session * (self.total - self.done) if this_session else None
        self.on_progress(
            Progress(
                eval_id=self.eval_id,
                done=self.done,
                total=self.total,
                failed=self.failed,
                resumed=self.resumed,
                elapsed_s=elapsed,
                eta_s=eta,
                answers_usd=self.answers_usd,
                judge_usd=self.judge_usd,
                message=f"{c.name} · {q.id}: {label}",
            )
        )


class _Slot:
    """A place among the `concurrency` answers in flight (plus the CPU lock for local models)."""

    def __init__(self, slots: asyncio.Semaphore, local: asyncio.Lock | None) -> None:
        self.slots, self.local = slots, local

    async def __aenter__(self) -> None:
        if self.local is not None:
            await self.local.acquire()  # before a slot, so a queued local run holds none
        try:
            await self.slots.acquire()
        except BaseException:
            if self.local is not None:
                self.local.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.slots.release()
        if self.local is not None:
            self.local.release()


def _candidates_complete(record: RunRecord) -> bool:
    """Every proposer call of an interrupted run ended, so only its aggregator needs running."""
    calls = record.proposer_calls
    return (
        bool(calls)
        and all(c.status in ("ok", "failed", "timeout") for c in calls)
        and bool(record.aggregated_candidates())
    )


def _latency(record: RunRecord) -> float | None:
    """Wall time of the answer; for a resumed run, the reused candidates' time is added back."""
    if record.wall_s is None:
        return None
    if record.parent_run_id is None:
        return record.wall_s
    ends = [
        c.start_s + c.latency_s
        for c in record.proposer_calls
        if c.start_s is not None and c.latency_s is not None
    ]
    return round(record.wall_s + max(ends, default=0.0), 4)


# ---------------------------------------------------------------- statistics

# Two-sided 95% t critical values for 1..30 degrees of freedom.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip
_Z95 = 1.959964


def t_critical(df: int) -> float:
    """Two-sided 95% quantile of Student's t (a table to 30, then the Cornish-Fisher series)."""
    if df < 1:
        return math.inf
    if df <= len(_T95):
        return _T95[df - 1]
    z = _Z95
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def wilson(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n: sound at 0/n, n/n and small n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and its t-based 95% interval (the mean itself twice for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = t_critical(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def summarise(
    values: list[float], score_kind: str
) -> tuple[float | None, float | None, float | None]:
    """(score, ci_low, ci_high): Wilson for accuracy, t interval (clipped to the scale) otherwise."""
    if not values:
        return None, None, None
    if score_kind == "accuracy":
        k = sum(1 for v in values if v >= 0.5)
        lo, hi = wilson(k, len(values))
        return k / len(values), lo, hi
    mean, lo, hi = mean_ci(values)
    floor, ceil = (1.0, 10.0) if score_kind == "rating" else (0.0, 1.0)
    return mean, max(floor, lo), min(ceil, hi)


# ---------------------------------------------------------------- results


@dataclass
class ItemResult:
    """One question answered by one contender: its run, its score, what it cost."""

    question_id: str
    category: str
    contender: str
    run_id: str | None
    status: str  # running | answered | scored | failed | unscored
    score: float | None
    outcome: str | None  # pairwise: win | tie | loss
    extracted: str | None
    error: str | None
    cost_usd: float | None
    latency_s: float | None
    tokens_out: int | None
    judge_cost_usd: float | None
    turn: int = 1  # 2: the answer to the question's follow-up


@dataclass
class ContenderResult:
    name: str
    kind: str  # moa | single | self-moa
    models: list[str]
    score: float | None
    score_kind: str  # accuracy (0-1) | rating (1-10) | win_rate (0-1, vs the baseline)
    ci_low: float | None
    ci_high: float | None
    cost_usd: float | None  # all its answers; None if a price is unknown
    latency_s: float | None  # mean wall time of an answer
    tokens_out: int
    n_ok: int  # answers received
    n_failed: int  # answers that failed
    n_scored: int
    n_unscored: int  # answered, but the judge gave no usable verdict
    judge_cost_usd: float | None
    escalation_rate: float | None = None  # cascades: the share of answers that ran the panel
    strategy: str | None = None  # mixtures: `vote`, `synthesize+cascade`…

    @property
    def cost_per_answer(self) -> float | None:
        return None if self.cost_usd is None or not self.n_ok else self.cost_usd / self.n_ok

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "score": self.score,
            "score_kind": self.score_kind,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "cost_usd": self.cost_usd,
            "latency_s": self.latency_s,
            "tokens_out": self.tokens_out,
            "n_ok": self.n_ok,
            "n_failed": self.n_failed,
            "n_unscored": self.n_unscored,
            "judge_cost_usd": self.judge_cost_usd,
            "strategy": self.strategy,
            "escalation_rate": self.escalation_rate,
        }


@dataclass
class Headline:
    """MoA against the best single model: the quality it adds and what that costs."""

    moa: ContenderResult
    best_single: ContenderResult
    delta: float  # moa.score - best_single.score
    delta_ci: tuple[float, float] | None  # paired t interval over questions both answered
    cost_ratio: float | None  # per answer; None if a price is unknown or the single one is free
    latency_ratio: float | None

    def describe(self) -> str:
        kind = self.moa.score_kind
        unit = {
            "accuracy": " points accuracy",
            "rating": " rating points",
            "win_rate": " points win rate",
        }[kind]
        scale = 100 if kind != "rating" else 1
        text = (
            f"{self.moa.name} vs best single contender {self.best_single.name}: "
            f"{self.delta * scale:+.1f}{unit}"
        )
        if self.delta_ci is not None:
            lo, hi = (x * scale for x in self.delta_ci)
            text += f" (95% CI {lo:+.1f} to {hi:+.1f})"
        if self.cost_ratio is not None:
            text += f" at {self.cost_ratio:.1f}× cost"
        elif self.moa.cost_usd == 0 and self.best_single.cost_usd == 0:
            text += " at no cost ($0, local models)"
        else:
            text += " at unknown cost"
        if self.latency_ratio is not None:
            text += f" and {self.latency_ratio:.1f}× latency"
        return text


@dataclass
class EvalResults:
    """Everything a results page shows: per contender, per category, per question."""

    eval_id: str
    name: str
    status: str
    error: str | None
    created_at: str
    question_set: str
    scoring: str
    judge_model: str | None
    baseline: str | None
    questions: list[Question]
    contenders: list[ContenderResult]
    items: list[ItemResult] = field(default_factory=list)
    judge_cost_usd: float | None = 0.0
    # Two-turn questions: the second turns' items; `contenders` then pools both turns (as
    # MT-Bench's score does) and `for_turn(n)` gives one turn alone.
    turn_items: list[ItemResult] = field(default_factory=list)

    @property
    def n_turns(self) -> int:
        return 2 if any(q.followup is not None for q in self.questions) else 1

    def for_turn(self, turn: int) -> EvalResults:
        """These results as if only turn `turn` (1 or 2) had been asked: its questions (the
        follow-up as the prompt), its items and its scores."""
        if turn == 1:
            questions = [replace(q, followup=None, followup_reference=None) for q in self.questions]
            items = self.items
        else:
            questions = [
                replace(
                    q,
                    prompt=q.followup,
                    reference=q.followup_reference,
                    answer=None,
                    aliases=(),
                    kind=None,
                    tolerance=None,
                    followup=None,
                    followup_reference=None,
                )
                for q in self.questions
                if q.followup is not None
            ]
            items = self.turn_items
        contenders = [
            _contender_result(
                c.name, c.kind, c.models, self.scoring, [i for i in items if i.contender == c.name]
            )
            for c in self.contenders
        ]
        return replace(self, questions=questions, items=items, contenders=contenders, turn_items=[])

    def _all_items(self) -> list[ItemResult]:
        return self.items + self.turn_items

    def _answered_turns(self) -> list[tuple[str, int]]:
        """(question id, turn) of every stored item: what contenders are compared on."""
        return list(dict.fromkeys((i.question_id, i.turn) for i in self._all_items()))

    def item(self, question_id: str, contender: str) -> ItemResult | None:
        return next(
            (i for i in self.items if i.question_id == question_id and i.contender == contender),
            None,
        )

    def categories(self) -> list[str]:
        return list(dict.fromkeys(q.category for q in self.questions))

    def by_category(self) -> dict[str, list[ContenderResult]]:
        """Each category's scores, computed the same way as the totals."""
        return {
            cat: [
                _contender_result(
                    c.name,
                    c.kind,
                    c.models,
                    self.scoring,
                    [i for i in self._all_items() if i.contender == c.name and i.category == cat],
                )
                for c in self.contenders
            ]
            for cat in self.categories()
        }

    def headline(self, moa: str | None = None) -> Headline | None:
        """The first (or named) MoA contender against the best-scoring single model."""
        mixes = [c for c in self.contenders if c.kind == "moa" and c.score is not None]
        singles = [c for c in self.contenders if c.kind == "single" and c.score is not None]
        if moa is not None:
            mixes = [c for c in mixes if c.name == moa]
        if not mixes or not singles:
            return None
        m = mixes[0]
        best = max(singles, key=lambda c: (c.score, -(c.cost_per_answer or 0)))
        diffs = []
        scores = {(i.question_id, i.turn, i.contender): i.score for i in self._all_items()}
        for qid, turn in self._answered_turns():
            a, b = scores.get((qid, turn, m.name)), scores.get((qid, turn, best.name))
            if a is not None and b is not None:
                diffs.append(a - b)
        delta_ci = None
        if len(diffs) >= 2:
            _, lo, hi = mean_ci(diffs)
            delta_ci = (lo, hi)
        cost_ratio = None
        if m.cost_per_answer is not None and best.cost_per_answer:
            cost_ratio = m.cost_per_answer / best.cost_per_answer
        latency_ratio = None
        if m.latency_s is not None and best.latency_s:
            latency_ratio = m.latency_s / best.latency_s
        return Headline(m, best, m.score - best.score, delta_ci, cost_ratio, latency_ratio)

    def win_rates(self) -> dict[str, float | None]:
        """Head to head on the same questions: how often a contender's answer scored above
        another contender's, ties counted half, over all the others. Pairwise scoring: its score
        (the win rate against the baseline; None for the baseline itself)."""
        if self.scoring == "pairwise":
            return {c.name: None if c.name == self.baseline else c.score for c in self.contenders}
        scores: dict[tuple[str, int, str], float] = {
            (i.question_id, i.turn, i.contender): i.score
            for i in self._all_items()
            if i.status == "scored" and i.score is not None
        }
        rates: dict[str, float | None] = {}
        for c in self.contenders:
            points = games = 0.0
            for qid, turn in self._answered_turns():
                mine = scores.get((qid, turn, c.name))
                if mine is None:
                    continue
                for o in self.contenders:
                    theirs = scores.get((qid, turn, o.name))
                    if o is c or theirs is None:
                        continue
                    games += 1
                    points += 1.0 if mine > theirs else 0.5 if mine == theirs else 0.0
            rates[c.name] = points / games if games else None
        return rates

    def pareto_front(self, x: str = "cost") -> list[ContenderResult]:
        """Contenders no other beats on both quality and `x` ("cost" per answer or "latency")."""

        def xval(c: ContenderResult) -> float | None:
            return c.cost_per_answer if x == "cost" else c.latency_s

        points = [c for c in self.contenders if c.score is not None and xval(c) is not None]
        return pareto_front(points, xval)

    def to_json(self) -> dict[str, Any]:
        head = self.headline()
        return {
            "eval_id": self.eval_id,
            "status": self.status,
            "error": self.error,
            "questions": len(self.questions),
            "question_set": self.question_set,
            "scoring": self.scoring,
            "judge_model": self.judge_model,
            "baseline": self.baseline,
            "judge_cost_usd": self.judge_cost_usd,
            "turns": self.n_turns,
            "contenders": [
                {**c.to_json(), "by_turn": self.turns_json(c.name)} for c in self.contenders
            ],
            "headline": head.describe() if head else None,
        }

    def turns_json(self, name: str) -> list[dict[str, Any]]:
        """One contender's results turn by turn (the contender's own fields are both pooled)."""
        out = []
        for turn in range(1, self.n_turns + 1):
            c = next(x for x in self.for_turn(turn).contenders if x.name == name)
            fields = {k: v for k, v in c.to_json().items() if k not in ("name", "kind")}
            out.append({"turn": turn, **fields})
        return out


def pareto_front(
    points: list[ContenderResult], x: Callable[[ContenderResult], float | None]
) -> list[ContenderResult]:
    """Higher score and lower x are better; the non-dominated points, cheapest first."""
    front = []
    for p in points:
        dominated = any(
            o is not p
            and o.score >= p.score
            and x(o) <= x(p)
            and (o.score > p.score or x(o) < x(p))
            for o in points
        )
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda c: (x(c), -c.score))


def _contender_result(
    name: str, kind: str, models: list[str], scoring_kind: str, items: list[ItemResult]
) -> ContenderResult:
    score_kind = SCORE_KINDS[scoring_kind]
    scored = [i.score for i in items if i.status == "scored" and i.score is not None]
    score, lo, hi = summarise(scored, score_kind)
    answered = [i for i in items if i.status in ("answered", "scored", "unscored")]
    costs = [i.cost_usd for i in answered + [i for i in items if i.status == "failed"]]
    judge_costs = [i.judge_cost_usd for i in items if i.status in ("scored", "unscored")]
    latencies = [i.latency_s for i in answered if i.latency_s is not None]
    return ContenderResult(
        name=name,
        kind=kind,
        models=models,
        score=score,
        score_kind=score_kind,
        ci_low=lo,
        ci_high=hi,
        cost_usd=None if any(x is None for x in costs) else round(sum(costs), 8),
        latency_s=round(statistics.fmean(latencies), 4) if latencies else None,
        tokens_out=sum(i.tokens_out or 0 for i in items),
        n_ok=len(answered),
        n_failed=sum(1 for i in items if i.status == "failed"),
        n_scored=len(scored),
        n_unscored=sum(1 for i in items if i.status == "unscored"),
        judge_cost_usd=(
            None
            if scoring_kind != "match" and any(x is None for x in judge_costs)
            else round(sum(x or 0 for x in judge_costs), 8)
        ),
    )


def load_results(store: Store, eval_id: str) -> EvalResults:
    """An evaluation's results as stored (finished, running or interrupted)."""
    es = EvalStore(store)
    row = es.get(eval_id)
    if row is None:
        raise EvalInputError(f"no evaluation with id {eval_id!r}")
    plan = EvalPlan.from_dict(json.loads(row["plan_json"]))
    stored = es.items(eval_id)
    order = {q.id: n for n, q in enumerate(plan.questions.questions)}
    items = sorted(
        (
            ItemResult(
                question_id=v["question_id"],
                category=v["category"],
                contender=v["contender"],
                run_id=v["run_id"],
                status=v["status"],
                score=v["score"],
                outcome=v["outcome"],
                extracted=v["extracted"],
                error=v["error"],
                cost_usd=v["cost_usd"],
                latency_s=v["latency_s"],
                tokens_out=v["tokens_out"],
                judge_cost_usd=v["judge_cost_usd"],
            )
            for v in stored.values()
        ),
        key=lambda i: (order.get(i.question_id, len(order)), i.contender),
    )
    turn_items = evalturns.load_items(es, eval_id, order)
    contenders = [
        _contender_result(
            c.name,
            c.kind,
            c.models,
            plan.scoring,
            [i for i in items + turn_items if i.contender == c.name],
        )
        for c in plan.contenders
    ]
    for result, c in zip(contenders, plan.contenders, strict=True):
        if c.kind != "single":
            result.strategy = c.config.strategy_label
        if c.config.cascade:
            result.escalation_rate = _escalation_rate(
                store, [i.run_id for i in items if i.contender == c.name and i.run_id]
            )
    judge_costs = [v["cost_usd"] for v in es.judge_calls(eval_id).values() if v["status"] == "ok"]
    return EvalResults(
        eval_id=eval_id,
        name=row["name"],
        status=row["status"],
        error=row["error"],
        created_at=row["created_at"],
        question_set=row["question_set"],
        scoring=plan.scoring,
        judge_model=row["judge_model"],
        baseline=plan.baseline,
        questions=plan.questions.questions,
        contenders=contenders,
        items=items,
        judge_cost_usd=None if any(x is None for x in judge_costs) else round(sum(judge_costs), 8),
        turn_items=turn_items,
    )


def _escalation_rate(store: Store, run_ids: list[str]) -> float | None:
    """The share of these runs whose cascade escalated to the panel (None: none finished)."""
    flags = []
    for start in range(0, len(run_ids), 500):
        chunk = run_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT escalated FROM runs WHERE escalated IS NOT NULL AND id IN ({marks})"
        flags += [row[0] for row in store.db.execute(sql, chunk).fetchall()]
    return round(sum(flags) / len(flags), 4) if flags else None


def list_evaluations(store: Store, limit: int = 50) -> list[EvalSummary]:
    """Newest first, with how many items each has scored."""
    return EvalStore(store).list(limit)


def evaluate(store: Store, plan: EvalPlan, *, resume: bool = True, **kwargs: Any) -> EvalResults:
    """Check, estimate (refusing over budget), then run: the whole thing in one call."""
    return run_evaluation_sync(store, prepare(store, plan, resume=resume), **kwargs)
