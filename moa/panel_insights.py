"""Across logged runs, per aggregator model: how often it drops unique points, which side it
takes when the candidates contradict each other. Read from the runs' cached panel analyses."""

from __future__ import annotations

import json
from dataclasses import dataclass

from moa.store import Store


@dataclass
class AggregatorPanelStats:
    model: str
    runs: int  # runs with a cached panel analysis
    unique: int  # unique points its candidates made
    unique_dropped: int
    contradictions: int
    took_majority: int  # sided with the side more candidates were on
    took_minority: int
    took_tie: int  # took a side of two equally backed sides
    took_neither: int  # said nothing about it, or took no clear side

    @property
    def drop_rate(self) -> float | None:
        return self.unique_dropped / self.unique if self.unique else None


def compute(
    store: Store, since: str | None = None, until: str | None = None, preset: str | None = None
) -> list[AggregatorPanelStats]:
    """One row per aggregator model, over the runs in range whose analysis is cached (runs
    finished before the cache existed are not recomputed here: opening one caches it)."""
    where, params = store.where_clause("", None, None, since, until, preset)
    if not store.db["attribution_cache"].exists():
        return []
    join = "FROM runs JOIN attribution_cache ON attribution_cache.run_id = runs.id"
    rows = store.db.execute(
        f"SELECT runs.aggregator, attribution_cache.analysis_json {join}{where}", params
    ).fetchall()
    out: dict[str, AggregatorPanelStats] = {}
    for model, blob in rows:
        try:
            panel = json.loads(blob).get("panel")
        except (TypeError, ValueError):
            continue
        if not panel:
            continue
        model = model or "unknown"
        s = out.setdefault(model, AggregatorPanelStats(model, 0, 0, 0, 0, 0, 0, 0, 0))
        s.runs += 1
        s.unique += len(panel["unique"])
        s.unique_dropped += sum(not p["kept"] for p in panel["unique"])
        for c in panel["contradictions"]:
            s.contradictions += 1
            side = c.get("final_side")
            if side is None:
                s.took_neither += 1
                continue
            backing = [len(x["candidates"]) for x in c["sides"]]
            other = backing[1 - side]
            if backing[side] > other:
                s.took_majority += 1
            elif backing[side] < other:
                s.took_minority += 1
            else:
                s.took_tie += 1
    return sorted(out.values(), key=lambda s: s.model)
