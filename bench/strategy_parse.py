"""Can the embedded models follow the `rank` and `select` formats? The share of their replies
that moa.prompts parses, over 10 prompts.

Each prompt is a bundled verifiable question with three candidate answers (one right, one
wrong, one right but wordy, in a per-question order); each model is asked with the exact
ranking and selection messages the engine sends, at the engine's ranker/selector settings.
Also counts how often a parsed pick or top rank is the right candidate.

    .venv/bin/python bench/strategy_parse.py [--models local/smollm2-135m,...] [--n 10] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.results import write_section  # noqa: E402
from moa import llm, local, prompts, strategies  # noqa: E402
from moa.config import ModelSpec  # noqa: E402
from moa.questions import load_question_set  # noqa: E402

TITLE = "Strategy replies the embedded models get right (bench/strategy_parse.py)"
MODELS = "local/smollm2-135m,local/qwen2.5-coder-0.5b,local/qwen2.5-coder-1.5b"


def candidates(q, rng: random.Random) -> tuple[list[str], set[int]]:
    """Three answers to `q` (shuffled) and the indexes of the two right ones."""
    answer = q.answer or ""
    try:
        wrong = f"{float(answer) * 2 + 1:g}"
    except ValueError:
        wrong = "I am not sure; probably something else entirely"
    texts = [
        f"The answer is {answer}.",
        f"The answer is {wrong}.",
        f"Let me think about it carefully. Working through the question step by step, the "
        f"result I get is {answer}, which is my final answer.",
    ]
    order = [0, 1, 2]
    rng.shuffle(order)
    shuffled = [texts[k] for k in order]
    return shuffled, {order.index(0), order.index(2)}


async def ask(spec: ModelSpec, messages: list[dict[str, str]]) -> tuple[str, float]:
    t0 = time.perf_counter()
    text = ""
    async for chunk in llm.astream(spec, messages, 600.0):
        text += chunk.text or ""
    return text, time.perf_counter() - t0


async def measure(model: str, questions, rng_seed: int) -> dict:
    base = ModelSpec(model=model, temperature=0.2, max_tokens=200)
    ranker = strategies._ranker_spec(base, 3)
    selector = strategies._selector_spec(base)
    out = {"rank_ok": 0, "rank_right": 0, "select_ok": 0, "select_right": 0, "s": 0.0, "errors": []}
    rng = random.Random(rng_seed)
    for q in questions:
        texts, right = candidates(q, rng)
        reply, s1 = await ask(ranker, prompts.ranking_messages(q.prompt, texts))
        try:
            ranking = prompts.parse_ranking(reply, 3)
            out["rank_ok"] += 1
            out["rank_right"] += ranking[0] - 1 in right
        except prompts.ParseError as e:
            out["errors"].append(f"rank: {e}")
        reply, s2 = await ask(selector, prompts.selection_messages(q.prompt, texts))
        try:
            pick, _ = prompts.parse_selection(reply, 3)
            out["select_ok"] += 1
            out["select_right"] += pick - 1 in right
        except prompts.ParseError as e:
            out["errors"].append(f"select: {e}")
        out["s"] += s1 + s2
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=MODELS)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    questions = [q for q in load_question_set("verifiable").questions if q.kind == "numeric"][
        : args.n
    ]
    lines = [
        f"{len(questions)} bundled numeric questions, three candidates each (right, wrong, right "
        "but wordy; shuffled), the engine's own ranking and selection prompts, one call per "
        "prompt and format. Parseable = `moa.prompts.parse_ranking` / `parse_selection` read it "
        "(a full permutation / one existing candidate); right = the top-ranked / selected "
        "candidate gives the right answer (2 of the 3 do: chance is 67%).",
        "",
        "| model | rank parseable | rank top is right | select parseable | select is right | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for model in args.models.split(","):
        local.get_llama(model)  # loading is not timed
        r = asyncio.run(measure(model, questions, 13))
        n = len(questions)
        lines.append(
            f"| `{model}` | {r['rank_ok']}/{n} | {r['rank_right']}/{r['rank_ok'] or 1} | "
            f"{r['select_ok']}/{n} | {r['select_right']}/{r['select_ok'] or 1} | {r['s']:.0f} |"
        )
        print(lines[-1], flush=True)
        for err in r["errors"][:4]:
            print(f"    {err}", file=sys.stderr)
    print("\n".join(lines))
    if args.write:
        write_section(TITLE, "\n".join(lines))


if __name__ == "__main__":
    main()
