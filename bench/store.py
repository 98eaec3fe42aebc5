"""History queries on a generated 100,000-run database: search and a page must answer < 100 ms.

    .venv/bin/python bench/store.py [--runs 100000] [--db PATH] [--write]

The database is generated once (runs with 3 proposers + 1 aggregator each, realistic texts) and
reused on later runs if it is already there.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import write_section  # noqa: E402
from moa.store import Store  # noqa: E402

WORDS = [
    "water",
    "light",
    "soil",
    "plant",
    "garden",
    "bread",
    "flour",
    "yeast",
    "oven",
    "recipe",
    "python",
    "function",
    "error",
    "test",
    "database",
    "query",
    "index",
    "river",
    "mountain",
    "travel",
    "train",
    "ticket",
    "museum",
    "history",
    "empire",
    "war",
    "treaty",
    "planet",
    "orbit",
    "star",
    "galaxy",
    "energy",
    "battery",
    "solar",
    "wind",
    "climate",
    "ocean",
    "tide",
    "moon",
    "market",
    "price",
    "budget",
    "invoice",
    "customer",
    "email",
    "meeting",
    "schedule",
    "project",
    "deadline",
    "design",
    "colour",
    "font",
    "layout",
    "music",
    "guitar",
    "chord",
    "rhythm",
    "poem",
    "story",
    "novel",
    "author",
    "chapter",
    "lesson",
    "student",
    "teacher",
    "exam",
]
MODELS = [
    "openai/gpt-4o-mini",
    "anthropic/claude-3-5-haiku",
    "local/smollm2-135m",
    "groq/llama-3.1-8b",
]


DEFAULT_DB = "/tmp/moa-bench-100k-conversations.db"


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def conversation_plan(n_runs: int) -> tuple[list[int], list[int]]:
    """Which conversation (an index) and turn each run is: conversations of 1–5 turns, ~2.5 on
    average, their turns consecutive (as people chat: a few follow-ups, then something new)."""
    rng = random.Random(7)
    conv_of, turn_of = [], []
    conv = 0
    while len(conv_of) < n_runs:
        for t in range(1, rng.randint(1, 4) + 1):
            conv_of.append(conv)
            turn_of.append(t)
        conv += 1
    return conv_of[:n_runs], turn_of[:n_runs]


def generate(path: Path, n_runs: int) -> None:
    store = Store(path)
    rng = random.Random(42)
    conn = store.db.conn
    t0 = time.monotonic()
    start = time.time() - 365 * 86400
    conv_of, turn_of = conversation_plan(n_runs)
    conv_ids: dict[int, str] = {}
    for batch in range(0, n_runs, 5000):
        runs, calls = [], []
        for i in range(batch, min(batch + 5000, n_runs)):
            rid = f"{int((start + i * 300) * 1000):012x}{i:08x}"
            cid = conv_ids.setdefault(conv_of[i], "c" + rid)
            created = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(start + i * 300))
            props = rng.sample(MODELS, 3)
            agg = rng.choice(MODELS)
            status = rng.choices(["ok", "failed", "cancelled"], [0.9, 0.07, 0.03])[0]
            final = " ".join(sentence(rng, 12) for _ in range(4)) if status == "ok" else None
            runs.append(
                (
                    rid,
                    created,
                    created,
                    f"preset-{i % 5}",
                    sentence(rng, 10),
                    status,
                    1,
                    3,
                    ", ".join(props),
                    agg,
                    final,
                    400,
                    300,
                    0.0012,
                    3.2,
                    json.dumps(
                        {
                            "name": f"preset-{i % 5}",
                            "layers": 1,
                            "aggregator": {"model": agg},
                            "proposers": [{"model": m} for m in props],
                        }
                    ),
                    0,
                    cid,
                    turn_of[i],
                )
            )
            for j, m in enumerate(props):
                calls.append(
                    (
                        rid,
                        1,
                        "proposer",
                        j,
                        m,
                        m.split("/")[1],
                        "{}",
                        " ".join(sentence(rng, 12) for _ in range(5)),
                        "ok",
                        None,
                        created,
                        created,
                        0.0,
                        rng.uniform(0.5, 4),
                        rng.uniform(0.1, 1),
                        100,
                        80,
                        0.0003,
                        1,
                        rng.random() / 3,
                        int(j == 0),
                    )
                )
            calls.append(
                (
                    rid,
                    2,
                    "aggregator",
                    0,
                    agg,
                    agg.split("/")[1],
                    "{}",
                    final or "",
                    status,
                    None,
                    created,
                    created,
                    2.0,
                    rng.uniform(1, 5),
                    rng.uniform(0.1, 1),
                    300,
                    60,
                    0.0003,
                    1,
                    None,
                    None,
                )
            )
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO runs (id, created_at, ended_at, name, prompt, status, layers, n_proposers, "
            "proposers, aggregator, final_text, tokens_in, tokens_out, cost_usd, wall_s, "
            "config_json, pid, conversation_id, turn) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            runs,
        )
        conn.executemany(
            "INSERT INTO calls (run_id, layer, role, idx, model, label, params_json, text, status, "
            "error, started_at, ended_at, start_s, latency_s, ttft_s, tokens_in, tokens_out, "
            "cost_usd, attempts, share, main_source) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            calls,
        )
        conn.execute("COMMIT")
    # The conversation list's rows, as the store keeps them (title = the first turn's prompt).
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO conversations (id, title, created_at, updated_at, n_turns, last_status, "
        "models, tokens_in, tokens_out, cost_usd) "
        "SELECT conversation_id, (SELECT substr(prompt, 1, 200) FROM runs f WHERE "
        "f.conversation_id = r.conversation_id AND f.turn = 1), min(created_at), "
        "max(coalesce(ended_at, created_at)), count(*), (SELECT status FROM runs l WHERE "
        "l.conversation_id = r.conversation_id ORDER BY turn DESC LIMIT 1), "
        "(SELECT proposers || ', ' || aggregator FROM runs l WHERE l.conversation_id = "
        "r.conversation_id ORDER BY turn DESC LIMIT 1), sum(tokens_in), sum(tokens_out), "
        "sum(cost_usd) FROM runs r GROUP BY conversation_id"
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    print(f"generated {n_runs:,} runs in {time.monotonic() - t0:.1f} s", file=sys.stderr)


def _has_conversations(path: Path) -> bool:
    """Made by this generator (runs grouped in conversations), not by one before m006."""
    return Store(path).db.execute("SELECT max(turn) FROM runs").fetchone()[0] > 1


def ensure_db(path: Path, n_runs: int) -> Store:
    """The generated database at `path`, made (again) unless it already holds `n_runs` runs."""
    if not path.exists() or Store(path).count_runs() != n_runs or not _has_conversations(path):
        path.unlink(missing_ok=True)
        generate(path, n_runs)
    return Store(path)


def timed(fn, repeats: int = 7) -> float:
    fn()  # warm the page cache
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--db", default=DEFAULT_DB)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    path = Path(args.db)
    store = ensure_db(path, args.runs)
    cases = {
        "first page, no filter (50 rows)": lambda: store.search_runs(limit=50),
        "page 200 (offset 10,000)": lambda: store.search_runs(limit=50, offset=10_000),
        "search a common word ('water')": lambda: store.search_runs("water", limit=50),
        "search two words ('orbit treaty')": lambda: store.search_runs("orbit treaty", limit=50),
        "search a phrase with quotes and operators": lambda: store.search_runs(
            '"tide" OR moon*', limit=50
        ),
        "search with no match": lambda: store.search_runs("zebra", limit=50),
        "filter by model": lambda: store.search_runs(model="local/smollm2-135m", limit=50),
        "filter by status + date range": lambda: store.search_runs(
            status="failed", since="2026-03-01", until="2026-04-01", limit=50
        ),
        "count for paging ('water', capped at 10,000)": lambda: store.count_matching("water"),
        "count all (exact)": lambda: store.count_matching(cap=None),
        "count with a model filter (capped)": lambda: store.count_matching(
            model="local/smollm2-135m"
        ),
        "open one run": lambda: store.get_run(store.search_runs(limit=1, offset=5000)[0].id),
    }
    rows = ["| query | median (ms) | ratio to 100 ms |", "|---|---|---|"]
    worst = 0.0
    for name, fn in cases.items():
        ms = timed(fn)
        worst = max(worst, ms / 100)
        rows.append(f"| {name} | {ms:.1f} | {ms / 100:.2f} |")
    body = (
        f"{store.count_runs():,} runs (4 calls each) in one SQLite file, median of 7 after a warm-up, "
        f"one process.\n\n" + "\n".join(rows) + f"\n\nWorst ratio: **{worst:.2f}** (target < 1)."
    )
    print(body)
    if args.write:
        write_section("History store at 100,000 runs (bench/store.py)", body)


if __name__ == "__main__":
    main()
