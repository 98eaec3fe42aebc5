"""A long conversation: opening it in Chromium, building its history, searching conversations.

    .venv/bin/python bench/conversation.py [--turns 50] [--skip-browser] [--skip-search] [--write]

(a) A `--turns`-turn conversation (3 proposers a turn, ~150-word answers, a final answer made of
    their sentences plus new ones, as the aggregator writes them) is written straight into a
    fresh store: no model is called. Then Chromium opens it on the Run page (`?conversation=`)
    and on History (`History?conversation=`) and the time from navigation until the last turn
    is on screen (its header, and its final answer with highlights) is measured, against a
    one-turn conversation in the same run: target < 1.5 s.
(b) Building the history for the next turn as the engine does it (`moa.conversation.sendable`,
    then per call the turn messages and the fitting to the model's window) with
    local/smollm2-135m's 2,048-token window, so most turns are left out: target < 20 ms a turn.
(c) History's conversation search at 100,000 runs (the database of bench/store.py): target
    < 100 ms.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.results import write_section  # noqa: E402
from bench.store import DEFAULT_DB, WORDS  # noqa: E402
from moa import conversation  # noqa: E402
from moa.config import ModelSpec, RunConfig  # noqa: E402
from moa.records import CallRecord, RunRecord  # noqa: E402
from moa.store import Store  # noqa: E402

TARGET_OPEN_S = 1.5
TARGET_HISTORY_MS = 20.0
TARGET_SEARCH_MS = 100.0
REPEATS = 3
TITLE = "Conversations (bench/conversation.py)"
PROPOSERS = [
    "openai/gpt-4o-mini",
    "anthropic/claude-3-5-haiku-20241022",
    "groq/llama-3.1-8b-instant",
]
AGGREGATOR = "openai/gpt-4o"
WINDOW_MODEL = "local/smollm2-135m"  # 2,048-token window in litellm's registry (moa.local)

OPENERS = ["The", "A", "Each", "Every", "Most", "Some", "This", "That", "Your", "Our"]
VERBS = ["needs", "keeps", "moves", "holds", "shapes", "follows", "changes", "explains", "sets"]


def sentence(rng: random.Random, n: int = 12) -> str:
    """A plain sentence of about `n` words, as a model would write one."""
    words = [rng.choice(OPENERS), rng.choice(WORDS), rng.choice(VERBS)]
    words += [rng.choice(WORDS) for _ in range(n - 3)]
    return " ".join(words) + "."


def answer(rng: random.Random, words: int = 150) -> str:
    """~`words` words in two or three paragraphs."""
    sentences = [sentence(rng, rng.randint(10, 16)) for _ in range(words // 13)]
    cut = len(sentences) // 2
    return " ".join(sentences[:cut]) + "\n\n" + " ".join(sentences[cut:])


def mixture() -> RunConfig:
    return RunConfig(
        proposers=[ModelSpec(model=m, label=m.split("/")[1]) for m in PROPOSERS],
        aggregator=ModelSpec(model=AGGREGATOR, label="gpt-4o"),
        name="bench-three",
    )


def make_turn(rng: random.Random, cid: str, turn: int, start: _dt.datetime) -> RunRecord:
    """One finished turn: 3 candidates and a final answer kept mostly from them."""
    created = start + _dt.timedelta(minutes=2 * turn)
    stamp = created.isoformat(timespec="milliseconds")
    ended = (created + _dt.timedelta(seconds=9)).isoformat(timespec="milliseconds")
    prompt = f"Turn {turn}: " + sentence(rng, rng.randint(8, 20)).rstrip(".") + "?"
    record = RunRecord(
        run_id=f"{int(created.timestamp() * 1000):012x}{turn:08x}",
        config=mixture(),
        prompt=prompt,
        status="ok",
        created_at=stamp,
        ended_at=ended,
        wall_s=9.0,
        conversation_id=cid,
        turn=turn,
    )
    texts = [answer(rng) for _ in PROPOSERS]
    for i, (model, text) in enumerate(zip(PROPOSERS, texts, strict=True)):
        record.calls.append(
            CallRecord(
                layer=1,
                role="proposer",
                index=i,
                model=model,
                label=model.split("/")[1],
                status="ok",
                text=text,
                started_at=stamp,
                ended_at=ended,
                start_s=0.0,
                latency_s=rng.uniform(2, 6),
                ttft_s=rng.uniform(0.2, 0.9),
                tokens_in=200 + 400 * turn,
                tokens_out=200,
                cost_usd=0.0004,
                attempts=1,
            )
        )
    # The aggregator keeps sentences from each candidate and writes a few of its own.
    pool = [s.strip() + "." for t in texts for s in t.replace("\n\n", " ").split(".") if s.strip()]
    kept = rng.sample(pool, 8) + [sentence(rng, 14) for _ in range(3)]
    rng.shuffle(kept)
    final = " ".join(kept[:6]) + "\n\n" + " ".join(kept[6:])
    record.calls.append(
        CallRecord(
            layer=2,
            role="aggregator",
            index=0,
            model=AGGREGATOR,
            label="gpt-4o",
            status="ok",
            text=final,
            started_at=stamp,
            ended_at=ended,
            start_s=6.0,
            latency_s=3.0,
            ttft_s=0.4,
            tokens_in=900 + 400 * turn,
            tokens_out=220,
            cost_usd=0.003,
            attempts=1,
        )
    )
    return record


def build(store: Store, turns: int, seed: int = 7) -> str:
    """A `turns`-turn conversation in `store`, written as finished runs; its id."""
    rng = random.Random(seed + turns)
    start = _dt.datetime(2026, 11, 1, 9, 0, tzinfo=_dt.UTC) + _dt.timedelta(days=turns)
    cid = f"c{int(start.timestamp() * 1000):012x}{turns:08x}"
    for t in range(1, turns + 1):
        store.save_run(make_turn(rng, cid, t, start))
    return cid


# ---------------------------------------------------------------- (a) opening it in Chromium


def open_time(page, url: str, last_run: str, n_turns: int) -> float:
    """Navigation → the last turn's header and its highlighted final answer are on the page
    (one final-answer card per turn: the older turns' folded ones, then the last turn's)."""
    t = time.perf_counter()
    page.goto(url)
    page.wait_for_function(
        """([rid, n]) => document.querySelector(
                `.moa-runhead:not(.moa-collapsed)[data-run='${rid}']`) !== null
            && document.querySelectorAll('.moa-final .moa-seg:first-child').length >= n""",
        arg=[last_run, n_turns],
        timeout=120_000,
        polling=20,
    )
    elapsed = time.perf_counter() - t
    head = page.locator(f".moa-runhead:not(.moa-collapsed)[data-run='{last_run}']").first
    assert head.is_visible(), "the last turn is on the page but not visible"
    return elapsed


def dom_size(page) -> dict[str, int]:
    return page.evaluate(
        "() => ({elements: document.querySelectorAll('*').length,"
        " finals: document.querySelectorAll('.moa-final').length,"
        " plots: document.querySelectorAll('.js-plotly-plot').length})"
    )


def bench_browser(turns: int) -> tuple[list[str], float, dict]:
    from playwright.sync_api import sync_playwright

    from tests.appserver import AppServer, launch_chromium

    tmp = Path(tempfile.mkdtemp(prefix="moa-bench-conv-"))
    db = tmp / "moa.db"
    store = Store(db)
    t = time.perf_counter()
    long_id = build(store, turns)
    made_s = time.perf_counter() - t
    short_id = build(store, 1)
    last = {cid: store.get_conversation(cid).turns[-1].run_id for cid in (long_id, short_id)}
    samples: dict[tuple[str, str], list[float]] = {}
    sizes = {}
    env = {"MOA_DB": str(db), "MOA_PRESET": ""}
    with sync_playwright() as pw, AppServer(env) as server:
        server.wait_healthy()
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        pages = {"Run page": "", "History": "History"}
        first = {}
        for where, path in pages.items():  # the server's first open of each page pays imports
            first[where] = open_time(
                page, f"{server.url}{path}?conversation={long_id}", last[long_id], turns
            )
        for _ in range(REPEATS):
            for where, path in pages.items():
                for cid in (long_id, short_id):
                    url = f"{server.url}{path}?conversation={cid}"
                    n = turns if cid == long_id else 1
                    samples.setdefault((where, cid), []).append(open_time(page, url, last[cid], n))
                    if cid == long_id and where not in sizes:
                        sizes[where] = dom_size(page)
        browser.close()
    rows = [
        f"| page | {turns} turns, median (s) | worst (s) | 1 turn, median (s) | "
        f"{turns} turns / 1 turn | ratio to {TARGET_OPEN_S} s | first open after start (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    worst = 0.0
    for where in pages:
        long, short = samples[(where, long_id)], samples[(where, short_id)]
        med, one = statistics.median(long), statistics.median(short)
        worst = max(worst, med / TARGET_OPEN_S)
        rows.append(
            f"| {where} (`{pages[where]}?conversation=`) | {med:.2f} | {max(long):.2f} | "
            f"{one:.2f} | {med / one:.2f} | {med / TARGET_OPEN_S:.2f} | {first[where]:.2f} |"
        )
    info = {"made_s": made_s, "sizes": sizes}
    return rows, worst, info


# ---------------------------------------------------------------- (b) building the history


def bench_history(turns: int) -> tuple[list[str], float]:
    from moa import llm

    tmp = Path(tempfile.mkdtemp(prefix="moa-bench-hist-"))
    store = Store(tmp / "moa.db")
    cid = build(store, turns)
    conv = store.get_conversation(cid)
    llm.litellm()  # imported once per process, long before any turn
    window = conversation._window(WINDOW_MODEL)
    assert window == 2048, f"{WINDOW_MODEL} window is {window}, expected 2,048"
    prompt = "Now make it shorter, and explain point 2 again."
    head = [{"role": "system", "content": "You are a helpful assistant."}]
    tail = [{"role": "user", "content": prompt}]

    def one_turn(n_calls: int = 4) -> list[int]:
        """What a turn does before its calls: sendable, then each call's messages fitted."""
        history = conversation.sendable(conv.runs)
        left = []
        for slot in range(n_calls):  # 3 proposers + the aggregator, all the small model
            pairs = conversation.turn_messages(history, "final", slot if slot < 3 else None)
            fitted = conversation.fit(WINDOW_MODEL, head, pairs, tail, 512)
            left.append(len(fitted.left_out))
        return left

    def timed(fn, clear: bool) -> float:
        if clear:
            conversation._count.cache_clear()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1000

    left = one_turn()
    cold = [timed(one_turn, clear=True) for _ in range(REPEATS)]
    warm = [timed(one_turn, clear=False) for _ in range(REPEATS)]
    # The new turn's own messages the engine counts anyway, for scale: one fit with no history.
    none = [
        timed(lambda: conversation.fit(WINDOW_MODEL, head, [], tail, 512), clear=False)
        for _ in range(REPEATS)
    ]
    load = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        store.get_conversation(cid)
        load.append((time.perf_counter() - t) * 1000)
    rows = [
        "| step, turn "
        f"{turns + 1} (history of {turns} turns, 4 calls on a 2,048-token model) | median (ms) | "
        f"ratio to {TARGET_HISTORY_MS:g} ms |",
        "|---|---|---|",
        f"| sendable + fit, token counts not cached (a fresh process) | {statistics.median(cold):.1f} "
        f"| {statistics.median(cold) / TARGET_HISTORY_MS:.2f} |",
        f"| sendable + fit, counts cached by the turns before (the usual case) | "
        f"{statistics.median(warm):.2f} | {statistics.median(warm) / TARGET_HISTORY_MS:.2f} |",
        f"| reading the conversation from the store (`Store.get_conversation`) | "
        f"{statistics.median(load):.1f} | {statistics.median(load) / TARGET_HISTORY_MS:.2f} |",
        f"| for scale: fitting a call with no history | {statistics.median(none):.3f} | — |",
    ]
    note = f"Turns left out per call: {left} (of {turns}; the window holds the newest few)."
    worst = max(statistics.median(cold), statistics.median(warm)) / TARGET_HISTORY_MS
    return rows + ["", note], worst


# ---------------------------------------------------------------- (c) conversation search


def bench_search(db: str, n_runs: int) -> tuple[list[str], float, str]:
    from bench.store import ensure_db, timed

    store = ensure_db(Path(db), n_runs)
    n_conv = store.count_conversations(cap=None)
    cases = {
        "list, first page (50 conversations)": lambda: store.search_conversations(limit=50),
        "list, page 200 (offset 9,950)": lambda: store.search_conversations(limit=50, offset=9_950),
        "search a common word ('water')": lambda: store.search_conversations("water", limit=50),
        "search a common word, page 200": lambda: store.search_conversations(
            "water", limit=50, offset=9_950
        ),
        "search a rare word ('zebra', no match)": lambda: store.search_conversations(
            "zebra", limit=50
        ),
        "search two words ('orbit treaty')": lambda: store.search_conversations(
            "orbit treaty", limit=50
        ),
        "filter by model": lambda: store.search_conversations(model="local/smollm2-135m", limit=50),
        "filter by status + date range": lambda: store.search_conversations(
            status="failed", since="2026-03-01", until="2026-04-01", limit=50
        ),
        "count all": lambda: store.count_conversations(),
        "count 'water' (capped at 10,000)": lambda: store.count_conversations("water"),
        "count 'zebra'": lambda: store.count_conversations("zebra"),
        "count with a model filter (capped)": lambda: store.count_conversations(
            model="local/smollm2-135m"
        ),
        "open a 3-turn conversation": lambda: store.get_conversation(
            store.search_conversations(limit=1, offset=5000)[0].id
        ),
    }
    rows = [f"| query | median (ms) | ratio to {TARGET_SEARCH_MS:g} ms |", "|---|---|---|"]
    worst = 0.0
    for name, fn in cases.items():
        ms = timed(fn)
        worst = max(worst, ms / TARGET_SEARCH_MS)
        rows.append(f"| {name} | {ms:.1f} | {ms / TARGET_SEARCH_MS:.2f} |")
    what = f"{store.count_runs():,} runs in {n_conv:,} conversations"
    return rows, worst, what


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=50)
    ap.add_argument("--runs", type=int, default=100_000, help="runs in the search database")
    ap.add_argument("--db", default=DEFAULT_DB, help="the search database (bench/store.py)")
    ap.add_argument("--skip-browser", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--write", action="store_true", help=f"write bench/RESULTS.md § {TITLE}")
    args = ap.parse_args()
    parts = []
    if not args.skip_browser:
        rows, worst, info = bench_browser(args.turns)
        sizes = "; ".join(
            f"{where}: {s['elements']:,} elements, {s['finals']} final-answer cards, "
            f"{s['plots']} charts"
            for where, s in info["sizes"].items()
        )
        parts.append(
            f"### Opening a {args.turns}-turn conversation in Chromium\n\n"
            f"{args.turns} turns × (3 proposers of ~150 words + a final answer), written into a "
            f"fresh store in {info['made_s']:.1f} s. From navigation until the last turn's header "
            f"and highlighted final answer are visible; median of {REPEATS} after one open per "
            f"page (the first open after the server starts is shown apart: it pays the imports). "
            f"A 1-turn conversation is opened in the same runs for the A/B ratio.\n\n"
            + "\n".join(rows)
            + f"\n\nPage size after opening ({args.turns} turns): {sizes}.\n\n"
            f"Worst median ratio: **{worst:.2f}** (target < 1)."
        )
    rows, worst = bench_history(args.turns)
    parts.append(
        f"### Building the history for turn {args.turns + 1}\n\n" + "\n".join(rows) + "\n\n"
        f"Worst ratio: **{worst:.2f}** (target < 1)."
    )
    if not args.skip_search:
        rows, worst, what = bench_search(args.db, args.runs)
        parts.append(
            f"### Conversation search at {what} (History)\n\n"
            "The database of `bench/store.py` (runs grouped into conversations of 1–5 turns); "
            "median of 7 after a warm-up, one process.\n\n"
            + "\n".join(rows)
            + f"\n\nWorst ratio: **{worst:.2f}** (target < 1)."
        )
    body = "\n\n".join(parts)
    print(body)
    if args.write:
        write_section(TITLE, body)


if __name__ == "__main__":
    main()
