"""What the aggregator kept: match each sentence of the final answer to the candidates."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from difflib import SequenceMatcher
from functools import lru_cache
from itertools import chain, pairwise
from operator import itemgetter
from typing import Any

from rapidfuzz import fuzz

from moa import embeddings, semantic

# --------------------------------------------------------------------------------------------
# Segmentation: Markdown text -> sentence-level units with exact character offsets
# --------------------------------------------------------------------------------------------

SEGMENT_KINDS = ("sentence", "list_item", "code", "heading", "table")


@dataclass(frozen=True)
class Segment:
    """One unit of a text; `text` is always exactly `source[start:end]`."""

    text: str
    start: int
    end: int
    kind: str  # one of SEGMENT_KINDS


_FENCE_OPEN = re.compile(r"^[ \t]*(`{3,}|~{3,})")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}(?:[ \t]|$)")
# At most 3 digits for ordered markers, so a line like "1999. The war ended" stays prose.
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,3}[.)])[ \t]+\S")
_RULE = re.compile(r"^[ \t]{0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^[ \t]{0,3}(?:=+|-+)[ \t]*$")
_TABLE_SEPARATOR = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)+\|?[ \t]*$")

# A sentence ends at . ! ? (plus closing quotes, brackets or emphasis markers) before whitespace.
_SENTENCE_END = re.compile(r"""[.!?…]+["'”’)\]*_]*(?=\s)""")
_WHITESPACE = re.compile(r"\s+")
# Besides capitals and digits, what may open the next sentence: quotes, brackets, markup.
_SENTENCE_OPENERS = "\"'“‘([*_`"
_INLINE_CODE = re.compile(r"`[^`\n]+`")
# Words that end in a period without ending the sentence. "etc." is deliberately absent: it
# usually does end one, and we only split when a capital follows anyway.
_ABBREVIATIONS = frozenset(
    """e.g i.e cf vs dr mr mrs ms prof st jr sr fig figs no nos approx al inc ltd co corp
    jan feb mar apr jun jul aug sep sept oct nov dec mt ft ca est dept gen gov sen rep vol
    ed eds pp ch sec ref resp min max incl excl ave blvd rd""".split()  # noqa: SIM905 (word list)
)


@dataclass
class _Line:
    text: str  # without the line break
    start: int  # offset of the line in the whole text

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    @property
    def blank(self) -> bool:
        return not self.text.strip()


def _lines(text: str) -> list[_Line]:
    lines, pos = [], 0
    for raw in text.splitlines(keepends=True):
        body = raw.rstrip("\r\n")
        lines.append(_Line(body, pos))
        pos += len(raw)
    return lines


def _trimmed(text: str, start: int, end: int, kind: str) -> Segment | None:
    """A segment for text[start:end] without surrounding whitespace, or None if it is blank."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return Segment(text[start:end], start, end, kind) if start < end else None


def _is_table_start(lines: list[_Line], i: int) -> bool:
    return (
        "|" in lines[i].text
        and i + 1 < len(lines)
        and bool(_TABLE_SEPARATOR.match(lines[i + 1].text))
    )


def _starts_block(lines: list[_Line], i: int) -> bool:
    """Does line i open a block that interrupts a paragraph or a list item?"""
    t = lines[i].text
    return bool(
        _FENCE_OPEN.match(t)
        or _HEADING.match(t)
        or _RULE.match(t)
        or _LIST_ITEM.match(t)
        or _is_table_start(lines, i)
    )


def split_segments(text: str) -> list[Segment]:
    """Split Markdown into units: sentences, whole list items, code blocks, headings, table rows.

    Horizontal rules and blank lines produce nothing. Every segment maps back into `text`
    exactly (`text[s.start:s.end] == s.text`), so a UI can tint the original in place.
    """
    segments: list[Segment] = []
    lines = _lines(text)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.blank:
            i += 1
            continue

        fence = _FENCE_OPEN.match(line.text)
        if fence:
            # The block runs to a closing fence of the same character, at least as long;
            # an unclosed fence runs to the end of the text (as CommonMark says).
            marker = fence.group(1)
            close = re.compile(rf"^[ \t]*{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$")
            j = i + 1
            while j < len(lines) and not close.match(lines[j].text):
                j += 1
            last = lines[min(j, len(lines) - 1)]
            seg = _trimmed(text, line.start, last.end, "code")
            if seg:
                segments.append(seg)
            i = j + 1
            continue

        if _HEADING.match(line.text):
            seg = _trimmed(text, line.start, line.end, "heading")
            if seg:
                segments.append(seg)
            i += 1
            continue

        if _RULE.match(line.text):
            i += 1
            continue

        if _is_table_start(lines, i):
            j = i
            while j < len(lines) and not lines[j].blank and "|" in lines[j].text:
                if j != i + 1:  # the |---|---| separator row carries no content
                    seg = _trimmed(text, lines[j].start, lines[j].end, "table")
                    if seg:
                        segments.append(seg)
                j += 1
            i = j
            continue

        if _LIST_ITEM.match(line.text):
            # One item = its marker line plus lazy continuation lines, up to a blank line or
            # the next block (including the next item, nested or not).
            j = i + 1
            while j < len(lines) and not lines[j].blank and not _starts_block(lines, j):
                j += 1
            seg = _trimmed(text, line.start, lines[j - 1].end, "list_item")
            if seg:
                segments.append(seg)
            i = j
            continue

        # A paragraph: up to a blank line or a block that interrupts it.
        j = i + 1
        while j < len(lines) and not lines[j].blank and not _starts_block(lines, j):
            if _SETEXT_UNDERLINE.match(lines[j].text):
                break
            j += 1
        if j < len(lines) and j == i + 1 and _SETEXT_UNDERLINE.match(lines[j].text):
            # "Title\n=====": a one-line paragraph underlined is a heading.
            seg = _trimmed(text, line.start, line.end, "heading")
            if seg:
                segments.append(seg)
            i = j + 1
            continue
        segments.extend(_split_sentences(text, line.start, lines[j - 1].end))
        i = j
    return segments


_LAST_WORD = re.compile(r"([^\s(\[\"'“‘]*)\.$")


def _ends_with_abbreviation(before: str) -> bool:
    """Is the period at the end of `before` part of an abbreviation or an initial?"""
    # Look at the tail only: searching the whole paragraph each time would be quadratic.
    word = _LAST_WORD.search(before[-40:])
    if not word:
        return False
    raw = word.group(1).strip("*_")
    w = raw.lower()
    return (
        w in _ABBREVIATIONS
        or (len(raw) == 1 and raw.isupper())  # an initial: "J. R. R. Tolkien"
        or bool(re.fullmatch(r"(?:[a-z]\.)+[a-z]", w))  # "U.S.", "e.g.", "a.m."
    )


def _opens_sentence(para: str, i: int) -> bool:
    """Can a sentence start at para[i]? A capital, a digit, an opening quote, bracket or
    markup, or a camel-cased word such as "mRNA" or "iPhone"."""
    first = para[i : i + 1]
    if not first:
        return False
    if first.isupper() or first.isdigit() or first in _SENTENCE_OPENERS:
        return True
    word = re.match(r"\w+", para[i:])
    return bool(word) and any(ch.isupper() for ch in word.group(0))


def _split_sentences(text: str, start: int, end: int) -> list[Segment]:
    """Split the prose in text[start:end] into sentences."""
    para = text[start:end]
    in_code = [False] * (len(para) + 1)
    for m in _INLINE_CODE.finditer(para):
        for k in range(m.start(), m.end()):
            in_code[k] = True

    cuts = []  # (end of a sentence, start of the next) within para
    for m in _SENTENCE_END.finditer(para):
        if in_code[m.start()]:
            continue
        punct = m.group(0).rstrip("\"'”’)]*_")
        if punct in ("...", "…") or punct.endswith(("...", "…")):
            continue  # an ellipsis trails off; it does not end the sentence
        if punct == "." and _ends_with_abbreviation(para[: m.start() + 1]):
            continue
        gap = _WHITESPACE.match(para, m.end())
        if gap and _opens_sentence(para, gap.end()):
            cuts.append((m.end(), gap.end()))
    # A line ending in a colon introduces what follows ("Steps:\nBoil the water.").
    for m in re.finditer(r":[ \t]*\n\s*(?=\S)", para):
        if not in_code[m.start()]:
            cuts.append((m.start() + 1, m.end()))
    cuts.sort()

    segments, pos = [], 0
    for cut_end, next_start in cuts:
        if cut_end <= pos:
            continue
        seg = _trimmed(text, start + pos, start + cut_end, "sentence")
        if seg:
            segments.append(seg)
        pos = next_start
    seg = _trimmed(text, start + pos, end, "sentence")
    if seg:
        segments.append(seg)
    return segments


# --------------------------------------------------------------------------------------------
# Lexical features: normalised tokens, content words, bigrams, a flat string for rapidfuzz
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+(?:[.'’]\w+)*")
_CODE_TOKEN = re.compile(r"\w+|[^\w\s]")
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*$")
_LEADING_MARKUP = re.compile(r"^[ \t]*(?:>[ \t]*)*(?:[-*+][ \t]+|\d{1,3}[.)][ \t]+|#{1,6}[ \t]*)?")
_FENCE_LINE = re.compile(r"^[ \t]*(?:`{3,}|~{3,}).*$", re.M)
# Function words: shared by almost any two English sentences, so they say nothing about origin.
_STOPWORDS = frozenset(
    """a an the and or but nor so yet if then than that this these those there here it its
    is are was were be been being am do does did done have has had having of in on at to for
    from by with without as into onto over under about after before between through during
    up down out off again further once all any both each few more most other some such no
    not only own same too very can will just should would could may might must shall i me
    my we our you your he him his she her they them their what which who whom whose when
    where why how also let us""".split()  # noqa: SIM905 (a word list reads better as text)
)


@lru_cache(maxsize=65536)  # answers repeat their words: stem each distinct one once
def _stem(token: str) -> str:
    """A deliberately crude suffix stripper: "baking", "baked", "bakes" and "bake" -> "bak".

    It only has to map the inflections a light edit introduces onto one key; it need not
    produce real words.
    """
    if any(ch.isdigit() for ch in token):
        return token
    if len(token) > 4 and token.endswith("ies"):
        token = token[:-3] + "y"
    elif len(token) > 5 and token.endswith("ing"):
        token = token[:-3]
    elif len(token) > 3 and token.endswith("ed"):
        token = token[:-2]
    elif len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
        token = token[:-1]
    if len(token) > 3 and token.endswith("e"):
        token = token[:-1]
    return token


_STOP_STEMS = frozenset(_stem(w) for w in _STOPWORDS)


@dataclass
class _Features:
    """What the lexical matcher compares, computed once per segment."""

    n_tokens: int
    content: frozenset[str]  # stemmed content words (all words if there are none)
    bigrams: frozenset[tuple[str, str]]  # stemmed word bigrams, function words included
    flat: str  # lowercased words joined by spaces, for rapidfuzz
    code: bool  # a fenced code block
    # A code block's tokens (identifiers, numbers, each punctuation mark), whitespace dropped:
    # what `_renamed_score` aligns. Empty for prose.
    code_tokens: tuple[str, ...] = ()


def _features(segment: Segment) -> _Features:
    # Fences and language tags are not content, nor are list markers, "#" and ">".
    code = segment.kind == "code"
    body = _FENCE_LINE.sub(" ", segment.text) if code else _LEADING_MARKUP.sub("", segment.text)
    words = [w.strip("_") for w in _TOKEN.findall(body.lower())]
    words = [w for w in words if w]
    stems = [_stem(w) for w in words]
    content = frozenset(s for w, s in zip(words, stems, strict=True) if w not in _STOPWORDS)
    return _Features(
        n_tokens=len(words),
        content=content or frozenset(stems),
        bigrams=frozenset(pairwise(stems)),
        flat=" ".join(words),
        code=code,
        code_tokens=tuple(_CODE_TOKEN.findall(body)) if code else (),
    )


# --------------------------------------------------------------------------------------------
# Scoring one final segment against one candidate segment
# --------------------------------------------------------------------------------------------

# Weights of the three lexical signals and the decision threshold, tuned on the labelled set in
# tests/data/attribution_cases.json with bench/attribution.py (see bench/RESULTS.md).
W_UNIGRAM = 0.4  # share of the final sentence's content words found in the candidate sentence
W_BIGRAM = 0.2  # share of its word pairs found there: the same words in the same phrasing
W_FUZZY = 0.4  # rapidfuzz character alignment: catches spelling and inflection edits
# In code, identifiers and keywords repeat everywhere (`def`, `return`, `items`), so shared words
# say little and shared word order says more. Chosen after the held-out set's one error: a new
# helper function scored as kept because it reused the candidate's variable names.
W_CODE = (0.2, 0.4, 0.4)  # unigram, bigram, fuzzy weights when the final segment is code
DEFAULT_THRESHOLD = 0.45
# Candidates whose best score is this close to the top one said "the same thing" and all get
# credit (the same words reordered score about 0.87 against a verbatim copy's 1.0).
TIE_MARGIN = 0.15
# Segments this short (in words) are scored by whole-string similarity alone and need at least
# SHORT_MIN_SCORE: "Enjoy!" must not be "kept from" every candidate containing "enjoy", nor
# "Bake it." from "Bake it for an hour."
SHORT_TOKENS = 3
SHORT_MIN_SCORE = 0.8
# How many candidate segments per candidate get the full (rapidfuzz) score after the cheap
# shared-word prefilter.
_TOP_K = 3


def _pair_score(q: _Features, c: _Features) -> float:
    """How much of the query segment `q` (a final sentence) is explained by segment `c`, 0..1."""
    if not q.n_tokens or not c.n_tokens:
        return 0.0
    if q.n_tokens <= SHORT_TOKENS:
        return fuzz.ratio(q.flat, c.flat) / 100
    uni = len(q.content & c.content) / len(q.content)
    bi = len(q.bigrams & c.bigrams) / len(q.bigrams) if q.bigrams else uni
    if len(q.flat) <= len(c.flat):
        # The final sentence may keep just a part of a longer candidate sentence: align it
        # against the best-matching stretch of the candidate.
        fz = fuzz.partial_ratio(q.flat, c.flat) / 100
    else:
        # The other way round a partial match would reward a short candidate phrase inside a
        # long final sentence that is mostly new; the plain ratio penalises the difference.
        fz = fuzz.ratio(q.flat, c.flat) / 100
    w_uni, w_bi, w_fz = W_CODE if q.code else (W_UNIGRAM, W_BIGRAM, W_FUZZY)
    score = w_uni * uni + w_bi * bi + w_fz * fz
    if q.code and c.code:
        score = max(score, _renamed_score(q.code_tokens, c.code_tokens))
    return score


# Code kept with its variables renamed and/or reformatted: the token sequences align once each
# renamed variable (a name used at least twice) is mapped one-to-one onto the candidate's.
# Counted only when at least this share of the final block's tokens are the candidate's own,
# unchanged.
RENAME_MIN_SAME = 0.6


def _renamed_score(q: tuple[str, ...], c: tuple[str, ...]) -> float:
    """Share of code tokens `q` explained by `c` up to a consistent renaming of identifiers
    (whitespace and line breaks already ignored), 0 when too little is identical."""
    if not q or not c:
        return 0.0
    ops = SequenceMatcher(None, q, c, autojunk=False).get_opcodes()
    same = sum(i2 - i1 for tag, i1, i2, _, _ in ops if tag == "equal")
    if same < RENAME_MIN_SAME * len(q):
        return 0.0
    forward: dict[str, str] = {}
    backward: dict[str, str] = {}
    renamed = 0
    for tag, i1, i2, j1, j2 in ops:
        if tag != "replace" or i2 - i1 != j2 - j1:
            continue
        for a, b in zip(q[i1:i2], c[j1:j2], strict=True):
            if not (_IDENTIFIER.match(a) and _IDENTIFIER.match(b)):
                continue
            if forward.setdefault(a, b) != b or backward.setdefault(b, a) != a:
                continue  # not one-to-one: a different change, not a rename
            renamed += 1
    # A rename changes every use of a variable (defined and used: at least twice), and the
    # old name is then gone; anything else is a different change, not a rename.
    kept_names = {t for tag, i1, i2, _, _ in ops if tag == "equal" for t in q[i1:i2]}
    uses = Counter(q)
    if not forward or any(
        a in kept_names or b in kept_names or uses[a] < 2 for a, b in forward.items()
    ):
        return 0.0
    return (same + renamed) / len(q)


def _union_score(q: _Features, a: _Features, b: _Features) -> float:
    """The score of `q` against segments `a` and `b` taken together (a merged sentence)."""
    if q.n_tokens <= SHORT_TOKENS:
        return 0.0
    uni = len(q.content & (a.content | b.content)) / len(q.content)
    both = a.bigrams | b.bigrams
    bi = len(q.bigrams & both) / len(q.bigrams) if q.bigrams else uni
    fz = max(fuzz.ratio(q.flat, f"{a.flat} {b.flat}"), fuzz.ratio(q.flat, f"{b.flat} {a.flat}"))
    return W_UNIGRAM * uni + W_BIGRAM * bi + W_FUZZY * fz / 100


def _most_shared_first(hit: tuple[tuple[int, int], int]) -> tuple[int, int, int]:
    """Sort key for shared-word counts: most shared first, ties in text order (deterministic)."""
    (ci, j), n = hit
    return (-n, ci, j)


class _Index:
    """An inverted index from content word to candidate segments, for a cheap prefilter."""

    def __init__(self, features: list[list[_Features]]):
        self.features = features
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for ci, segs in enumerate(features):
            for j, f in enumerate(segs):
                for word in f.content:
                    self.postings[word].append((ci, j))

    def shared_words(self, words: frozenset[str]) -> Counter[tuple[int, int]]:
        """For every candidate segment sharing a word with `words`: how many it shares."""
        # Sorted words make the order of ties, and so the whole result, reproducible.
        return Counter(chain.from_iterable(self.postings.get(w, ()) for w in sorted(words)))

    def best_per_candidate(
        self, q: _Features, cache: dict[tuple[int, int], float] | None = None
    ) -> dict[int, tuple[float, int]]:
        """For each candidate with any shared word: (best score, segment index) for `q`.

        Only the _TOP_K segments of each candidate that share the most words get the full
        score; the others cannot plausibly win.
        """
        best: dict[int, tuple[float, int]] = {}
        taken: Counter[int] = Counter()
        # Most shared first; a stable sort on the count alone keeps ties reproducible and is
        # much faster than a Python key function on long answers.
        hits = sorted(self.shared_words(q.content).items(), key=itemgetter(1), reverse=True)
        for (ci, j), _ in hits:
            if taken[ci] >= _TOP_K:
                continue
            taken[ci] += 1
            score = _pair_score(q, self.features[ci][j])
            if cache is not None:
                cache[(ci, j)] = score
            if ci not in best or score > best[ci][0]:
                best[ci] = (score, j)
        return best


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A candidate a final segment was kept from, with how well its segment matches (0..1).

    The score is always this candidate's own match for the whole final segment, so in a merge a
    part may score below the threshold while the combined score (AttributedSegment.score) passes.
    """

    candidate: int  # index into the `candidates` passed to attribute()
    score: float
    segment_index: int  # index into Attribution.candidate_segments[candidate]


@dataclass
class AttributedSegment:
    """A segment of the final answer and where it came from."""

    segment: Segment
    sources: list[Source]  # best first; empty when novel
    novel: bool  # no candidate explains it: the aggregator's own words
    score: float  # how well the sources explain it (for a merge: all of them together)
    merged: bool = False  # built from two candidate segments (possibly of different candidates)
    closest: Source | None = None  # novel: the candidate segment that came closest, if any


@dataclass
class CandidateSegment:
    """A segment of a candidate answer and whether the final answer kept it."""

    segment: Segment
    kept: bool
    score: float  # best match against any final segment, kept or not (0 if it shares no word)
    match: int | None  # the final segment with that best match, for a hover
    used_by: list[int] = field(default_factory=list)  # final segments that credit this one


@dataclass
class Attribution:
    """What the aggregator kept from each candidate, sentence by sentence."""

    segments: list[AttributedSegment]
    candidate_segments: list[list[CandidateSegment]]
    # Each candidate's share of the final answer's characters. A segment with several sources
    # is split between them in proportion to their scores. share + novel_share sums to 1
    # (all zeros for an empty final answer).
    share: list[float]
    novel_share: float
    main_source: int | None  # the candidate with the largest share, None if nothing was kept
    agreement: list[list[float]]  # symmetric, 1.0 on the diagonal
    threshold: float
    matcher: str = "lexical"  # the matcher that produced these highlights
    notice: str | None = None  # why it is not the one asked for (e.g. embeddings not installed)

    def to_json(self, candidate_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """The JSON contract: [{"sentence", "sources": [{"candidate", "score"}], "novel"}].

        `candidate_ids[i]` is the id to print for local candidate i (e.g. its position in the
        CLI's full `candidates` list); by default the local index itself.
        """
        n = len(self.candidate_segments)
        if candidate_ids is None:
            candidate_ids = range(n)
        elif len(candidate_ids) != n:
            raise ValueError(f"candidate_ids has {len(candidate_ids)} ids for {n} candidates")
        return [
            {
                "sentence": s.segment.text,
                "sources": [
                    {"candidate": candidate_ids[src.candidate], "score": round(src.score, 3)}
                    for src in s.sources
                ],
                "novel": s.novel,
            }
            for s in self.segments
        ]


# --------------------------------------------------------------------------------------------
# attribute(): the algorithm, top to bottom
# --------------------------------------------------------------------------------------------

MATCHERS = ("lexical", "semantic")
# The semantic matcher becomes the default only if it beats lexical on held-out data (see
# bench/RESULTS.md); it falls back to lexical, with a notice, when its package is missing.
DEFAULT_MATCHER = "semantic"
# Only this many leading characters of the final answer and of each candidate are attributed
# (~12k tokens; typical answers are far shorter). A runaway model repeating itself makes the
# matching quadratic: 1 MB final and candidate took over 5 minutes, 100k characters each 3-15 s,
# 50k ~1.4 s on a busy 2-core machine. Segment offsets still index the full texts, so the rest
# of a longer answer is simply shown untinted.
ATTRIBUTION_MAX_CHARS = 50_000


def attribute(
    final: str,
    candidates: Sequence[str],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    matcher: str = DEFAULT_MATCHER,
) -> Attribution:
    """Attribute each segment of `final` to the candidate answer(s) it was kept from.

    Each final segment is scored against the candidates' segments (see `_pair_score`). It is
    kept from every candidate whose best score reaches `threshold` and is within TIE_MARGIN of
    the top one; when one candidate segment explains only part of it and a second segment
    (from any candidate) explains most of the rest, it is a merge and credits both. Otherwise
    it is novel. A code block also matches a candidate's with its variables renamed, and credits
    a candidate whose advice it put into code (`_code_merges`); a table row left novel is kept
    from a candidate naming its subject and a value (`_table_rows`). `matcher` "semantic" then
    re-judges, with sentence embeddings, the segments lexical overlap cannot settle (see
    moa.semantic); without its package it stays lexical and says so in `Attribution.notice`. Texts longer than ATTRIBUTION_MAX_CHARS are attributed up
    to that length.
    """
    if matcher not in MATCHERS:
        raise ValueError(f"unknown matcher {matcher!r}; choose one of {', '.join(MATCHERS)}")
    final_source = (final or "")[:ATTRIBUTION_MAX_CHARS]
    cand_sources = [(c or "")[:ATTRIBUTION_MAX_CHARS] for c in candidates]
    final_segments = split_segments(final_source)
    candidate_segs = [split_segments(c) for c in cand_sources]
    final_features = [_features(s) for s in final_segments]
    cand_features = [[_features(s) for s in segs] for segs in candidate_segs]
    index = _Index(cand_features)

    # Every (final segment, candidate segment) score computed, reused for candidate columns.
    scores: dict[tuple[int, int, int], float] = {}
    attributed: list[AttributedSegment] = []
    used: list[list[tuple[int, int]]] = []  # per final segment: the candidate segments it used
    # A sentence repeated in the final answer gets the same sources each time: its features
    # are a function of (words, code), so work it out once (a model stuck in a loop repeats
    # a few sentences thousands of times).
    memo: dict[tuple[str, bool], tuple[AttributedSegment, list, dict]] = {}
    for fi, (seg, q) in enumerate(zip(final_segments, final_features, strict=True)):
        seen = memo.get((q.flat, q.code))
        if seen is None:
            cache: dict[tuple[int, int], float] = {}
            result, parts = _attribute_segment(seg, q, index, threshold, cache)
            memo[(q.flat, q.code)] = (result, parts, cache)
        else:
            first, parts, cache = seen
            result = replace(first, segment=seg, sources=list(first.sources))
        scores.update({(fi, ci, j): v for (ci, j), v in cache.items()})
        attributed.append(result)
        used.append(parts)

    _code_merges(candidate_segs, cand_features, final_features, attributed, used, scores)
    row_keys = _row_keys(final_source, final_segments)

    used_matcher, notice = "lexical", None
    if matcher == "semantic":
        try:
            embedder = embeddings.get_embedder()
        except embeddings.EmbeddingsUnavailable as exc:
            notice = f"Semantic matcher unavailable, highlights are lexical: {exc}"
        else:
            _semantic_pass(
                semantic.unit_texts(final_source, final_segments),
                row_keys,
                [[semantic.clean(s.text) for s in segs] for segs in candidate_segs],
                final_segments,
                final_features,
                candidate_segs,
                index,
                attributed,
                used,
                scores,
                threshold,
                embedder.encode,
                embedder.has,
            )
            used_matcher = "semantic"

    _table_rows(final_segments, row_keys, candidate_segs, cand_features, index, attributed, used)
    _framing(final_source, final_segments, candidate_segs, attributed, used)
    for fi, a in enumerate(attributed):  # the columns' "best match" sees every credit
        for src in a.sources:
            key = (fi, src.candidate, src.segment_index)
            scores[key] = max(scores.get(key, 0.0), src.score)

    columns = _candidate_columns(candidate_segs, cand_features, final_features, used, scores)
    share, novel_share = _shares(attributed, len(candidates))
    best = max(range(len(share)), key=lambda i: (share[i], -i), default=None)
    return Attribution(
        segments=attributed,
        candidate_segments=columns,
        share=share,
        novel_share=novel_share,
        main_source=best if best is not None and share[best] > 0 else None,
        agreement=_agreement(cand_features),
        threshold=threshold,
        matcher=used_matcher,
        notice=notice,
    )


def _row_keys(source: str, segments: list[Segment]) -> dict[int, frozenset[str]]:
    """For each table body row (one under a header): the content words of its first cell,
    what the row is about ("Overhead", "Legumes and nuts", "404")."""
    keys = {}
    for i, (seg, header) in enumerate(
        zip(segments, semantic.table_headers(source, segments), strict=True)
    ):
        if header is None:
            continue
        first = semantic.cells(seg.text)[0]
        words = [w.strip("_") for w in _TOKEN.findall(first.lower())]
        stems = {_stem(w) for w in words if w and w not in _STOPWORDS}
        if stems:
            keys[i] = frozenset(stems)
    return keys


def _pool(ci, segs, ranked, candidate_segs) -> list[tuple[int, int]]:
    """The segments of candidate `ci` worth comparing by meaning: all of them when it has at
    most POOL_ALL, else the POOL_K sharing the most words; never code."""
    if len(segs) <= semantic.POOL_ALL:
        return [(ci, j) for j, s in enumerate(segs) if s.kind != "code"]
    mine = [key for key, _ in ranked if key[0] == ci][: semantic.POOL_K]
    return [key for key in mine if candidate_segs[ci][key[1]].kind != "code"]


def _table_rows(
    final_segments: list[Segment],
    row_keys: dict[int, frozenset[str]],
    candidate_segs: list[list[Segment]],
    cand_features: list[list[_Features]],
    index: _Index,
    attributed: list[AttributedSegment],
    used: list[list[tuple[int, int]]],
) -> None:
    """A table row still novel is kept from a candidate segment that names what the row is
    about (every word of its first cell) and every word of one of its other cells (round 3:
    round 2 asked for one word of any cell, so "broker" credited "| Where to buy | Fund
    company or broker | ... |"): a table regroups what candidates said in prose ("| Overhead | higher | lower |" from "UDP has no
    delivery guarantee, but lower overhead"). A row about something no candidate names
    ("| Sweets | occasionally |") stays new."""
    for fi, key in row_keys.items():
        a = attributed[fi]
        if not a.novel:
            continue
        row = semantic.cells(final_segments[fi].text)
        value_cells = [
            frozenset(
                _stem(w)
                for w in (w.strip("_") for w in _TOKEN.findall(cell.lower()))
                if w and w not in _STOPWORDS
            )
            for cell in row[1:]
        ]
        value_cells = [cell for cell in value_cells if cell]
        values = frozenset().union(*value_cells)
        hits = Counter()
        for ci, j in index.shared_words(key):
            f = cand_features[ci][j]
            if candidate_segs[ci][j].kind == "code" or not key <= f.content:
                continue
            if any(cell <= f.content for cell in value_cells):
                hits[(ci, j)] = len(values & f.content)
        best: dict[int, tuple[int, int]] = {}
        for (ci, j), n in sorted(hits.items(), key=_most_shared_first):
            best.setdefault(ci, (j, n))
        if not best:
            continue
        n_all = len(key) + len(values)
        sources = sorted(
            (Source(ci, (len(key) + n) / n_all, j) for ci, (j, n) in best.items()),
            key=lambda src: (-src.score, src.candidate),
        )
        attributed[fi] = AttributedSegment(
            a.segment, sources, novel=False, score=sources[0].score, merged=False
        )
        used[fi] = [(src.candidate, src.segment_index) for src in sources]


# Round 3: a heading, a table's header row, or a lead-in of at most FRAME_WORDS words ending
# with ":" ("For a minor burn:", "Top tips for Lisbon:") is the aggregator framing what
# follows. It is kept only from a candidate segment that frames the same way: a heading or
# table header of the candidate's, or a segment at most FRAME_LENGTH times as long (plus 2
# words). Candidates state their topic inside a longer sentence ("For a minor burn, hold it
# under cool water..."), which matches the lead-in word for word without being its source.
FRAME_WORDS = 8
FRAME_LENGTH = 2


def _frame_kind(seg: Segment, header_row: bool) -> str | None:
    if seg.kind == "heading":
        return "heading"
    if seg.kind == "table":
        return "header" if header_row else None
    if _bold_heading(seg):
        return "heading"
    text = seg.text.rstrip(" *_")
    if seg.kind == "sentence" and text.endswith(":") and len(_TOKEN.findall(text)) <= FRAME_WORDS:
        return "lead-in"
    return None


_BOLD_LINE = re.compile(r"^[ \t]*(\*\*|__)(?=\S)[^\n]*?\S\1[ \t]*:?[ \t]*$")


def _bold_heading(seg: Segment) -> bool:
    """Round 4: a line of at most FRAME_WORDS words set wholly in bold ("**How to see more of
    them**") is a heading in all but Markdown syntax."""
    return (
        seg.kind == "sentence"
        and "\n" not in seg.text.strip()
        and (m := _BOLD_LINE.match(seg.text)) is not None
        and seg.text.count(m.group(1)) == 2
        and len(_TOKEN.findall(seg.text)) <= FRAME_WORDS
    )


def _framing(
    final_source: str,
    final_segments: list[Segment],
    candidate_segs: list[list[Segment]],
    attributed: list[AttributedSegment],
    used: list[list[tuple[int, int]]],
) -> None:
    """Framing lines (`_frame_kind`) credited only from framing: otherwise they are new."""
    headers = semantic.table_headers(final_source, final_segments)
    q_content = {i: _features(seg).content for i, seg in enumerate(final_segments)}
    for fi, (seg, header) in enumerate(zip(final_segments, headers, strict=True)):
        a = attributed[fi]
        kind = _frame_kind(seg, header is None)
        if a.novel or kind is None:
            continue
        n_words = len(_TOKEN.findall(seg.text))
        kept = []
        for src in a.sources:
            cseg = candidate_segs[src.candidate][src.segment_index]
            if kind == "header":
                ok = cseg.kind == "table"
            elif kind == "heading":
                ok = cseg.kind == "heading" or _bold_heading(cseg)
            else:
                ok = len(_TOKEN.findall(cseg.text)) <= FRAME_LENGTH * n_words + 2
                ok = ok and q_content[fi] <= _features(cseg).content
            if ok:
                kept.append(src)
        if len(kept) == len(a.sources):
            continue
        if kept:
            attributed[fi] = replace(a, sources=kept, score=kept[0].score)
        else:
            attributed[fi] = AttributedSegment(
                a.segment, [], novel=True, score=a.score, closest=a.sources[0]
            )
        used[fi] = [(src.candidate, src.segment_index) for src in kept]


_NUMBER_TOKEN = re.compile(r"\d+(?:[.,]\d+)*")


def _numbers_differ(a: str, b: str) -> bool:
    """Do both texts give numbers, and neither's numbers include the other's?"""
    na, nb = set(_NUMBER_TOKEN.findall(a)), set(_NUMBER_TOKEN.findall(b))
    return bool(na and nb) and not (na <= nb or nb <= na)


def _semantic_pass(
    final_texts: list[str],
    row_keys: dict[int, frozenset[str]],
    cand_texts: list[list[str]],
    final_segments: list[Segment],
    final_features: list[_Features],
    candidate_segs: list[list[Segment]],
    index: _Index,
    attributed: list[AttributedSegment],
    used: list[list[tuple[int, int]]],
    scores: dict[tuple[int, int, int], float],
    threshold: float,
    encode,
    cached=None,
) -> None:
    """Re-judge, with embeddings, the final segments lexical overlap did not settle."""
    targets, queries = [], []
    lexical: dict[int, dict[int, tuple[float, int]]] = defaultdict(dict)
    for (fi, ci, j), v in scores.items():
        if ci not in lexical[fi] or v > lexical[fi][ci][0]:
            lexical[fi][ci] = (v, j)
    for fi, q in enumerate(final_features):
        a = attributed[fi]
        text = final_texts[fi]
        # A short table row read with its header ("Overhead: TCP higher; UDP lower") is long
        # enough to compare by meaning.
        short = q.n_tokens <= SHORT_TOKENS and len(text.split()) <= SHORT_TOKENS
        if q.code or short or a.merged:
            continue  # code is kept whole or not; short ones and lexical merges are settled
        credited: dict[int, tuple[float, int]] = {}
        if not a.novel and a.score >= semantic.SETTLED:
            # Settled; but did another candidate say the same thing in other words?
            credited = {src.candidate: (src.score, src.segment_index) for src in a.sources}
            others = [
                (ci, j)
                for ci, (v, j) in lexical[fi].items()
                if ci not in credited and v >= threshold
            ]
            if not others:
                continue
            pool = [(ci, j) for ci, (_, j) in credited.items()] + others
            said_too = semantic.SAID_TOO if fi in row_keys else 0.0
            queries.append(
                semantic.Query(text, lexical[fi], pool, credited=credited, said_too=said_too)
            )
            targets.append(fi)
            continue
        pool: list[tuple[int, int]] = []
        ranked = sorted(index.shared_words(q.content).items(), key=_most_shared_first)
        for ci, segs in enumerate(candidate_segs):
            pool += _pool(ci, segs, ranked, candidate_segs)
        queries.append(semantic.Query(text, lexical[fi], pool, semantic.clauses(text)))
        targets.append(fi)
    # Unsettled segments first: the budget goes to them before the "said it too" checks.
    order = sorted(range(len(queries)), key=lambda k: bool(queries[k].credited))
    queries, targets = [queries[k] for k in order], [targets[k] for k in order]
    nearest: dict[int, dict[int, tuple[float, int]]] = {}
    for fi, verdict in zip(
        targets, semantic.judge(queries, cand_texts, encode, cached), strict=True
    ):
        if verdict is None:
            continue
        if not verdict.sources and fi not in row_keys:
            nearest[fi] = verdict.nearest
        old = attributed[fi]
        if fi in row_keys:
            # A table row read with its header is "about" the header's topic, like every
            # on-topic sentence: a candidate is credited by meaning only where it names
            # what the row is about.
            lexical_sources = {src.candidate for src in old.sources}
            kept = {
                ci: sj
                for ci, sj in verdict.sources.items()
                if ci in lexical_sources or row_keys[fi] <= index.features[ci][sj[1]].content
            }
            if kept != verdict.sources:
                merged = verdict.merged and len({j for _, j in kept.values()}) >= 2
                verdict = semantic.Verdict(kept, verdict.score, merged)
        if not verdict.sources:
            attributed[fi] = AttributedSegment(
                old.segment, [], novel=True, score=verdict.score, closest=old.closest
            )
            used[fi] = []
            continue
        sources = sorted(
            (Source(ci, s, j) for ci, (s, j) in verdict.sources.items()),
            key=lambda src: (-src.score, src.candidate),
        )
        attributed[fi] = AttributedSegment(
            old.segment, sources, novel=False, score=verdict.score, merged=verdict.merged
        )
        used[fi] = [(src.candidate, src.segment_index) for src in sources]
        for src in sources:
            key = (fi, src.candidate, src.segment_index)
            scores[key] = max(scores.get(key, 0.0), src.score)
    # Left-over final and candidate segments that are each other's nearest: a paraphrase.
    taken = {key for parts in used for key in parts}
    for fi, (ci, cos, j) in semantic.align_dropped(nearest, taken).items():
        if _numbers_differ(final_segments[fi].text, candidate_segs[ci][j].text):
            continue  # "1793" for "1789": a correction of what the candidate said, not a paraphrase
        old = attributed[fi]
        attributed[fi] = AttributedSegment(
            old.segment, [Source(ci, cos, j)], novel=False, score=cos
        )
        used[fi] = [(ci, j)]
        scores[(fi, ci, j)] = max(scores.get((fi, ci, j), 0.0), cos)


def _attribute_segment(
    seg: Segment,
    q: _Features,
    index: _Index,
    threshold: float,
    cache: dict[tuple[int, int], float],
) -> tuple[AttributedSegment, list[tuple[int, int]]]:
    """Sources of one final segment, and the candidate segments (ci, j) they matched."""
    best = index.best_per_candidate(q, cache)
    if not best:
        return AttributedSegment(seg, [], novel=True, score=0.0), []
    top_ci = max(best, key=lambda ci: (best[ci][0], -ci))
    top_score, top_j = best[top_ci]
    if q.n_tokens <= SHORT_TOKENS:
        threshold = max(threshold, SHORT_MIN_SCORE)

    merge = _find_merge(q, index, top_ci, top_j, top_score, threshold)
    if merge is None:
        if top_score < threshold:
            closest = Source(top_ci, top_score, top_j)
            return AttributedSegment(seg, [], novel=True, score=top_score, closest=closest), []
        # Everyone who said (nearly) the same thing gets credit.
        chosen = {
            ci: (s, j)
            for ci, (s, j) in best.items()
            if s >= threshold and s >= top_score - TIE_MARGIN
        }
        parts = [(ci, j) for ci, (_, j) in chosen.items()]
        score = top_score
    else:
        (ci2, j2), union = merge
        chosen = {ci: (s, j) for ci, (s, j) in best.items() if s >= top_score - TIE_MARGIN}
        parts = [(ci, j) for ci, (_, j) in chosen.items()] + [(ci2, j2)]
        if ci2 not in chosen:
            s2 = cache.get((ci2, j2))
            if s2 is None:
                s2 = cache[(ci2, j2)] = _pair_score(q, index.features[ci2][j2])
            chosen[ci2] = (s2, j2)
        score = union

    sources = sorted(
        (Source(ci, s, j) for ci, (s, j) in chosen.items()),
        key=lambda src: (-src.score, src.candidate),
    )
    attributed = AttributedSegment(seg, sources, novel=False, score=score, merged=merge is not None)
    return attributed, parts


# A merge is tried when the best single match leaves this share of the content words (and at
# least two) unexplained, and kept when the second part raises the score by MERGE_GAIN.
MERGE_MIN_RESIDUAL = 0.3
MERGE_GAIN = 0.1


def _find_merge(
    q: _Features,
    index: _Index,
    top_ci: int,
    top_j: int,
    top_score: float,
    threshold: float,
) -> tuple[tuple[int, int], float] | None:
    """A second candidate segment that, with the best one, explains `q` much better.

    Aggregators often fuse two candidates' sentences into one ("Preheat the oven to 200 C and
    grease the tin"). Neither source alone explains the result, but together they do.
    Returns ((candidate, segment), union score) or None.
    """
    if q.n_tokens <= SHORT_TOKENS or q.code:
        return None  # a code block is kept or not as a whole
    first = index.features[top_ci][top_j]
    residual = q.content - first.content
    if len(residual) < max(2, MERGE_MIN_RESIDUAL * len(q.content)):
        return None  # the best match already covers nearly all of it
    hits = index.shared_words(residual)
    hits.pop((top_ci, top_j), None)
    if not hits:
        return None
    ranked = sorted(hits.items(), key=_most_shared_first)
    # Only segments that cover at least half of what is missing are worth the full score.
    floor = max(2, len(residual) / 2)
    best: tuple[tuple[int, int], float] | None = None
    for key, n in ranked[:_TOP_K]:
        if n < floor:
            break
        union = _union_score(q, first, index.features[key[0]][key[1]])
        if best is None or union > best[1]:
            best = (key, union)
    if best is None or best[1] < threshold or best[1] < top_score + MERGE_GAIN:
        return None
    return best


# A kept code block that adds names the credited candidates never use is a merge with each other
# candidate that names at least this many of them (or one in its own code: `nullglob`,
# `dropna=False`): the aggregator wrote into the code what that candidate advised in prose.
CODE_MERGE_MIN_NAMES = 2
CODE_NAME_MIN_CHARS = 3
_CODE_SPAN = re.compile(r"`[^`\n]+`")


# ...a single name counts when it is this long (`nullglob`, `reset_index`): short ones such as
# `count`, `sum` or `id` turn up in any code.
CODE_NAME_DISTINCT_CHARS = 6


def _names(text: str) -> set[str]:
    """The (stemmed) names a text uses, as code or as words."""
    return {
        _stem(w)
        for w in _CODE_WORD.findall(text.lower())
        if len(w) >= CODE_NAME_MIN_CHARS and w not in _STOPWORDS
    }


_CODE_WORD = re.compile(r"[a-z_][a-z0-9_]*")


def _code_merges(
    candidate_segs: list[list[Segment]],
    cand_features: list[list[_Features]],
    final_features: list[_Features],
    attributed: list[AttributedSegment],
    used: list[list[tuple[int, int]]],
    scores: dict[tuple[int, int, int], float],
) -> None:
    """Credit the candidates whose advice a kept code block put into code (see above)."""
    texts = ["\n".join(s.text for s in segs) for segs in candidate_segs]
    names = [_names(t) for t in texts]
    code_names = [
        _names(
            " ".join(
                [m.group(0) for m in _CODE_SPAN.finditer(t)]
                + [s.text for s in segs if s.kind == "code"]
            )
        )
        for t, segs in zip(texts, candidate_segs, strict=True)
    ]
    for fi, a in enumerate(attributed):
        if not final_features[fi].code or a.novel:
            continue
        credited = {src.candidate for src in a.sources}
        added = _names(_FENCE_LINE.sub(" ", a.segment.text))
        for ci in credited:
            added -= names[ci]
        if not added:
            continue
        extra = []
        for ci in range(len(candidate_segs)):
            hits = added & names[ci]
            if ci in credited or not hits:
                continue
            distinct = {h for h in hits & code_names[ci] if len(h) >= CODE_NAME_DISTINCT_CHARS}
            if len(hits) < CODE_MERGE_MIN_NAMES and not distinct:
                continue
            # The candidate segment naming the most of them is the one kept.
            j = max(
                range(len(candidate_segs[ci])),
                key=lambda j, ci=ci, hits=hits: (
                    len(hits & _names(candidate_segs[ci][j].text)),
                    -j,
                ),
            )
            score = scores.get((fi, ci, j))
            if score is None:
                score = _pair_score(final_features[fi], cand_features[ci][j])
            extra.append(Source(ci, score, j))
        if extra:
            sources = sorted([*a.sources, *extra], key=lambda src: (-src.score, src.candidate))
            attributed[fi] = replace(a, sources=sources, merged=True)
            used[fi] = used[fi] + [(src.candidate, src.segment_index) for src in extra]
            for src in extra:
                scores[(fi, src.candidate, src.segment_index)] = src.score


def _candidate_columns(
    candidate_segs: list[list[Segment]],
    cand_features: list[list[_Features]],
    final_features: list[_Features],
    used: list[list[tuple[int, int]]],
    scores: dict[tuple[int, int, int], float],
) -> list[list[CandidateSegment]]:
    """Each candidate's segments marked kept or dropped, with their best final counterpart."""
    final_index = _Index([final_features])
    nearest: dict[frozenset[str], tuple[tuple[int, int], int] | None] = {}  # per word set
    columns: list[list[CandidateSegment]] = []
    for ci, segs in enumerate(candidate_segs):
        column = []
        for j, seg in enumerate(segs):
            # A dropped segment gets one score, against the final segment sharing the most
            # words with it, so a hover can show its nearest counterpart. Segments sharing
            # under a third of that final segment's words are left at 0: they cannot match,
            # and scoring them all costs too much on long answers.
            content = cand_features[ci][j].content
            if content not in nearest:
                hits = final_index.shared_words(content)
                nearest[content] = max(hits.items(), key=itemgetter(1)) if hits else None
            if nearest[content] is not None:
                (_, fi), n = nearest[content]
                if (fi, ci, j) not in scores and n >= len(final_features[fi].content) / 3:
                    scores[(fi, ci, j)] = _pair_score(final_features[fi], cand_features[ci][j])
            column.append(CandidateSegment(seg, kept=False, score=0.0, match=None))
        columns.append(column)
    for (fi, ci, j), score in scores.items():
        cell = columns[ci][j]
        if score > cell.score:
            cell.score, cell.match = score, fi
    for fi, parts in enumerate(used):
        for ci, j in parts:
            cell = columns[ci][j]
            cell.kept = True
            if fi not in cell.used_by:
                cell.used_by.append(fi)
    return columns


def _shares(attributed: list[AttributedSegment], n: int) -> tuple[list[float], float]:
    """Fractions of the final answer's characters credited to each candidate, and to nobody."""
    total = sum(len(s.segment.text) for s in attributed)
    share = [0.0] * n
    novel = 0.0
    if not total:
        return share, 0.0
    for s in attributed:
        size = len(s.segment.text) / total
        weight = sum(src.score for src in s.sources)
        if s.novel or weight <= 0:
            novel += size
            continue
        for src in s.sources:
            share[src.candidate] += size * src.score / weight
    return share, novel


def _agreement(cand_features: list[list[_Features]]) -> list[list[float]]:
    """Pairwise agreement: the share of each one's phrasing the other also uses, both ways.

    "a in b" is the fraction of a's word bigrams (pairs of two function words excluded, as
    every text has "of the") that also occur somewhere in b; agreement[a][b] is the mean of
    "a in b" and "b in a". Matching every sentence of a against every sentence of b would be
    closer to "they make the same points", but it costs O(sentences²) and blew the time budget
    on long answers; shared phrasing tracks it closely for answers to the same prompt.
    """
    bags = [
        {
            bg
            for f in segs
            for bg in f.bigrams
            if not (bg[0] in _STOP_STEMS and bg[1] in _STOP_STEMS)
        }
        for segs in cand_features
    ]
    n = len(bags)

    def inside(a: int, b: int) -> float:
        return len(bags[a] & bags[b]) / len(bags[a]) if bags[a] else 0.0

    return [
        [1.0 if a == b else (inside(a, b) + inside(b, a)) / 2 for b in range(n)] for a in range(n)
    ]
