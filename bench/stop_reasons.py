"""Do the bundled presets' answers finish, and how much do local models repeat themselves?

For each bundled preset, runs 10 prompts through `moa.engine` on the embedded models and counts
the calls that stopped at max_tokens (finish_reason "length": an answer cut off mid-sentence)
and how much of each answer repeats itself (the share of its word 4-grams that already
occurred earlier in the same answer; and the share of answers that repeat a whole sentence).

Three settings, measured alternately prompt by prompt in this one run, so machine load hits them
alike:
  before   the limits the presets shipped with before issue 14, and no repetition penalty;
  no-pen   the presets' limits as they are now, and no repetition penalty (isolates the penalty);
  after    the presets as they are now, with moa.local.REPEAT_PENALTY.
Target: fewer than 20% of calls cut at the limit ("after").

    .venv/bin/python bench/stop_reasons.py [--presets local-quick,local-demo] [--prompts 10]
        [--settings before,no-pen,after] [--write]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.results import write_section  # noqa: E402
from moa import config as config_mod  # noqa: E402
from moa import engine, local  # noqa: E402

PROMPTS = [
    "Why is the sky blue?",
    "How do plants make food?",
    "What causes the seasons on Earth?",
    "Explain what a hash table is.",
    "Why do we need sleep?",
    "How does a bicycle stay upright?",
    "What is the difference between weather and climate?",
    "How do vaccines work?",
    "Why does ice float on water?",
    "What is recursion in programming?",
]
# (proposer max_tokens, aggregator max_tokens) the bundled presets had before issue 14.
OLD_LIMITS = {"local-quick": (120, 200), "local-demo": (100, 160)}


@dataclass
class Tally:
    calls: int = 0
    cut: int = 0
    answers: int = 0
    repeated_sentence: int = 0
    repeat_shares: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)

    def add(self, record) -> None:
        self.wall_s.append(record.wall_s or 0.0)
        for call in record.calls:
            if call.status != "ok":
                continue
            self.calls += 1
            self.cut += call.finish_reason == "length"
            self.answers += 1
            share, sentence = repetition(call.text)
            self.repeat_shares.append(share)
            self.repeated_sentence += sentence

    def row(self) -> dict[str, str]:
        return {
            "calls": str(self.calls),
            "cut at max_tokens": f"{self.cut / max(1, self.calls):.0%}",
            "repeated 4-grams (mean)": f"{statistics.fmean(self.repeat_shares or [0]):.1%}",
            "answers repeating a sentence": f"{self.repeated_sentence / max(1, self.answers):.0%}",
            "run time (median)": f"{statistics.median(self.wall_s or [0]):.1f} s",
        }


def repetition(text: str) -> tuple[float, bool]:
    """(share of word 4-grams seen before in the text, whether a sentence occurs twice)."""
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    sentences = [s.strip().lower() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 4]
    return (repeats / len(grams) if grams else 0.0), len(sentences) != len(set(sentences))


def configured(name: str, setting: str) -> config_mod.RunConfig:
    cfg = config_mod.load_preset(name)
    if setting == "before":
        prop, agg = OLD_LIMITS[name]
        cfg = replace(
            cfg,
            proposers=[replace(p, max_tokens=prop) for p in cfg.proposers],
            aggregator=replace(cfg.aggregator, max_tokens=agg),
        )
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="local-quick,local-demo")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--settings", default="before,no-pen,after")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    penalty = local.REPEAT_PENALTY
    settings = args.settings.split(",")
    body = [
        f"Prompts: {args.prompts} (bench/stop_reasons.py `PROMPTS`); repetition penalty "
        f'`moa.local.REPEAT_PENALTY` = {penalty} (llama.cpp repeat_penalty, "no-pen" and '
        '"before" run with 1.0). Settings alternate prompt by prompt in one run.',
        "",
    ]
    for name in args.presets.split(","):
        tallies = {s: Tally() for s in settings}
        started = time.monotonic()
        for prompt in PROMPTS[: args.prompts]:
            for setting in settings:
                local.REPEAT_PENALTY = penalty if setting == "after" else 1.0
                record = engine.run_sync(configured(name, setting), prompt)
                tallies[setting].add(record)
                reps = [repetition(c.text) for c in record.calls if c.status == "ok"]
                print(
                    f"{name} {setting:7} {record.status} {record.wall_s:5.1f}s "
                    + " ".join(c.finish_reason or "-" for c in record.calls)
                    + " | repeated 4-grams "
                    + " ".join(f"{share:.0%}{'*' if sentence else ''}" for share, sentence in reps),
                    flush=True,
                )
            # So far (a run cut short by the deadline still reports what it measured):
            for setting, tally in tallies.items():
                print(f"  so far {setting}: {tally.row()}", flush=True)
        local.REPEAT_PENALTY = penalty
        cfg = config_mod.load_preset(name)
        limits = f"proposers {', '.join(str(p.max_tokens) for p in cfg.proposers)}; aggregator {cfg.aggregator.max_tokens}"
        old = OLD_LIMITS.get(name)  # a preset new this round has no "before"
        before = f" (before: proposers {old[0]}, aggregator {old[1]})" if old else ""
        body += [
            f"### {name}",
            "",
            f"Limits now: {limits}{before}. Measured in {time.monotonic() - started:.0f} s.",
            "",
        ]
        cols = list(Tally().row())
        body.append("| setting | " + " | ".join(cols) + " |")
        body.append("|---|" + "---:|" * len(cols))
        for setting, tally in tallies.items():
            body.append(f"| {setting} | " + " | ".join(tally.row().values()) + " |")
        if "before" in tallies and "after" in tallies:
            b, a = tallies["before"], tallies["after"]
            ratio = statistics.median(a.wall_s) / max(1e-9, statistics.median(b.wall_s))
            body.append("")
            body.append(f"Run time after / before: {ratio:.2f}×.")
        body.append("")
        print("\n".join(body), flush=True)
    if args.write:
        write_section("Stop reasons and repetition (bench/stop_reasons.py)", "\n".join(body))


if __name__ == "__main__":
    main()
