"""A run's attribution and panel analysis, computed once and kept in the store.

A stored run opens with exactly the highlights it had when it finished: `for_run` reads the
cached result (table `attribution_cache`, migration m010) when the run's texts and the matcher
version still match, and computes and saves it otherwise.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from moa import embeddings, semantic
from moa.attribution import (
    ATTRIBUTION_MAX_CHARS,
    DEFAULT_MATCHER,
    AttributedSegment,
    Attribution,
    CandidateSegment,
    Segment,
    Source,
    attribute,
    split_segments,
)
from moa.panel import Panel, analyse, same_settings_warning
from moa.records import RunRecord

if TYPE_CHECKING:
    from moa.store import Store

# Bump when the matcher or the panel changes what they compute: cached results are then redone.
# 2: matcher round 2 (issue 12: tables, code, clauses, alignment);
# 3: round 3 (framing lines new unless a candidate frames the same way, stricter table rows)
ANALYSIS_VERSION = 4
PREWARM_MAX_UNITS = 150  # of one candidate, embedded ahead (the rest, if needed, at the end)
# (segments first, then their clauses: semantic.candidate_units)
_prewarm_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moa-prewarm")


def prewarm(text: str) -> None:
    """Embed a finished candidate's units in the background, while the run goes on, so the
    attribution at the end of the run embeds little more than the final answer (vectors are
    cached per text). Does nothing when the embedding model is not installed."""

    def work() -> None:
        try:
            embedder = embeddings.get_embedder()
        except embeddings.EmbeddingsUnavailable:
            return
        segments = split_segments((text or "")[:ATTRIBUTION_MAX_CHARS])
        units = semantic.candidate_units(segments)
        embedder.encode(units[:PREWARM_MAX_UNITS])

    _prewarm_pool.submit(work)


@dataclass
class RunAnalysis:
    attribution: Attribution | None
    candidate_ids: list[int]  # local candidate i is record.proposer_calls[candidate_ids[i]]
    panel: Panel | None
    warning: str | None = None  # proposers all the same model at the same settings
    from_cache: bool = False

    def panel_json(self) -> dict[str, Any]:
        """The `run --json` "panel" object (empty lists when there is no final answer)."""
        if self.panel is None:
            out: dict[str, Any] = {
                "consensus": [],
                "unique": [],
                "contradictions": [],
                "diversity": None,
            }
        else:
            out = self.panel.to_json(self.candidate_ids)
        out["warning"] = self.warning
        out["matcher"] = self.attribution.matcher if self.attribution else None
        return out


def fingerprint(record: RunRecord, matcher: str = DEFAULT_MATCHER) -> str:
    """What the analysis depends on: the final answer, the candidates it saw, the matcher."""
    seen = [(pos, c.text) for pos, c in record.aggregated_candidates()]
    blob = json.dumps([ANALYSIS_VERSION, matcher, record.final_text or "", seen])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _warning(record: RunRecord) -> str | None:
    specs = [(p.model, p.temperature, p.system_prompt) for p in record.config.proposers]
    return same_settings_warning(specs)


def compute(record: RunRecord, *, matcher: str = DEFAULT_MATCHER) -> RunAnalysis:
    final = record.final_text
    if not final:
        return RunAnalysis(None, [], None, _warning(record))
    seen = record.attributed_candidates()  # a strategy's verbatim answer: only its candidate
    if not seen:
        return RunAnalysis(None, [], None, _warning(record))
    attr = attribute(final, [c.text for _, c in seen], matcher=matcher)
    return RunAnalysis(attr, [pos for pos, _ in seen], analyse(attr), _warning(record))


# ---------------------------------------------------------------- (de)serialisation


def _segment(d: dict[str, Any]) -> Segment:
    return Segment(d["text"], d["start"], d["end"], d["kind"])


def attribution_from_dict(d: dict[str, Any]) -> Attribution:
    return Attribution(
        segments=[
            AttributedSegment(
                _segment(s["segment"]),
                [Source(**src) for src in s["sources"]],
                s["novel"],
                s["score"],
                s["merged"],
                Source(**s["closest"]) if s.get("closest") else None,
            )
            for s in d["segments"]
        ],
        candidate_segments=[
            [
                CandidateSegment(
                    _segment(c["segment"]), c["kept"], c["score"], c["match"], c["used_by"]
                )
                for c in column
            ]
            for column in d["candidate_segments"]
        ],
        share=d["share"],
        novel_share=d["novel_share"],
        main_source=d["main_source"],
        agreement=d["agreement"],
        threshold=d["threshold"],
        matcher=d["matcher"],
        notice=d["notice"],
    )


def to_json(analysis: RunAnalysis) -> str:
    return json.dumps(
        {
            "attribution": asdict(analysis.attribution) if analysis.attribution else None,
            "candidate_ids": analysis.candidate_ids,
            "panel": analysis.panel.to_dict() if analysis.panel else None,
            "warning": analysis.warning,
        }
    )


def from_json(text: str) -> RunAnalysis:
    d = json.loads(text)
    return RunAnalysis(
        attribution_from_dict(d["attribution"]) if d["attribution"] else None,
        list(d["candidate_ids"]),
        Panel.from_dict(d["panel"]) if d["panel"] else None,
        d.get("warning"),
        from_cache=True,
    )


# ---------------------------------------------------------------- the cache


def for_run(
    record: RunRecord, store: Store | None = None, *, matcher: str = DEFAULT_MATCHER
) -> RunAnalysis:
    """The run's analysis: from the store's cache when it is current, else computed (and saved
    when the store is writable)."""
    fp = fingerprint(record, matcher)
    if store is not None:
        cached = store.load_analysis(record.run_id, fp)
        if cached is not None:
            try:
                return from_json(cached)
            except (KeyError, TypeError, ValueError):
                pass  # an older layout: recompute below
    result = compute(record, matcher=matcher)
    if store is not None and record.status != "running":
        store.save_analysis(record.run_id, fp, _matcher(result), to_json(result))
    return result


def _matcher(result: RunAnalysis) -> str | None:
    return result.attribution.matcher if result.attribution else None
