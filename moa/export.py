"""A RunRecord as the documented JSON object, as Markdown, and back from JSON (import)."""

from __future__ import annotations

import html
import json
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from moa import config as config_mod
from moa.records import CALL_STATUSES, RUN_STATUSES, CallRecord, RunRecord

if TYPE_CHECKING:
    from moa.conversation import Conversation

FORMAT_VERSION = 1
MAX_IMPORT_BYTES = 20 * 1024 * 1024
# Fields beyond the documented ones, so that export → import gives back the identical run.
_EXTRA_CALL_FIELDS = ("params", "started_at", "ended_at", "start_s", "attempts", "history_note")
STRATEGY_ROLES = ("aggregator", "ranker", "selector", "critic", "reviser", "cascade")


class ImportError_(ValueError):
    """An import file is not a MoA Studio run export; the message says what is wrong."""


def _call_json(call: CallRecord) -> dict[str, Any]:
    out = {
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
        "finish_reason": call.finish_reason,
    }
    out.update({k: getattr(call, k) for k in _EXTRA_CALL_FIELDS})
    return out


def run_to_json(record: RunRecord, analysis=None, store=None) -> dict[str, Any]:
    """The `run --json` object (DESIGN.md contract) plus what an import needs.

    `analysis` is the run's moa.analysis.RunAnalysis when the caller has it; otherwise it is
    read from `store`'s cache (a stored run: the highlights it had, not recomputed), or
    computed here."""
    from moa import analysis as analysis_mod

    agg = record.final_call
    if analysis is None:
        analysis = analysis_mod.for_run(record, store)
    attr, ids = analysis.attribution, analysis.candidate_ids
    final = _call_json(agg) if agg else {}
    final["text"] = record.final_text
    if agg is not None and agg.role != "aggregator":
        final["role"] = agg.role  # a strategy's answer: a candidate verbatim, or a revision
    failed = [c for c in record.aggregator_calls if c is not agg and c.status != "ok"]
    return {
        "run_id": record.run_id,
        "conversation_id": record.conversation_id,
        "turn": record.turn,
        "status": record.status,
        "error": record.error,
        "final": final,
        "candidates": [_call_json(c) for c in record.proposer_calls],
        # Aggregator calls other than `final`'s: the aggregator whose fallback answered.
        "failed_aggregators": [_call_json(c) for c in failed],
        # The strategy (moa/strategies.py): its name, its extra calls (each with its role),
        # and what it produced (ranking, vote table, selection, critique steps, cascade).
        "strategy": record.config.strategy,
        "cascade": record.config.cascade,
        "strategy_calls": [
            {**_call_json(c), "role": c.role}
            for c in record.calls
            if c.role != "proposer" and c is not agg and c not in failed
        ],
        "outcome": record.outcome or None,
        "attribution": attr.to_json(ids) if attr is not None else [],
        "panel": analysis.panel_json(),
        "usage": record.usage(),
        "created_at": record.created_at,
        "ended_at": record.ended_at,
        "name": record.config.name,
        "prompt": record.prompt,
        "system_prompt": record.system_prompt,
        "config": config_mod.to_dict(record.config),
        "parent_run_id": record.parent_run_id,
        "aggregated_early": record.aggregated_early,
        "moa_studio_export": FORMAT_VERSION,
    }


# ---------------------------------------------------------------- import


def _call_from_json(d: Any, role: str, where: str) -> CallRecord:
    if not isinstance(d, dict):
        raise ImportError_(f"{where} must be an object")
    known = {f.name for f in fields(CallRecord)}
    data = {k: v for k, v in d.items() if k in known}
    data["role"] = role
    for key in ("layer", "index", "model", "status"):
        if key not in data:
            raise ImportError_(f"{where}.{key} is missing")
    if data["status"] not in CALL_STATUSES:
        raise ImportError_(f"{where}.status {data['status']!r} is not one of {CALL_STATUSES}")
    data.setdefault("label", data["model"])
    data["text"] = data.get("text") or ""
    data["params"] = data.get("params") or {}
    try:
        return CallRecord(**data)
    except TypeError as e:
        raise ImportError_(f"{where}: {e}") from None


def run_from_json(obj: Any) -> RunRecord:
    """A RunRecord from `run_to_json` output; ImportError_ names what is missing or wrong."""
    if not isinstance(obj, dict) or "run_id" not in obj or "candidates" not in obj:
        raise ImportError_(
            "not a MoA Studio run export: expected an object with run_id and candidates"
        )
    for key in ("prompt", "config", "status"):
        if key not in obj:
            raise ImportError_(f"the export has no {key!r}: export it again with MoA Studio")
    if obj["status"] not in RUN_STATUSES:
        raise ImportError_(f"status {obj['status']!r} is not one of {RUN_STATUSES}")
    try:
        cfg = config_mod.from_dict(obj["config"])
    except config_mod.ConfigError as e:
        raise ImportError_(f"its config is invalid: {e}") from None
    if not isinstance(obj["candidates"], list):
        raise ImportError_("candidates must be a list")
    calls = [
        _call_from_json(c, "proposer", f"candidates[{i}]") for i, c in enumerate(obj["candidates"])
    ]
    final = obj.get("final") or {}
    others = obj.get("failed_aggregators") or []
    if not isinstance(others, list):
        raise ImportError_("failed_aggregators must be a list")
    aggs = [
        _call_from_json(c, "aggregator", f"failed_aggregators[{i}]") for i, c in enumerate(others)
    ]
    extra = obj.get("strategy_calls") or []
    if not isinstance(extra, list):
        raise ImportError_("strategy_calls must be a list")
    for i, c in enumerate(extra):
        role = c.get("role") if isinstance(c, dict) else None
        if role not in STRATEGY_ROLES:
            raise ImportError_(f"strategy_calls[{i}].role {role!r} is not one of {STRATEGY_ROLES}")
        aggs.append(_call_from_json(c, role, f"strategy_calls[{i}]"))
    final_role = final.get("role", "aggregator")
    if final_role not in ("aggregator", "proposer") and final_role not in STRATEGY_ROLES:
        raise ImportError_(f"final.role {final_role!r} is not a call role")
    if final.get("model") and final_role != "proposer":  # a chosen candidate is in candidates
        agg = _call_from_json(final, final_role, "final")
        if agg.text is None:
            agg.text = ""
        aggs.append(agg)
    # In the store's order (layer, role descending, index), so an import reads like the original.
    aggs.sort(key=lambda c: c.index)
    aggs.sort(key=lambda c: c.role, reverse=True)
    aggs.sort(key=lambda c: c.layer)
    calls += aggs
    keys = [c.key for c in calls]
    if len(set(keys)) != len(keys):
        raise ImportError_("two calls share the same layer, role and index")
    record = RunRecord(
        run_id=str(obj["run_id"]),
        config=cfg,
        prompt=str(obj["prompt"]),
        system_prompt=obj.get("system_prompt"),
        status=obj["status"],
        error=obj.get("error"),
        created_at=obj.get("created_at") or "",
        ended_at=obj.get("ended_at"),
        wall_s=(obj.get("usage") or {}).get("wall_s"),
        calls=calls,
        pid=0,
        parent_run_id=obj.get("parent_run_id"),
        conversation_id=obj.get("conversation_id"),
        turn=obj.get("turn") if isinstance(obj.get("turn"), int) and obj["turn"] > 0 else 1,
        outcome=obj.get("outcome") if isinstance(obj.get("outcome"), dict) else None,
        aggregated_early=bool(obj.get("aggregated_early")),
    )
    return record


def conversation_to_json(conv: Conversation, store=None) -> dict[str, Any]:
    """`show ID --json` for a conversation: every run in order (a retried turn appears once per
    attempt; `turn` says where each belongs), plus what an import needs. With `store`, each
    run's analysis comes from its cache."""
    return {
        "conversation_id": conv.id,
        "title": conv.title,
        "created_at": conv.created_at,
        "updated_at": conv.updated_at,
        "parent_id": conv.parent_id,
        "branch_turn": conv.branch_turn,
        "turns": [run_to_json(r, store=store) for r in conv.runs],
        "moa_studio_export": FORMAT_VERSION,
    }


def conversation_from_json(obj: dict[str, Any]) -> Conversation:
    """A Conversation from `conversation_to_json` output; ImportError_ names what is wrong."""
    from moa.conversation import Conversation

    turns = obj.get("turns")
    if not isinstance(turns, list) or not turns:
        raise ImportError_("turns must be a non-empty list of run objects")
    cid = obj.get("conversation_id")
    if not isinstance(cid, str) or not cid:
        raise ImportError_("conversation_id is missing")
    runs = []
    for i, t in enumerate(turns):
        try:
            runs.append(run_from_json(t))
        except ImportError_ as e:
            raise ImportError_(f"turns[{i}]: {e}") from None
    branch = obj.get("branch_turn")
    return Conversation(
        id=cid,
        title=str(obj.get("title") or runs[0].prompt),
        created_at=str(obj.get("created_at") or runs[0].created_at),
        updated_at=str(obj.get("updated_at") or runs[-1].created_at),
        parent_id=obj.get("parent_id") if isinstance(obj.get("parent_id"), str) else None,
        branch_turn=branch if isinstance(branch, int) else None,
        runs=runs,
    )


def load_export(data: bytes | str) -> RunRecord | Conversation:
    """A run or a whole conversation from a JSON export file's bytes."""
    if len(data) > MAX_IMPORT_BYTES:
        raise ImportError_(
            f"the file is {len(data):,} bytes; an export may be at most {MAX_IMPORT_BYTES:,}"
        )
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImportError_(f"the file is not JSON ({e})") from None
    if isinstance(obj, dict) and "turns" in obj and "run_id" not in obj:
        return conversation_from_json(obj)
    return run_from_json(obj)


def load_json_export(data: bytes | str) -> RunRecord:
    if len(data) > MAX_IMPORT_BYTES:
        raise ImportError_(
            f"the file is {len(data):,} bytes; an export may be at most {MAX_IMPORT_BYTES:,}"
        )
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImportError_(f"the file is not JSON ({e})") from None
    return run_from_json(obj)


# ---------------------------------------------------------------- Markdown


def _fence(text: str) -> str:
    """A code fence longer than any backtick run inside `text`, so model text can't close it."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def _inline(text: object) -> str:
    """Untrusted text on one Markdown line: no raw HTML, no table breaks, no new lines."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _cost(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.6f}"


def conversation_to_markdown(conv: Conversation, store=None) -> str:
    """Every run of a conversation, in order, each as its run report one heading level down."""
    lines = [f"# Conversation: {_inline(conv.title)}", "", f"- **Id**: {conv.id}"]
    if conv.parent_id:
        lines.append(f"- **Branched from**: {conv.parent_id} at turn {conv.branch_turn}")
    lines.append(f"- **Turns**: {len(conv.turns)} · started {conv.created_at}")
    lines.append("")
    for run in conv.runs:
        body = run_to_markdown(run, heading=f"Turn {run.turn} · run {run.run_id}", store=store)
        lines += ["#" + line if line.startswith("#") else line for line in body.splitlines()]
        lines.append("")
    return "\n".join(lines)


def run_to_markdown(record: RunRecord, heading: str | None = None, store=None) -> str:
    """A readable report; model text is quoted in fences so its Markdown can't restyle the page.
    With `store`, the highlights come from the run's cached analysis."""
    from moa import analysis as analysis_mod

    usage = record.usage()
    found = analysis_mod.for_run(record, store)
    attr, ids = found.attribution, found.candidate_ids
    lines = [
        f"# {heading or f'MoA run {record.run_id}'}",
        "",
        f"- **Config**: {_inline(record.config.name)} · {len(record.config.proposers)} proposers × "
        f"{record.config.layers} layer(s) → {_inline(record.config.aggregator.display)}",
        f"- **Status**: {record.status}" + (f" — {_inline(record.error)}" if record.error else ""),
        f"- **When**: {record.created_at}",
        f"- **Wall time**: {record.wall_s if record.wall_s is not None else '-'} s · tokens "
        f"{usage['tokens_in']} in / {usage['tokens_out']} out · cost {_cost(usage['cost_usd'])}",
    ]
    if record.parent_run_id:
        lines.append(f"- **Re-aggregation of**: {record.parent_run_id} (candidates reused)")
    if record.aggregated_early:
        lines.append("- **Aggregated early**: the proposers still running were cancelled")
    prompt_fence = _fence(record.prompt)
    lines += ["", "## Prompt", "", prompt_fence, record.prompt, prompt_fence, ""]
    final = record.final_text
    lines += ["## Final answer", ""]
    agg = record.aggregator_call
    for failed in record.aggregator_calls:
        if failed is not agg:
            lines += [
                f"_The aggregator {_inline(failed.label)} ({_inline(failed.model)}) "
                f"{failed.status}: {_inline(failed.error)}; the fallback aggregator "
                f"{_inline(agg.label)} ({_inline(agg.model)}) took over._",
                "",
            ]
    if final:
        fence = _fence(final)
        lines += [fence, final, fence, ""]
    else:
        why = f"{agg.status}: {_inline(agg.error)}" if agg else "no aggregator call"
        lines += [f"_No final answer ({why})_", ""]
    from moa.strategies import summary_lines  # here: moa.strategies imports the engine's parts

    labels = {i: c.label for i, c in enumerate(record.proposer_calls)}
    summary = summary_lines(record.outcome, labels)
    if summary:
        text = "\n".join(summary)
        fence = _fence(text)
        lines += [f"## Strategy: {record.config.strategy_label}", "", fence, text, fence, ""]
    if attr is not None:
        lines += [
            "## What the aggregator kept",
            "",
            "| candidate | share of the final answer |",
            "|---|---|",
        ]
        calls = record.proposer_calls
        for local, pos in enumerate(ids):
            lines.append(f"| {_inline(calls[pos].label)} | {attr.share[local]:.0%} |")
        lines += [f"| new (aggregator's own) | {attr.novel_share:.0%} |", ""]
    lines += ["## Candidates", ""]
    for c in record.proposer_calls:
        head = f"### Layer {c.layer} · {_inline(c.label)} ({_inline(c.model)}) · {c.status}"
        meta = (
            f"latency {c.latency_s if c.latency_s is not None else '-'} s · first token "
            f"{c.ttft_s if c.ttft_s is not None else '-'} s · {c.tokens_out or 0} tokens · "
            f"cost {_cost(c.cost_usd)}"
        )
        if c.cut_at_max_tokens:
            meta += f" · **cut off at max_tokens ({c.params.get('max_tokens', '?')})**"
        lines += [head, "", meta, ""]
        if c.error:
            lines += [f"Error: {_inline(c.error)}", ""]
        if c.text:
            fence = _fence(c.text)
            lines += [fence, c.text, fence, ""]
    lines += ["## Config", "", "```toml", config_mod.dumps(record.config).strip(), "```", ""]
    return "\n".join(lines)
