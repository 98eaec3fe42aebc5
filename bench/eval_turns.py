"""MT-Bench's two turns on the embedded models: `local-quick` MoA vs its best single model (SmolLM2
alone), each follow-up asked after the contender's own first answer, graded by a local judge with
MT-Bench's single and multi-turn prompts, through `moa.evaluate`.

Prints the rating (1-10, t 95% CI) per turn and both together, the time per answer and the
headline. `--db PATH` keeps the runs and makes an interrupted measurement resumable (rerun the
same command); by default they go to a temporary database.

    .venv/bin/python bench/eval_turns.py [--limit N] [--judge MODEL] [--db PATH] [--write]
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

PRESET = "local-quick"
TITLE = "MT-Bench two turns on local models (bench/eval_turns.py)"
TIMEOUT_S = 1800.0  # a busy CPU must not turn into failed answers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=5, help="MT-Bench questions (default 5)")
    p.add_argument("--judge", default="local/qwen2.5-coder-1.5b", help="judge model")
    p.add_argument("--db", help="SQLite file for the runs (default: a temporary one)")
    p.add_argument("--write", action="store_true", help=f"write bench/RESULTS.md § {TITLE}")
    args = p.parse_args()

    cfg = replace(config.load_preset(PRESET), proposer_timeout_s=TIMEOUT_S)
    best_single = replace(cfg.aggregator, timeout_s=TIMEOUT_S)  # its only model
    contenders = [ev.mixture(cfg), ev.single(best_single, name=f"{best_single.model} alone")]
    # The judge explains before its verdict: up to 1,024 tokens (ev.JUDGE_MAX_TOKENS) a call.
    judge = replace(ev.judge_spec(args.judge), timeout_s=TIMEOUT_S)
    questions = load_question_set("mtbench", args.limit)
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="moa-turns-")) / "eval.db"
    store = Store(db)
    plan = ev.EvalPlan(questions, contenders, scoring="judge", judge=judge, concurrency=1)
    prepared = ev.prepare(store, plan)
    if prepared.eval_id:
        print(f"resuming evaluation {prepared.eval_id}: {prepared.done} items done")

    for model in dict.fromkeys([*(m for c in contenders for m in c.models), judge.model]):
        started = time.perf_counter()
        local.get_llama(model)
        print(f"loaded {model} in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    started = time.perf_counter()
    results = ev.run_evaluation_sync(
        store, prepared, on_progress=lambda pr: print("  " + pr.describe(), file=sys.stderr)
    )
    wall = time.perf_counter() - started
    lines = report(results, cfg, judge, len(questions.questions), wall)
    print("\n".join(lines))
    print(f"\nruns and items are in {db} (evaluation {results.eval_id})", file=sys.stderr)
    if args.write:
        write_section(TITLE, "\n".join(lines))


def report(results: ev.EvalResults, cfg, judge, n: int, wall: float) -> list[str]:
    cats = ", ".join(dict.fromkeys(q.category for q in results.questions))
    lines = [
        f"{n} MT-Bench questions ({cats}), both turns: each follow-up asked as turn 2 of the "
        f"contender's own conversation. `{PRESET}` ({' + '.join(p.display for p in cfg.proposers)}"
        f" → {cfg.aggregator.display}) against its one model alone; judge {judge.model} at "
        f"temperature 0 with MT-Bench's prompts (single-v1 for turn 1, single-v1-multi-turn for "
        f"turn 2; math, reasoning and coding with the reference answers), at most "
        f"{judge.max_tokens} tokens a verdict. One call at a time on the CPU; models loaded "
        f"before timing. Evaluation wall time {wall / 60:.1f} min (status {results.status}).",
        "",
        "| contender | turn 1 | turn 2 | both turns | 95% CI (both) | mean latency turn 1 / turn 2 (s) | unscored | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    one, two = results.for_turn(1), results.for_turn(2)
    for c in results.contenders:
        a = next(x for x in one.contenders if x.name == c.name)
        b = next(x for x in two.contenders if x.name == c.name)

        def score(r: ev.ContenderResult) -> str:
            return "-" if r.score is None else f"{r.score:.2f} (n={r.n_scored})"

        def lat(r: ev.ContenderResult) -> str:
            return "-" if r.latency_s is None else f"{r.latency_s:.1f}"

        ci = "-" if c.ci_low is None else f"{c.ci_low:.2f}–{c.ci_high:.2f}"
        lines.append(
            f"| {c.name} | {score(a)} | {score(b)} | **{score(c)}** | {ci} | {lat(a)} / {lat(b)} "
            f"| {c.n_unscored} | {c.n_failed} |"
        )
    head = results.headline()
    if head is not None:
        lines += ["", f"Headline (both turns): {head.describe()}."]
    for turn, view in ((1, one), (2, two)):
        h = view.headline()
        if h is not None:
            lines.append(f"Turn {turn} alone: {h.describe()}.")
    return lines


if __name__ == "__main__":
    main()
