"""Is the mixture worth it on the embedded local models? `local-demo` MoA vs each model alone vs
Self-MoA on SmolLM2, on the bundled verifiable questions, through `moa.evaluate`.

Prints accuracy (Wilson 95% CI), cost and time per contender, the per-category breakdown and the
headline. The full set is 76 questions × 5 contenders (about an hour on 2 cores); `--limit N`
takes N questions spread over the categories. `--db PATH` keeps the runs (and makes an interrupted run resumable:
rerun the same command); by default they go to a temporary database.

    .venv/bin/python bench/eval_local.py [--limit N] [--db PATH] [--samples N] [--write]
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
from moa import config, local  # noqa: E402
from moa import evaluate as ev  # noqa: E402
from moa.questions import load_question_set  # noqa: E402
from moa.store import Store  # noqa: E402

PRESET = "local-demo"
SELF_MOA_MODEL = "local/smollm2-135m"
TITLE = "Evaluation on local models (bench/eval_local.py)"
# The preset's 180 s per call assumes an idle CPU; a busy one must not turn into wrong answers.
TIMEOUT_S = 900.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--limit", type=int, help="N questions spread over the categories (default: all)"
    )
    p.add_argument("--db", help="SQLite file for the runs (default: a temporary one)")
    p.add_argument("--samples", type=int, help="Self-MoA samples (default: as many as proposers)")
    p.add_argument("--temperature", type=float, default=ev.SELF_MOA_TEMPERATURE)
    p.add_argument("--write", action="store_true", help=f"write bench/RESULTS.md § {TITLE}")
    args = p.parse_args()

    cfg = replace(config.load_preset(PRESET), proposer_timeout_s=TIMEOUT_S)
    contenders = ev.from_preset(
        cfg, self_moa_model=SELF_MOA_MODEL, n=args.samples, temperature=args.temperature
    )
    questions = load_question_set("verifiable", args.limit)
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="moa-eval-")) / "eval.db"
    store = Store(db)
    prepared = ev.prepare(store, ev.EvalPlan(questions, contenders, concurrency=1))
    if prepared.eval_id:
        print(f"resuming evaluation {prepared.eval_id}: {prepared.done} items done")

    # Load every model first, so the first answers are timed without the loading.
    for model in dict.fromkeys(m for c in contenders for m in c.models):
        started = time.perf_counter()
        local.get_llama(model)
        print(f"loaded {model} in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    started = time.perf_counter()
    results = ev.run_evaluation_sync(
        store, prepared, on_progress=lambda pr: print("  " + pr.describe(), file=sys.stderr)
    )
    wall = time.perf_counter() - started
    lines = report(results, cfg, len(questions.questions), wall)
    print("\n".join(lines))
    print(f"\nruns and items are in {db} (evaluation {results.eval_id})", file=sys.stderr)
    if args.write:
        write_section(TITLE, "\n".join(lines))


def report(results: ev.EvalResults, cfg: config.RunConfig, n: int, wall: float) -> list[str]:
    subset = "all" if n == 76 else f"{n} (spread over the categories)"
    lines = [
        f"{subset.capitalize()} of the bundled verifiable questions (`data/questions/verifiable.jsonl`: "
        "arithmetic word problems, unit conversions, facts), scored by numeric/alias/exact "
        f"match; `{PRESET}` ({' + '.join(p.display for p in cfg.proposers)} → "
        f"{cfg.aggregator.display}) against each of its models alone and Self-MoA "
        f"({SELF_MOA_MODEL} samples → the same aggregator). One answer at a time on the CPU; "
        f"models loaded before timing; {TIMEOUT_S:.0f} s per call. Evaluation wall time "
        f"{wall / 60:.1f} min.",
        "",
        "| contender | kind | accuracy | 95% CI | cost | mean latency (s) | answer time (s) | tokens out | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results.contenders:
        items = [i for i in results.items if i.contender == c.name and i.latency_s is not None]
        total = sum(i.latency_s for i in items)
        score = "-" if c.score is None else f"{c.score:.0%}"
        ci = "-" if c.ci_low is None else f"{c.ci_low:.0%}–{c.ci_high:.0%}"
        cost = "unknown" if c.cost_usd is None else f"${c.cost_usd:.2f}"
        latency = "-" if c.latency_s is None else f"{c.latency_s:.1f}"
        lines.append(
            f"| {c.name} | {c.kind} | **{score}** | {ci} | {cost} | {latency} | {total:.0f} "
            f"| {c.tokens_out} | {c.n_failed} |"
        )
    cats = results.by_category()
    lines += [
        "",
        "Accuracy by category:",
        "",
        "| contender | " + " | ".join(cats) + " |",
        "|---|" + "---|" * len(cats),
    ]
    for k, c in enumerate(results.contenders):
        cells = [cats[cat][k] for cat in cats]
        lines.append(
            f"| {c.name} | "
            + " | ".join("-" if x.score is None else f"{x.score:.0%} ({x.n_scored})" for x in cells)
            + " |"
        )
    head = results.headline()
    if head is not None:
        lines += ["", f"Headline: {head.describe()}."]
    return lines


if __name__ == "__main__":
    main()
