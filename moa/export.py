"""A RunRecord as the documented JSON object (`run --json`, `show --json`, exports)."""

from __future__ import annotations

from typing import Any

from moa import config as config_mod
from moa.records import CallRecord, RunRecord


def _candidate(call: CallRecord) -> dict[str, Any]:
    return {
        "layer": call.layer,
        "index": call.index,
        "model": call.model,
        "label": call.label,
        "status": call.status,
        "text": call.text,
        "error": call.error,
        "latency_s": call.latency_s,
        "ttft_s": call.ttft_s,
        "tokens_in": call.tokens_in,
        "tokens_out": call.tokens_out,
        "cost_usd": call.cost_usd,
    }


def attribution(record: RunRecord):
    """Attribution of the final answer to the candidates the aggregator saw, or None."""
    from moa.attribution import attribute  # imported here: only runs with a final answer need it

    final = record.final_text
    if not final:
        return None, []
    seen = record.aggregated_candidates()
    return attribute(final, [c.text for _, c in seen]), [pos for pos, _ in seen]


def run_to_json(record: RunRecord) -> dict[str, Any]:
    agg = record.aggregator_call
    attr, ids = attribution(record)
    out: dict[str, Any] = {
        "run_id": record.run_id,
        "status": record.status,
        "error": record.error,
        "created_at": record.created_at,
        "name": record.config.name,
        "prompt": record.prompt,
        "system_prompt": record.system_prompt,
        "final": {
            "model": agg.model if agg else None,
            "label": agg.label if agg else None,
            "status": agg.status if agg else None,
            "text": record.final_text,
            "error": agg.error if agg else None,
            "latency_s": agg.latency_s if agg else None,
            "ttft_s": agg.ttft_s if agg else None,
            "tokens_in": agg.tokens_in if agg else None,
            "tokens_out": agg.tokens_out if agg else None,
            "cost_usd": agg.cost_usd if agg else None,
        },
        "candidates": [_candidate(c) for c in record.proposer_calls],
        "attribution": attr.to_json(ids) if attr is not None else [],
        "usage": record.usage(),
        "config": config_mod.to_dict(record.config),
        "parent_run_id": record.parent_run_id,
    }
    return out
