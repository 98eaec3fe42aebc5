"""Across all logged runs: which models earn their cost (shares, latency, tokens, failures)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from moa.store import Store

ERROR_TYPES = (
    "timeout",
    "rate limit",
    "server error",
    "connection",
    "auth",
    "empty answer",
    "cancelled",
    "interrupted",
    "other",
)


def error_type(status: str, error: str | None) -> str:
    """A coarse, chartable kind of failure from a call's status and provider message."""
    text = (error or "").lower()
    if status in ("timeout", "cancelled", "interrupted"):
        return status
    if "rate limit" in text or text.startswith("http 429") or "ratelimit" in text:
        return "rate limit"
    if "empty answer" in text:
        return "empty answer"
    if text.startswith(("http 401", "http 403")) or any(
        k in text for k in ("api key", "authentication", "unauthorized")
    ):
        return "auth"
    if any(k in text for k in ("connect", "reset", "refused", "unreachable", "peer closed")):
        return "connection"
    if text.startswith("http 5") or any(k in text for k in ("server error", "overloaded")):
        return "server error"
    return "other"


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, int(q) - 1))]


@dataclass
class ModelStats:
    model: str
    calls: int
    failed: int
    failure_rate: float
    latency_p50: float | None
    latency_p95: float | None
    ttft_p50: float | None
    ttft_p95: float | None
    tokens_in: int
    tokens_out: int
    cost_usd: float | None  # None when any of its calls had an unknown price
    mean_share: float | None  # mean share of the final answer when it was a candidate
    main_source_rate: float | None  # how often it was the main source when it was a candidate
    as_aggregator: int  # calls made as the aggregator


@dataclass
class DailyUsage:
    day: str
    model: str
    calls: int
    tokens_in: int
    tokens_out: int
    cost_usd: float | None


@dataclass
class Insights:
    runs: int
    models: list[ModelStats]
    daily: list[DailyUsage]
    failures: dict[str, dict[str, int]]  # model -> error type -> count


def compute(
    store: Store, since: str | None = None, until: str | None = None, preset: str | None = None
) -> Insights:
    """Sums and counts in SQL; only latencies travel to Python, for percentiles."""
    where, params = store.where_clause("", None, None, since, until, preset)
    db = store.db
    n_runs = db.execute(f"SELECT count(*) FROM runs{where}", params).fetchone()[0]
    done = "calls.status NOT IN ('waiting', 'running')"
    if where:
        joined = f"FROM calls JOIN runs ON runs.id = calls.run_id{where} AND {done}"
    else:  # no run filter: no need to look up each call's run
        joined = f"FROM calls WHERE {done}"
    with_day = f"FROM calls JOIN runs ON runs.id = calls.run_id{where}{' AND' if where else ' WHERE'} {done}"
    # A call with tokens but no price makes its model's cost unknown, never a made-up 0.
    unknown = "sum(calls.cost_usd IS NULL AND (calls.tokens_in > 0 OR calls.tokens_out > 0))"
    totals = db.execute(
        "SELECT calls.model, count(*), sum(calls.status != 'ok'), sum(coalesce(calls.tokens_in, 0)), "
        f"sum(coalesce(calls.tokens_out, 0)), sum(calls.cost_usd), {unknown}, avg(calls.share), "
        f"avg(calls.main_source), sum(calls.role = 'aggregator') {joined} GROUP BY calls.model "
        "ORDER BY calls.model",
        params,
    ).fetchall()
    latencies: dict[str, list[float]] = defaultdict(list)
    ttfts: dict[str, list[float]] = defaultdict(list)
    for model, lat, ttft in db.execute(
        f"SELECT calls.model, calls.latency_s, calls.ttft_s {joined} AND calls.status = 'ok'",
        params,
    ):
        if lat is not None:
            latencies[model].append(lat)
        if ttft is not None:
            ttfts[model].append(ttft)
    models = [
        ModelStats(
            model=model,
            calls=n,
            failed=failed,
            failure_rate=failed / n if n else 0.0,
            latency_p50=percentile(latencies[model], 50),
            latency_p95=percentile(latencies[model], 95),
            ttft_p50=percentile(ttfts[model], 50),
            ttft_p95=percentile(ttfts[model], 95),
            tokens_in=tin,
            tokens_out=tout,
            cost_usd=None if n_unknown else round(cost or 0.0, 8),
            mean_share=share,
            main_source_rate=main,
            as_aggregator=agg,
        )
        for model, n, failed, tin, tout, cost, n_unknown, share, main, agg in totals
    ]
    daily = [
        DailyUsage(day, model, n, tin, tout, None if n_unknown else round(cost or 0.0, 8))
        for day, model, n, tin, tout, cost, n_unknown in db.execute(
            "SELECT substr(runs.created_at, 1, 10) AS day, calls.model, count(*), "
            "sum(coalesce(calls.tokens_in, 0)), sum(coalesce(calls.tokens_out, 0)), "
            f"sum(calls.cost_usd), {unknown} {with_day} GROUP BY day, calls.model ORDER BY day",
            params,
        )
    ]
    failures: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for model, status, error, n in db.execute(
        f"SELECT calls.model, calls.status, calls.error, count(*) {joined} AND calls.status != 'ok' "
        "GROUP BY calls.model, calls.status, calls.error",
        params,
    ):
        failures[model][error_type(status, error)] += n
    return Insights(n_runs, models, daily, {k: dict(v) for k, v in failures.items()})


def cost_state(daily: list[DailyUsage]) -> tuple[str, str]:
    """What the "Cost per day" panel can show: ("chart", ""), or ("zero" | "unknown", why).

    An empty chart (plotly draws a −1..1 axis) says nothing; these say what is true instead.
    """
    # A model whose calls all failed before any token has nothing to price (not "$0").
    priced = [d for d in daily if d.cost_usd is not None and (d.tokens_in or d.tokens_out)]
    if not priced:
        return (
            "unknown",
            "Cost per day: unknown. No call in this range has a known price (litellm has none "
            "for these models). Set input_cost_per_mtok and output_cost_per_mtok on a model "
            "to price it; 0 for a self-hosted one.",
        )
    if all(d.cost_usd == 0 for d in priced):
        return (
            "zero",
            "Cost per day: $0. Every priced call in this range ran on a local or self-hosted "
            "model at no charge.",
        )
    return "chart", ""
