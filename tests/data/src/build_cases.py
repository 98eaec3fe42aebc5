"""Build a labelled attribution file from a compact spec: python tests/data/src/build_cases.py SPEC OUT.

A spec module defines DESCRIPTION, SPLIT and CASES = [{"id", "topic", "format", "candidates",
"final", "labels": [(kind, [sources]), ...]}]; labels follow split_segments(final) order and
the builder stores each segment's text with its label (and fails when the counts disagree).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from moa.attribution import split_segments  # noqa: E402

KINDS = {
    "copied": "verbatim from a candidate",
    "edited": "a few words changed, added, dropped or reordered",
    "paraphrased": "same meaning in different words",
    "merged": "one final segment combining two candidate segments",
    "new": "the aggregator's own content, including plausible but unsupported claims",
}


def build(spec_path: str, out_path: str) -> None:
    spec = importlib.util.spec_from_file_location("spec", spec_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cases = []
    for case in mod.CASES:
        segs = split_segments(case["final"])
        if len(segs) != len(case["labels"]):
            for s in segs:
                print("  ", repr(s.text[:70]))
            raise SystemExit(f"{case['id']}: {len(segs)} segments, {len(case['labels'])} labels")
        labels = []
        for seg, (kind, sources) in zip(segs, case["labels"], strict=True):
            assert kind in KINDS, kind
            labels.append({"text": seg.text, "kind": kind, "sources": sorted(sources)})
        cases.append(
            {
                "id": case["id"],
                "topic": case.get("topic", ""),
                "format": case.get("format", "prose"),
                "split": mod.SPLIT,
                "candidates": case["candidates"],
                "final": case["final"],
                "labels": labels,
            }
        )
    out = {"description": mod.DESCRIPTION, "kinds": KINDS, "cases": cases}
    Path(out_path).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    n = sum(len(c["labels"]) for c in cases)
    hard = sum(lab["kind"] in ("paraphrased", "merged") for c in cases for lab in c["labels"])
    print(f"{out_path}: {len(cases)} cases, {n} units, {hard / n:.0%} paraphrased or merged")


if __name__ == "__main__":
    build(sys.argv[1], sys.argv[2])
