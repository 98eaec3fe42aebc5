"""Which strategy is worth it on the embedded models? One preset under each strategy, on the
bundled verifiable questions, through `moa.evaluate` (the same as `python -m moa eval
--contender PRESET@STRATEGY ...`).

Prints accuracy (Wilson 95% CI), cost, latency, the escalation rate of cascades, each
strategy's paired difference to synthesize (95% t interval over the questions both answered)
and the Pareto fronts. `--db PATH` keeps the runs and makes an interrupted evaluation
resumable (rerun the same command).

    .venv/bin/python bench/eval_strategies.py [--preset NAME_OR_TOML] [--limit 30]
        [--strategies synthesize,vote,synthesize+cascade] [--db PATH] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.results import write_section  # noqa: E402
from moa import evaluate as ev  # noqa: E402
from moa import local  # noqa: E402
from moa.questions import load_question_set  # noqa: E402
from moa.store import Store  # noqa: E402

TITLE = "Strategies on local models (bench/eval_strategies.py)"
TIMEOUT_S = 900.0  # a busy CPU must not turn into wrong answers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--preset", default=str(ROOT / "bench" / "strategies-local.toml"), help="name or .toml"
    )
    p.add_argument("--strategies", default="synthesize,vote,synthesize+cascade")
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--db", help="SQLite file for the runs (default: a temporary one)")
    p.add_argument("--write", action="store_true", help=f"write bench/RESULTS.md § {TITLE}")
    args = p.parse_args()

    contenders = []
    for s in args.strategies.split(","):
        c = ev.parse_contender(f"{args.preset}@{s.strip()}")
        contenders.append(replace(c, config=replace(c.config, proposer_timeout_s=TIMEOUT_S)))
    questions = load_question_set("verifiable", args.limit)
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="moa-strat-")) / "eval.db"
    store = Store(db)
    prepared = ev.prepare(store, ev.EvalPlan(questions, contenders, concurrency=1))
    if prepared.eval_id:
        print(
            f"resuming evaluation {prepared.eval_id}: {prepared.done} items done", file=sys.stderr
        )
    for model in dict.fromkeys(m for c in contenders for m in c.models):
        local.get_llama(model)  # loading is not timed
    started = time.perf_counter()
    results = ev.run_evaluation_sync(
        store, prepared, on_progress=lambda pr: print("  " + pr.describe(), file=sys.stderr)
    )
    wall = time.perf_counter() - started
    lines = report(results, args.preset, len(questions.questions), wall)
    print("\n".join(lines))
    print(f"\nruns are in {db} (evaluation {results.eval_id})", file=sys.stderr)
    if args.write:
        write_section(TITLE, "\n".join(lines))


def report(results: ev.EvalResults, preset: str, n: int, wall: float) -> list[str]:
    lines = [
        f"{n} of the bundled verifiable questions (spread over the categories), scored by match; "
        f"`{Path(preset).name}` under each strategy, every contender with its own proposer "
        f"calls. One answer at a time on the CPU; models loaded before timing. Evaluation wall "
        f"time {wall / 60:.1f} min.",
        "",
        "| contender | accuracy (failed = wrong) | 95% CI | Δ vs synthesize (95% CI) | cost "
        "| mean latency (s) | tokens out | cascade escalated | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = next((c for c in results.contenders if c.strategy == "synthesize"), None)
    for c in results.contenders:
        # Over every question: an answer that failed (e.g. an unparseable selection) is wrong,
        # not left out, so a strategy cannot look better by failing on hard questions.
        mine = [results.item(q.id, c.name) for q in results.questions]
        right = sum(1 for i in mine if i is not None and (i.score or 0) >= 1)
        lo, hi = ev.wilson(right, len(mine))
        score, ci = f"{right / len(mine):.0%} ({right}/{len(mine)})", f"{lo:.0%}–{hi:.0%}"
        cost = "unknown" if c.cost_usd is None else f"${c.cost_usd:.2f}"
        times = [i.latency_s for i in mine if i is not None and i.latency_s is not None]
        latency = f"{sum(times) / len(times):.1f}" if times else "-"
        esc = "-" if c.escalation_rate is None else f"{c.escalation_rate:.0%}"
        delta = "-"
        if base is not None and c is not base:
            diffs = []
            for q in results.questions:
                a, b = results.item(q.id, c.name), results.item(q.id, base.name)
                if (
                    a
                    and b
                    and a.status in ("scored", "failed")
                    and b.status in ("scored", "failed")
                ):
                    diffs.append((a.score or 0.0) - (b.score or 0.0))
            if len(diffs) >= 2:
                mean, lo, hi = ev.mean_ci(diffs)
                delta = f"{mean * 100:+.1f} pts ({lo * 100:+.1f} to {hi * 100:+.1f})"
        lines.append(
            f"| {c.name} | **{score}** | {ci} | {delta} | {cost} | {latency} | {c.tokens_out} "
            f"| {esc} | {c.n_failed} |"
        )
    # The fronts from the same numbers as the table (a failed answer is wrong and its time
    # counts), not from the scored answers only: a strategy that fails often is not cheap.
    points = []
    for c in results.contenders:
        mine = [results.item(q.id, c.name) for q in results.questions]
        right = sum(1 for i in mine if i is not None and (i.score or 0) >= 1) / len(mine)
        times = [i.latency_s for i in mine if i is not None and i.latency_s is not None]
        tokens = sum(i.tokens_out or 0 for i in mine if i is not None)
        points.append((c.name, right, sum(times) / len(times) if times else None, tokens))
    for label, k in (("mean latency", 2), ("tokens out (cost is $0 on local models)", 3)):
        front = [
            p
            for p in points
            if p[k] is not None
            and not any(
                o[k] is not None and o[1] >= p[1] and o[k] <= p[k] and (o[1] > p[1] or o[k] < p[k])
                for o in points
            )
        ]
        lines += ["", f"Pareto front, accuracy vs {label}: " + ", ".join(p[0] for p in front) + "."]
    return lines


if __name__ == "__main__":
    main()
