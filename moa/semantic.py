"""The semantic matcher's judgement: sentence embeddings decide what lexical overlap cannot.

attribution.attribute() settles most final segments lexically (copied and lightly edited ones
score high). The rest, paraphrases, clause-level merges and the aggregator's own words, come
here as `Query`s: the segment's text, its clauses, its lexical score per candidate and a pool of
candidate segments worth comparing. One embedding per distinct text (moa.embeddings caches them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# Round 1: tuned on attribution_cases.json + attribution_tuning_extra.json, frozen at a48a8d4,
# then scored on a held-out set that has since become attribution_tuning_round2.json. Round 2
# (issue 12): CANDIDATE_CLAUSES, ALIGN_MIN/ALIGN_GAP and the table/code rules in
# moa/attribution.py were chosen on all three tuning sets, frozen at 79d8565 and scored on
# attribution_heldout2.json, since become attribution_tuning_round3.json. Round 3 changed no
# constant here (framing lines and table rows: moa/attribution.py); its held-out set,
# attribution_heldout3.json, since become attribution_tuning_round4.json, was written after the
# "FREEZE matcher round 3" commit; round 4's, attribution_heldout4.json, after 84d2177.
SETTLED = 0.75  # a lexical score at or above this is trusted as it is: no embedding needed
W_COS = 0.75  # combined = max(lexical, W_COS * cosine + (1 - W_COS) * lexical)
KEEP = 0.56  # a candidate is credited when its combined score reaches this
MARGIN = 0.08  # ...and is within this of the best candidate's: both said the same thing
CLAUSE_KEEP = 0.58  # a clause is explained by a candidate segment at this cosine
CLAUSE_COVER = 0.7  # a merge needs clauses holding this share of the words explained
# Round 4: a table body row settled lexically from one candidate (copied from its table)
# credits another candidate as having "said it too" only at this cosine: prose that merely
# describes the row ("Read committed prevents dirty reads...") is not where it came from.
SAID_TOO = 0.8
POOL_K = 3  # candidate segments per candidate compared, those sharing the most words...
POOL_ALL = 8  # ...unless the candidate has at most this many: then all of them
# Candidate segments are compared clause by clause too (a final sentence keeping one clause).
CANDIDATE_CLAUSES = True
# A final segment judged new and a candidate segment the final answer does not use at all,
# each the other's nearest by meaning at this cosine or more, are a paraphrase (align_dropped)...
ALIGN_MIN = 0.52
ALIGN_GAP = 0.1  # ...when that candidate is nearer than any other candidate by this much
# Speed, not quality: at most this many distinct texts are embedded per attribution (~3 ms each
# on 2 idle cores). Unsettled segments are served in order, then the settled ones' "did another
# candidate say this too?" check; what does not fit keeps its lexical verdict.
EMBED_BUDGET = 48

_MARKUP = re.compile(r"^[ \t]*(?:>[ \t]*)*(?:[-*+][ \t]+|\d{1,3}[.)][ \t]+|#{1,6}[ \t]*)?")
_EMPHASIS = re.compile(r"[*_`|]+")
# An aggregator's framing ("Here's a combined answer:") says nothing about where content came from.
_OPENER = re.compile(
    r"^(?:here(?:'s| is| are)\b[^:]{0,60}:\s*|(?:in summary|overall|to sum up|in short|"
    r"combining (?:the|these|all) (?:answers|responses)),\s*)",
    re.I,
)
_CLAUSE_SPLIT = re.compile(
    r";\s+|:\s+| [—–] |,\s+(?=(?:and|but|while|whereas|so|although|though|because|since|"
    r"which|whereas|yet)\b)|\s+and\s+(?=(?:the|a|an|it|they|you|its|their|this|that)\b)",
    re.I,
)
_WORD = re.compile(r"\w+")


def clean(text: str) -> str:
    """A unit's text as prose: no list marker, heading hashes, emphasis or table pipes."""
    text = " ".join(_EMPHASIS.sub(" ", _MARKUP.sub("", text)).split())
    return _OPENER.sub("", text) or text


_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def cells(row: str) -> list[str]:
    """The cells of a Markdown table row, outer pipes dropped, emphasis removed."""
    row = row.strip()
    row = row.removeprefix("|").removesuffix("|")
    return [" ".join(_EMPHASIS.sub(" ", c).split()) for c in row.split("|")]


def table_headers(source: str, segments: Sequence) -> list[list[str] | None]:
    """For each segment of `source` (from split_segments): the header cells of the table it is
    a body row of, or None (prose, or a table's header row itself)."""
    out: list[list[str] | None] = []
    header: list[str] | None = None
    prev = None
    for seg in segments:
        if seg.kind != "table":
            out.append(None)
            header, prev = None, seg
            continue
        same_table = (
            header is not None
            and prev is not None
            and prev.kind == "table"
            and not _BLANK_LINE.search(source[prev.end : seg.start])
        )
        if same_table:
            out.append(header)
        else:
            header = cells(seg.text)
            out.append(None)
        prev = seg
    return out


def row_text(row: str, header: list[str] | None) -> str:
    """A table row as a sentence for the embedding model: "Overhead: TCP higher; UDP lower".

    Under its header a row's cells say what they mean ("higher" is TCP's overhead); alone,
    "Overhead higher lower" is close to nothing a candidate wrote in prose."""
    row_cells = cells(row)
    if not header or len(row_cells) < 2 or not row_cells[0]:
        return clean(row)
    values = row_cells[1:]
    heads = header[1 : 1 + len(values)] if len(header) == len(row_cells) else []
    if len(values) >= 2 and heads and all(heads):
        body = "; ".join(f"{h} {v}" for h, v in zip(heads, values, strict=True) if v)
    else:
        body = ", ".join(v for v in values if v)
    return f"{row_cells[0]}: {body}" if body else row_cells[0]


def unit_texts(source: str, segments: Sequence) -> list[str]:
    """What the embedding model sees of each segment: its cleaned text, and for a table row
    the row read with its header (`row_text`). Candidates are embedded ahead through this too
    (moa.analysis.prewarm), so the two must agree."""
    headers = table_headers(source, segments)
    return [
        row_text(seg.text, h) if seg.kind == "table" else clean(seg.text)
        for seg, h in zip(segments, headers, strict=True)
    ]


def candidate_units(segments: Sequence) -> list[str]:
    """What judge() may embed of a candidate: each non-code segment cleaned, then its clauses
    (moa.analysis.prewarm embeds these while the run goes on)."""
    texts = [clean(s.text) for s in segments if s.kind != "code"]
    if CANDIDATE_CLAUSES:
        texts += [c for t in texts for c in clauses(t)]
    return texts


def clauses(text: str) -> list[str]:
    """The clauses of a sentence worth matching alone (at least 3 words each), or []."""
    parts = [p.strip(" ,.;:") for p in _CLAUSE_SPLIT.split(text)]
    parts = [p for p in parts if len(_WORD.findall(p)) >= 3]
    return parts if len(parts) >= 2 else []


@dataclass
class Query:
    """One final segment the lexical matcher could not settle."""

    text: str  # cleaned
    lexical: dict[int, tuple[float, int]]  # candidate -> (best lexical score, its segment)
    pool: list[tuple[int, int]]  # candidate segments (candidate, segment) to compare with
    clause_texts: list[str] = field(default_factory=list)
    # Candidates the lexical matcher already credits (a settled segment asking only whether
    # other candidates said the same thing); empty for an unsettled one.
    credited: dict[int, tuple[float, int]] = field(default_factory=dict)
    # The least cosine at which another candidate "said it too" (SAID_TOO for table rows).
    said_too: float = 0.0


@dataclass
class Verdict:
    sources: dict[int, tuple[float, int]]  # candidate -> (score, segment); empty: novel
    score: float  # the best combined score (the union's for a merge)
    merged: bool = False
    # Candidate -> (cosine, segment) of its nearest pool segment: for align_dropped().
    nearest: dict[int, tuple[float, int]] = field(default_factory=dict)


def _pool_sims(pool_vectors, owner: list[int], n: int, vec) -> np.ndarray:
    """Per pool entry, the best cosine of `vec` to the entry or one of its clauses."""
    out = np.full(n, -1.0)
    np.maximum.at(out, owner, pool_vectors @ vec)
    return out


def judge(
    queries: Sequence[Query],
    candidate_texts: Sequence[Sequence[str]],
    encode,
    cached=None,
) -> list[Verdict | None]:
    """Decide each query from its lexical scores and the cosine to its pool (None: over the
    embedding budget, the lexical verdict stands).

    `encode(texts)` returns one L2-normalised row per text (moa.embeddings.Embedder.encode);
    `cached(text)` says whether a text's vector is already there (it then costs nothing
    against EMBED_BUDGET: candidates embedded while the aggregator was still writing).
    """
    texts: dict[str, int] = {}
    served: list[Query] = []
    cost = 0
    part_memo: dict[str, list[str]] = {}

    def parts_of(ci: int, j: int) -> list[str]:
        t = candidate_texts[ci][j]
        if t not in part_memo:
            part_memo[t] = [t, *clauses(t)] if CANDIDATE_CLAUSES else [t]
        return part_memo[t]

    for q in queries:
        needed = [q.text, *q.clause_texts, *(p for ci, j in q.pool for p in parts_of(ci, j))]
        fresh = {t for t in needed if t not in texts and not (cached and cached(t))}
        if cost + len(fresh) > EMBED_BUDGET:
            continue
        cost += len(fresh)
        served.append(q)
        for t in needed:
            texts.setdefault(t, len(texts))
    if not texts:
        return [None] * len(queries)
    vectors = encode(list(texts))
    verdicts: dict[int, Verdict] = {}
    for q in served:
        v = vectors[texts[q.text]]
        # Each pool segment is compared whole and clause by clause: a final sentence may keep
        # one clause of a longer candidate sentence. `owner[r]`: the pool entry of row r.
        pool_rows, owner = [], []
        for k, (ci, j) in enumerate(q.pool):
            for p in parts_of(ci, j):
                pool_rows.append(texts[p])
                owner.append(k)
        pool_vectors = vectors[pool_rows] if pool_rows else None
        sims = _pool_sims(pool_vectors, owner, len(q.pool), v) if pool_rows else []
        best_cos: dict[int, tuple[float, int]] = {}
        for (ci, j), s in zip(q.pool, sims, strict=True):
            s = float(s)
            if ci not in best_cos or s > best_cos[ci][0]:
                best_cos[ci] = (s, j)
        if q.credited:
            # Settled lexically: also credit candidates that said the same thing in other words.
            bar = max((best_cos.get(ci, (0.0, -1))[0] for ci in q.credited), default=1.0)
            sources = dict(q.credited)
            for ci, (cos, cj) in best_cos.items():
                if ci not in sources and cos >= max(bar - MARGIN, CLAUSE_KEEP, q.said_too):
                    sources[ci] = (cos, cj)
            verdicts[id(q)] = Verdict(sources, max(s for s, _ in q.credited.values()))
            continue
        combined: dict[int, tuple[float, int]] = {}
        for ci in set(best_cos) | set(q.lexical):
            lex, lj = q.lexical.get(ci, (0.0, -1))
            cos, cj = best_cos.get(ci, (0.0, -1))
            mix = W_COS * cos + (1 - W_COS) * lex
            combined[ci] = (lex, lj) if lex >= mix else (mix, cj)
        top = max((s for s, _ in combined.values()), default=0.0)
        sources = {ci: (s, j) for ci, (s, j) in combined.items() if s >= KEEP and s >= top - MARGIN}
        merged = False
        if q.clause_texts and pool_rows:
            # Clause-level merge: the clauses (most of the words) explained by two or more
            # candidate segments, of one candidate or several.
            found: dict[int, tuple[float, int]] = {}
            parts: set[tuple[int, int]] = set()
            covered = total = 0
            for c in q.clause_texts:
                words = len(_WORD.findall(c))
                total += words
                sims_c = _pool_sims(pool_vectors, owner, len(q.pool), vectors[texts[c]])
                k = int(sims_c.argmax())
                if float(sims_c[k]) < CLAUSE_KEEP:
                    continue
                covered += words
                ci, j = q.pool[k]
                parts.add((ci, j))
                if ci not in found or float(sims_c[k]) > found[ci][0]:
                    found[ci] = (float(sims_c[k]), j)
            if (
                covered >= CLAUSE_COVER * total
                and len(parts) >= 2
                and not (sources and set(found) <= set(sources))
            ):
                for ci, sj in found.items():
                    sources.setdefault(ci, sj)
                merged = True
                top = max(top, min(s for s, _ in found.values()))
        verdicts[id(q)] = Verdict(sources, top, merged, best_cos)
    return [verdicts.get(id(q)) for q in queries]


def align_dropped(
    novel: dict[int, dict[int, tuple[float, int]]], used: set[tuple[int, int]]
) -> dict[int, tuple[int, float, int]]:
    """Pair final segments judged new with candidate segments nothing in the final uses.

    `novel`: final segment -> its Verdict.nearest; `used`: (candidate, segment) pairs some
    final segment is credited from. A candidate segment left over and a final segment left
    over that are each other's nearest (cosine >= ALIGN_MIN) are the same point said in other
    words: what the aggregator dropped and what it "made up" cancel out. Returns final
    segment -> (candidate, cosine, segment)."""
    best_final: dict[tuple[int, int], tuple[float, int]] = {}
    for fi, nearest in novel.items():
        for ci, (cos, j) in nearest.items():
            if (ci, j) in used or cos < ALIGN_MIN:
                continue
            if (ci, j) not in best_final or cos > best_final[(ci, j)][0]:
                best_final[(ci, j)] = (cos, fi)
    out: dict[int, tuple[int, float, int]] = {}
    for (ci, j), (cos, fi) in sorted(best_final.items()):
        ranked = sorted((c for c, _ in novel[fi].values()), reverse=True)
        runner_up = ranked[1] if len(ranked) > 1 else 0.0
        top_ci = max(novel[fi], key=lambda c: (novel[fi][c][0], -c))
        if top_ci == ci and cos - runner_up >= ALIGN_GAP and (fi not in out or cos > out[fi][1]):
            out[fi] = (ci, cos, j)
    return out
