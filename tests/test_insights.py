"""Insights across runs: shares, main source, latency percentiles, cost, failures by type."""

from __future__ import annotations

from moa import engine, insights
from moa.store import Store, StoreWriter
from tests.conftest import make_config


def test_insights_summarise_models_across_runs(fake, tmp_path):
    store = Store(tmp_path / "moa.db")
    fake.set("a", text="Boil the pasta in salted water. Stir it often.")
    fake.set("b", text="Use a big pot.")
    fake.set("agg", text="Boil the pasta in salted water. Stir it often. Serve hot.")
    fake.set("flaky", fault="500")
    for _ in range(3):
        engine.run_sync(
            make_config(fake, ["a", "b", "flaky"]),
            "Cook pasta?",
            on_event=StoreWriter(store),
            limits=engine.Limits(max_retries=0),
        )
    fake.set("gpt-4o-mini", text="Salted water. Stir.")
    engine.run_sync(
        make_config(fake, ["gpt-4o-mini"], name="priced"),
        "Cook pasta?",
        on_event=StoreWriter(store),
    )
    result = insights.compute(store)
    by = {m.model: m for m in result.models}
    assert result.runs == 4
    a, b, flaky = by["openai/a"], by["openai/b"], by["openai/flaky"]
    assert a.calls == 3 and a.failed == 0 and a.main_source_rate == 1.0
    assert a.mean_share > 0.5 and b.main_source_rate == 0.0
    assert flaky.failure_rate == 1.0 and result.failures["openai/flaky"] == {"server error": 3}
    assert a.latency_p50 is not None and a.latency_p95 >= a.latency_p50
    assert a.cost_usd is None  # unknown price: unknown total, never 0
    assert by["openai/gpt-4o-mini"].cost_usd > 0
    assert by["openai/agg"].as_aggregator == 4  # every run, the priced one too
    assert {d.model for d in result.daily} >= {"openai/a", "openai/gpt-4o-mini"}
    only = insights.compute(store, preset="priced")
    assert only.runs == 1 and {m.model for m in only.models} == {"openai/gpt-4o-mini", "openai/agg"}


def test_error_types_are_told_apart():
    assert insights.error_type("timeout", "no complete answer within 5 s") == "timeout"
    assert insights.error_type("failed", "rate limit for x") == "rate limit"
    assert insights.error_type("failed", "HTTP 500: upstream x exploded") == "server error"
    assert insights.error_type("failed", "HTTP 429: slow down") == "rate limit"
    assert insights.error_type("failed", "Connection reset by peer") == "connection"
    assert insights.error_type("failed", "Incorrect API key provided") == "auth"
    assert insights.error_type("failed", "the model returned an empty answer") == "empty answer"
