"""The panel analysis: what the candidates agree on, what only one said, where they contradict.

Computed locally from the attribution's segments (no model call). Candidate units (sentences,
list items, table rows) are linked across candidates when the matcher would call them the same
point (lexical score, plus sentence embeddings when the attribution used them), then clustered
with at most one unit per candidate in a cluster:

- consensus: points most candidates make (more than half of them, at least two);
- unique: points only one candidate makes, and whether the final answer kept each (a dropped
  unique point is what a user most wants to check);
- contradictions: two statements on the same topic that differ in a number, a negation or a
  name, and which side the final answer took;
- diversity: 1 - the mean pairwise agreement (share of points two candidates share).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

from moa import embeddings, semantic
from moa.attribution import (
    Attribution,
    _Features,
    _features,
    _Index,
    _pair_score,
)

MIN_TOKENS = 4  # shorter units ("Enjoy!", "Steps:") are not points
LINK = semantic.KEEP  # two units are the same point at the matcher's own bar
TOPIC = 0.45  # two units are about the same thing (a contradiction needs at least this)
NAME_TOPIC = 0.6  # two statements naming different people/places must be this close
NEGATION_TOPIC = LINK  # a flipped negation between two linked statements contradicts
PER_CANDIDATE = 3  # lexical pairs scored per unit and other candidate (shared-word prefilter)
EMBED_MAX_UNITS = 400  # beyond this many units the panel is lexical only (time budget)

_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")
_NEG_TOKEN = re.compile(r"\b(?:not|never|no|none|nor|cannot|\w+n't)\b", re.I)
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-zA-Z]+")
_WORDS = re.compile(r"\w+")
_REJECTED = r"\b(?:not|never|rather than|instead of)\s+(?:\w+\s+){{0,2}}{}\b"


@dataclass
class Point:
    """A cluster of units that say the same thing, one unit per candidate at most."""

    text: str  # the first candidate's wording
    candidates: list[int]  # local candidate indexes (positions in the attribution)
    units: list[tuple[int, int]]  # (candidate, segment index)
    kept: bool  # the final answer kept at least one of the units


@dataclass
class Contradiction:
    kind: str  # "number", "negation" or "name"
    sides: list[dict[str, Any]]  # two of {"text", "candidates", "units", "differs": [tokens]}
    final_side: int | None  # which side the final answer took (0, 1), None if neither/unclear
    kept: bool  # the final answer says something about it at all


@dataclass
class Panel:
    consensus: list[Point] = field(default_factory=list)
    unique: list[Point] = field(default_factory=list)
    contradictions: list[Contradiction] = field(default_factory=list)
    diversity: float | None = None
    agreement: list[list[float]] = field(default_factory=list)
    n_candidates: int = 0
    embeddings: bool = False  # sentence embeddings helped link units

    @property
    def dropped_unique(self) -> list[Point]:
        return [p for p in self.unique if not p.kept]

    def to_json(self, candidate_ids: Sequence[int] | None = None) -> dict[str, Any]:
        """The `run --json` "panel" object; candidates are printed as `candidate_ids[i]`."""
        ids = list(range(self.n_candidates)) if candidate_ids is None else list(candidate_ids)

        def point(p: Point) -> dict[str, Any]:
            return {"text": p.text, "candidates": [ids[c] for c in p.candidates], "kept": p.kept}

        return {
            "consensus": [point(p) for p in self.consensus],
            "unique": [point(p) for p in self.unique],
            "contradictions": [
                {
                    "kind": c.kind,
                    "text": " / ".join(s["text"] for s in c.sides),
                    "candidates": sorted({ids[i] for s in c.sides for i in s["candidates"]}),
                    "sides": [
                        {
                            "text": s["text"],
                            "candidates": [ids[i] for i in s["candidates"]],
                            "differs": s["differs"],
                        }
                        for s in c.sides
                    ],
                    "final_side": c.final_side,
                    "kept": c.kept,
                }
                for c in self.contradictions
            ],
            "diversity": None if self.diversity is None else round(self.diversity, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, with local indexes, for the store's cache (from_dict reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Panel:
        def point(x: dict) -> Point:
            return Point(
                x["text"], list(x["candidates"]), [tuple(u) for u in x["units"]], x["kept"]
            )

        return cls(
            consensus=[point(x) for x in d["consensus"]],
            unique=[point(x) for x in d["unique"]],
            contradictions=[Contradiction(**x) for x in d["contradictions"]],
            diversity=d["diversity"],
            agreement=d["agreement"],
            n_candidates=d["n_candidates"],
            embeddings=d.get("embeddings", False),
        )


def _names(text: str) -> set[str]:
    """Capitalised words that are not the first of a sentence: names, places, products."""
    return {m.group(0).lower() for m in _NAME.finditer(text)}


def _negated(text: str) -> bool:
    return bool(_NEG_TOKEN.search(text))


def _difference(a: str, b: str, sim: float) -> tuple[str, list[str], list[str]] | None:
    """How two statements on one topic differ: (kind, tokens only in a, tokens only in b)."""
    na, nb = set(_NUMBER.findall(a)), set(_NUMBER.findall(b))
    if na and nb and not (na <= nb or nb <= na):
        return "number", sorted(na - nb), sorted(nb - na)
    ma, mb = _names(a), _names(b)
    wa, wb = set(_WORDS.findall(a.lower())), set(_WORDS.findall(b.lower()))
    da, db = ma - wb, mb - wa
    if da and db and sim >= NAME_TOPIC:
        return "name", sorted(da), sorted(db)
    return None


def _conflict(a: str, b: str, sim: float) -> tuple[str, list[str], list[str]] | None:
    """A number, name or negation that sets apart two statements on one topic, or None."""
    diff = _difference(a, b, sim)
    if diff is not None:
        return diff
    if sim >= NEGATION_TOPIC and _negated(a) != _negated(b):
        neg_a = sorted({w.lower() for w in _NEG_TOKEN.findall(a)})
        neg_b = sorted({w.lower() for w in _NEG_TOKEN.findall(b)})
        return "negation", neg_a, neg_b
    return None


def analyse(
    attribution: Attribution,
    *,
    use_embeddings: bool | None = None,
) -> Panel:
    """The panel of the candidates in `attribution` (as segmented there), judged against the
    final answer it attributed. Embeddings are used when the attribution's matcher used them
    (or as `use_embeddings` says) and the model is installed; otherwise lexical alone."""
    columns = attribution.candidate_segments
    n = len(columns)
    panel = Panel(n_candidates=n)
    units: list[tuple[int, int]] = []
    feats: list[_Features] = []
    for ci, column in enumerate(columns):
        for j, cell in enumerate(column):
            if cell.segment.kind in ("code", "heading"):
                continue
            f = _features(cell.segment)
            if f.n_tokens < MIN_TOKENS:
                continue
            units.append((ci, j))
            feats.append(f)
    if n == 0:
        return panel
    texts = [columns[ci][j].segment.text for ci, j in units]

    # Similarity of unit pairs from different candidates.
    if use_embeddings is None:
        use_embeddings = attribution.matcher == "semantic"
    vectors = None
    if use_embeddings and 0 < len(units) <= EMBED_MAX_UNITS:
        try:
            vectors = embeddings.get_embedder().encode([semantic.clean(t) for t in texts])
        except embeddings.EmbeddingsUnavailable:
            vectors = None
    panel.embeddings = vectors is not None
    by_candidate: list[list[int]] = [[] for _ in range(n)]
    for u, (ci, _) in enumerate(units):
        by_candidate[ci].append(u)
    lexical: dict[tuple[int, int], float] = {}
    grouped = [[feats[u] for u in by_candidate[ci]] for ci in range(n)]
    index = _Index(grouped)
    for u, f in enumerate(feats):
        ci = units[u][0]
        taken: dict[int, int] = {}
        hits = sorted(index.shared_words(f.content).items(), key=lambda h: (-h[1], h[0]))
        for (cj, k), _ in hits:
            if cj == ci or taken.get(cj, 0) >= PER_CANDIDATE:
                continue
            taken[cj] = taken.get(cj, 0) + 1
            v = by_candidate[cj][k]
            lexical[(u, v)] = _pair_score(f, feats[v])
    # Only pairs that can reach TOPIC are looked at: those with a lexical score, and those
    # whose cosine alone could get there (W_COS * cos + (1 - W_COS) * 1 >= TOPIC at best).
    pairs = {(min(a, b), max(a, b)) for a, b in lexical}
    cosines = None
    if vectors is not None:
        cosines = vectors @ vectors.T
        floor = (TOPIC - (1 - semantic.W_COS)) / semantic.W_COS
        rows, cols = (cosines >= floor).nonzero()
        pairs.update((int(a), int(b)) for a, b in zip(rows, cols, strict=True) if a < b)
    sims: dict[tuple[int, int], float] = {}
    for a, b in sorted(pairs):
        if units[a][0] == units[b][0]:
            continue
        lex = (lexical.get((a, b), 0.0) + lexical.get((b, a), 0.0)) / 2
        if cosines is not None:
            cos = float(cosines[a, b])
            lex = max(lex, semantic.W_COS * cos + (1 - semantic.W_COS) * lex)
        if lex >= TOPIC:
            sims[(a, b)] = lex

    # Greedy clustering, strongest links first, never two units of one candidate in a cluster.
    cluster = list(range(len(units)))
    members: dict[int, list[int]] = {u: [u] for u in range(len(units))}
    conflicts = {
        pair: c for pair in sims if (c := _conflict(texts[pair[0]], texts[pair[1]], sims[pair]))
    }
    for (a, b), s in sorted(sims.items(), key=lambda kv: (-kv[1], kv[0])):
        if s < LINK:
            break
        if (a, b) in conflicts:
            continue  # statements that contradict each other are not one point
        ca, cb = cluster[a], cluster[b]
        if ca == cb:
            continue
        if {units[u][0] for u in members[ca]} & {units[u][0] for u in members[cb]}:
            continue
        for u in members[cb]:
            cluster[u] = ca
        members[ca] += members.pop(cb)

    points: list[Point] = []
    for us in sorted(members.values()):
        us.sort()
        cands = sorted({units[u][0] for u in us})
        kept = any(columns[units[u][0]][units[u][1]].kept for u in us)
        points.append(Point(texts[us[0]], cands, [units[u] for u in us], kept))
    live = [ci for ci in range(n) if by_candidate[ci]]
    majority = max(2, len(live) // 2 + 1)
    if len(live) >= 2:
        panel.consensus = [p for p in points if len(p.candidates) >= majority]
        panel.unique = [p for p in points if len(p.candidates) == 1]

    # Agreement: the share of a candidate's points that the other one also makes.
    agreement = [[1.0 if a == b else 0.0 for b in range(n)] for a in range(n)]
    for a, b in combinations(live, 2):
        pa = [p for p in points if a in p.candidates]
        pb = [p for p in points if b in p.candidates]
        share_a = sum(b in p.candidates for p in pa) / len(pa)
        share_b = sum(a in p.candidates for p in pb) / len(pb)
        agreement[a][b] = agreement[b][a] = (share_a + share_b) / 2
    panel.agreement = agreement
    pairs = list(combinations(live, 2))
    if pairs:
        panel.diversity = 1 - sum(agreement[a][b] for a, b in pairs) / len(pairs)

    panel.contradictions = _contradictions(units, texts, sims, conflicts, cluster, attribution)
    # A lone statement that contradicts another is shown as a contradiction, not as unique.
    sides = {tuple(u) for c in panel.contradictions for s in c.sides for u in s["units"]}
    panel.unique = [p for p in panel.unique if tuple(p.units[0]) not in sides]
    return panel


def _contradictions(
    units: list[tuple[int, int]],
    texts: list[str],
    sims: dict[tuple[int, int], float],
    conflicts: dict[tuple[int, int], tuple[str, list[str], list[str]]],
    cluster: list[int],
    attribution: Attribution,
) -> list[Contradiction]:
    columns = attribution.candidate_segments
    final_texts = [s.segment.text for s in attribution.segments]
    found: dict[tuple[int, int], tuple[float, Contradiction]] = {}
    for (a, b), (kind, da, db) in conflicts.items():
        s = sims[(a, b)]
        # Which final segments speak about it: those that kept either side, or matched it best.
        related: set[int] = set()
        for u in (a, b):
            cell = columns[units[u][0]][units[u][1]]
            related.update(cell.used_by)
            if cell.match is not None and cell.score >= TOPIC:
                related.add(cell.match)
        side = None
        if related:
            said = " ".join(final_texts[i] for i in sorted(related))
            if kind == "negation":
                took_a = _negated(said) == bool(da)
                side = 0 if took_a else 1
            else:
                low = said.lower()
                words = set(_WORDS.findall(low)) | set(_NUMBER.findall(said))
                has_a = any(t in words for t in da)
                has_b = any(t in words for t in db)
                if has_a and has_b:
                    # "Canberra, not Sydney": a side named only to be rejected is not taken.
                    no_a = any(re.search(_REJECTED.format(re.escape(t)), low) for t in da)
                    no_b = any(re.search(_REJECTED.format(re.escape(t)), low) for t in db)
                    has_a, has_b = has_a and not no_a, has_b and not no_b
                side = 0 if has_a and not has_b else 1 if has_b and not has_a else None
        contradiction = Contradiction(
            kind=kind,
            sides=[
                {"text": texts[u], "candidates": [units[u][0]], "units": [units[u]], "differs": d}
                for u, d in ((a, da), (b, db))
            ],
            final_side=side,
            kept=bool(related),
        )
        key = tuple(sorted((cluster[a], cluster[b]))) if cluster[a] != cluster[b] else (a, b)
        if key not in found or s > found[key][0]:
            found[key] = (s, contradiction)
    out = [c for _, c in sorted(found.values(), key=lambda x: -x[0])]
    return [c for c in out if c.sides[0]["text"] != c.sides[1]["text"]]


def same_settings_warning(proposers: Sequence[tuple[str, object, object]]) -> str | None:
    """A warning when every proposer is the same model at the same settings.

    `proposers` holds (model, temperature, system prompt) per proposer."""
    if len(proposers) >= 2 and len(set(proposers)) == 1:
        return (
            f"All {len(proposers)} proposers are {proposers[0][0]} at the same settings: their "
            "answers differ only by sampling. Diversity is the point of a panel; mix models or "
            "settings."
        )
    return None
