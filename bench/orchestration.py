"""How close a run's wall time comes to its ideal critical path, against the loopback server.

Ideal = sum over layers of the slowest proposer + the aggregator. A concurrent engine should be
within 5% of it (target ratio <= 1.05 at 4 proposers x 2 layers with 0.5 s calls); calling the
proposers one after another, as the reference MoA's evaluation scripts do, costs ~N times more.

    .venv/bin/python bench/orchestration.py [--write]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import write_section  # noqa: E402
from moa import engine  # noqa: E402
from tests.conftest import make_config  # noqa: E402
from tests.fakeserver import FakeServer  # noqa: E402

PROPOSERS, LAYERS, CALL_S, REPEATS = 4, 2, 0.5, 3


def measure(server: FakeServer, limits: engine.Limits) -> float:
    names = [f"p{i}" for i in range(PROPOSERS)]
    for name in [*names, "agg"]:
        server.set(name, delay_s=CALL_S, text="A short answer with a few words in it.")
    cfg = make_config(server, names, layers=LAYERS)
    record = engine.run_sync(cfg, "Explain the tides.", limits=limits)
    assert record.status == "ok", record.error
    return record.wall_s


def main() -> None:
    server = FakeServer().start()
    try:
        measure(server, engine.Limits())  # warm-up: litellm import and first-call setup
        ideal = LAYERS * CALL_S + CALL_S
        concurrent = [measure(server, engine.Limits()) for _ in range(REPEATS)]
        serial = [
            measure(server, engine.Limits(per_provider={"openai": 1})) for _ in range(REPEATS)
        ]
    finally:
        server.stop()
    c_ratio = statistics.median(concurrent) / ideal
    s_ratio = statistics.median(serial) / ideal
    lines = [
        f"{PROPOSERS} proposers x {LAYERS} layers + aggregator, every call {CALL_S} s "
        f"(ideal critical path {ideal:.2f} s), median of {REPEATS} runs in one process:",
        "",
        "| engine | wall time (s) | ratio to ideal | target |",
        "|---|---|---|---|",
        f"| concurrent (ours) | {statistics.median(concurrent):.3f} | **{c_ratio:.3f}** | <= 1.05 |",
        f"| one call after another | {statistics.median(serial):.3f} | {s_ratio:.3f} | - |",
        "",
        f"Concurrency makes this run {s_ratio / c_ratio:.2f}x faster than calling the proposers "
        "one by one.",
    ]
    print("\n".join(lines))
    if "--write" in sys.argv:
        write_section("Orchestration (bench/orchestration.py)", "\n".join(lines))


if __name__ == "__main__":
    main()
