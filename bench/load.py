"""Load: 200 concurrent runs in one process, all logged to one SQLite file; optionally the app
with four browser sessions at once.

Engine load: N runs (3 proposers + aggregator, ~0.2 s to the first token, then ~30 words at
10 ms each) started together with `asyncio.gather` in one event loop, every event written to one
database through `StoreWriter`, against the loopback model server running in its own process
(so it does not share this process's GIL). Reported: wall time, runs/s, calls/s, run latency
p50/p95 against a run alone (the ratio), errors, and that every run is in the database; then the
same load without the store, and the time the store's writes held the event loop, to show what
SQLite costs.

Browser load (`--browser`): one app server, four browser sessions at once, five runs each (the
scenario of tests/test_load.py), against one session alone.

    .venv/bin/python bench/load.py [--runs 200] [--browser] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.results import write_section  # noqa: E402
from moa import engine  # noqa: E402
from moa.config import ModelSpec, RunConfig  # noqa: E402
from moa.store import Store, StoreWriter  # noqa: E402

PROPOSERS = ["p1", "p2", "p3"]
WORDS = 30
TTFT_S = 0.2
TOKEN_DELAY_S = 0.01
ALONE_REPEATS = 5

# The model server, in a child process: prints its base URL, serves until stdin closes.
SERVER = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from tests import fakeserver
# socketserver listens with a backlog of 5: hundreds of calls connecting at once would wait for
# SYN retransmits (1 s, 3 s) — a test-server artefact, not what a provider does.
fakeserver._QuietServer.request_queue_size = 1024
s = fakeserver.FakeServer().start()
for name in {[*PROPOSERS, "agg"]!r}:
    s.set(name, text=" ".join(f"{{name}}-word{{i}}" for i in range({WORDS})),
          delay_s={TTFT_S}, token_delay_s={TOKEN_DELAY_S})
print(s.base_url, flush=True)
sys.stdin.read()
"""


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def config(base_url: str) -> RunConfig:
    return RunConfig(
        proposers=[ModelSpec(model=f"openai/{m}", api_base=base_url, label=m) for m in PROPOSERS],
        aggregator=ModelSpec(model="openai/agg", api_base=base_url, label="agg"),
        name="load",
    )


class TimedWriter:
    """StoreWriter that counts its failures and the time its writes hold the event loop."""

    def __init__(self, store: Store) -> None:
        self.writer = StoreWriter(store)
        self.errors: list[str] = []
        self.busy_s = 0.0
        self.worst_s = 0.0
        self.writes = 0
        self.by_event: dict[str, float] = {}  # event type -> seconds spent handling it

    def __call__(self, event) -> None:
        t = time.perf_counter()
        try:
            self.writer(event)
        except Exception as e:
            self.errors.append(f"{type(e).__name__}: {e}")
        dt = time.perf_counter() - t
        if dt > 0.0002:  # an event that wrote (most do nothing: token deltas between flushes)
            self.writes += 1
        self.busy_s += dt
        self.worst_s = max(self.worst_s, dt)
        name = type(event).__name__
        self.by_event[name] = self.by_event.get(name, 0.0) + dt


async def _many(cfg: RunConfig, n: int, on_event) -> tuple[list, float]:
    t0 = time.monotonic()
    results = await asyncio.gather(
        *(
            engine.run(cfg, f"Load run {i}: how do tides work?", on_event=on_event, checked=True)
            for i in range(n)
        ),
        return_exceptions=True,
    )
    return results, time.monotonic() - t0


def engine_load(base_url: str, n: int, server_pid: int) -> dict:
    cfg = config(base_url)
    engine.check(cfg, "warm up")
    engine.run_sync(cfg, "warm up", checked=True)  # litellm's first-call setup, not timed
    alone = [
        engine.run_sync(cfg, f"Alone {i}: how do tides work?", checked=True).wall_s
        for i in range(ALONE_REPEATS)
    ]
    out: dict = {"alone_p50_s": statistics.median(alone)}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "load.db"
        store = Store(db)
        writer = TimedWriter(store)
        cpu0, server0 = time.process_time(), _cpu_s(server_pid)
        results, wall = asyncio.run(_many(cfg, n, writer))
        cpu, server_cpu = time.process_time() - cpu0, _cpu_s(server_pid) - server0
        crashed = [r for r in results if isinstance(r, BaseException)]
        records = [r for r in results if not isinstance(r, BaseException)]
        latencies = [r.wall_s for r in records]
        not_ok = [(r.run_id, r.status, r.error) for r in records if r.status != "ok"]
        stored = store.search_runs(limit=n + 10)
        calls_ok = store.db.execute("SELECT count(*) FROM calls WHERE status = 'ok'").fetchone()[0]
        integrity = store.db.execute("PRAGMA integrity_check").fetchone()[0]
        chunks = sum(c.tokens_out or 0 for r in records for c in r.calls)
        out |= {
            "runs": n,
            "cpu_s": cpu,
            "server_cpu_s": server_cpu,
            "chunks": chunks,
            "wall_s": wall,
            "runs_per_s": n / wall,
            "calls_per_s": n * 4 / wall,
            "p50_s": statistics.median(latencies),
            "p95_s": percentile(latencies, 0.95),
            "max_s": max(latencies),
            "errors": len(crashed) + len(not_ok) + len(writer.errors),
            "error_examples": [repr(e) for e in crashed[:3]] + not_ok[:3] + writer.errors[:3],
            "stored": len(stored),
            "stored_ok": sum(1 for s in stored if s.status == "ok"),
            "calls_ok": calls_ok,
            "integrity": integrity,
            "store_busy_s": writer.busy_s,
            "store_worst_ms": writer.worst_s * 1000,
            "store_writes": writer.writes,
            "store_by_event": {k: round(v, 3) for k, v in writer.by_event.items()},
            "db_bytes": db.stat().st_size + (db.with_name(db.name + "-wal").stat().st_size),
        }
        store.close()
    results, wall = asyncio.run(_many(cfg, n, None))
    bare = [r.wall_s for r in results if not isinstance(r, BaseException)]
    out |= {
        "bare_wall_s": wall,
        "bare_p50_s": statistics.median(bare),
        "bare_p95_s": percentile(bare, 0.95),
        "bare_errors": sum(1 for r in results if isinstance(r, BaseException) or r.status != "ok"),
    }
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[1])
    out, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - out
        out |= frontier
    return out


class CpuMeter:
    """CPU seconds used by the app server and by everything else this process started
    (Playwright's driver and Chromium), sampled while they run (exited processes are kept)."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.seen: dict[int, float] = {}

    def sample(self) -> None:
        for pid in _descendants(os.getpid()):
            self.seen[pid] = max(self.seen.get(pid, 0.0), _cpu_s(pid))

    def split(self) -> tuple[float, float]:
        server = self.seen.get(self.server_pid, 0.0)
        return server, sum(self.seen.values()) - server


def browser_load() -> dict:
    from moa import config as config_mod
    from tests import test_load as T
    from tests.appserver import AppServer
    from tests.fakeserver import FakeServer

    out = {}
    fake = FakeServer().start()
    T.answers(fake)
    try:
        for sessions in (1, T.SESSIONS):
            with tempfile.TemporaryDirectory() as tmp:
                presets = Path(tmp) / "presets"
                config_mod.save_preset(
                    T.make_config(fake, T.PROPOSERS, name="Load"), "load", presets
                )
                env = {
                    "MOA_DB": str(Path(tmp) / "moa.db"),
                    "MOA_PRESETS_DIR": str(presets),
                    "MOA_PRESET": "",
                }
                with AppServer(env) as server:
                    server.wait_healthy(60)
                    # One run first, so litellm's import and first call (~5 s of CPU, once per
                    # server process) are not counted: a warm server, as users mostly meet it.
                    T.drive_sessions(server.url, 1, 1)
                    meter = CpuMeter(server.proc.pid)
                    meter.sample()
                    base_server, base_browser = meter.split()
                    stop = threading.Event()

                    def sampler(meter=meter, stop=stop) -> None:
                        while not stop.wait(0.5):
                            meter.sample()

                    threading.Thread(target=sampler, daemon=True).start()
                    t0, own0 = time.monotonic(), time.process_time()
                    try:
                        done = T.drive_sessions(server.url, sessions, T.RUNS)
                    finally:
                        stop.set()
                    stats = T.summary(done, time.monotonic() - t0)
                    meter.sample()
                    cpu_server, cpu_browser = meter.split()
                    stats["cpu_server_s"] = cpu_server - base_server
                    stats["cpu_browser_s"] = cpu_browser - base_browser
                    stats["cpu_bench_s"] = time.process_time() - own0
                    stats["locked"] = b"database is locked" in server.log
                    stats["saved_ok"] = -1 + sum(  # the warm-up run is not counted
                        1 for r in Store(env["MOA_DB"]).search_runs(limit=100) if r.status == "ok"
                    )
                out[sessions] = stats
    finally:
        fake.stop()
    return out


def full_gc_ms() -> float:
    """One full garbage collection with what the app server has loaded (litellm, Streamlit,
    plotly): Streamlit does one after every script run unless `runner.postScriptGC` is off."""
    import gc

    import plotly.graph_objects  # noqa: F401
    import streamlit  # noqa: F401

    from moa import export  # noqa: F401

    times = []
    for _ in range(3):
        t = time.perf_counter()
        gc.collect(2)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--browser", action="store_true", help="also the 4-browser-session load")
    ap.add_argument("--write", action="store_true", help="write bench/RESULTS.md's section")
    args = ap.parse_args()

    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        base_url = server.stdout.readline().strip()
        load_before = load_average()
        e = engine_load(base_url, args.runs, server.pid)
        load_after = load_average()
    finally:
        server.stdin.close()
        server.wait(10)
    e["gc_ms"] = full_gc_ms()
    print(json.dumps(e, indent=2, default=str), file=sys.stderr)
    ratio50, ratio95 = e["p50_s"] / e["alone_p50_s"], e["p95_s"] / e["alone_p50_s"]
    lines = [
        f"{args.runs} runs started at once in one process (`asyncio.gather` of `engine.run`), each "
        f"3 proposers + aggregator against the loopback server in its own process ({TTFT_S:g} s "
        f"to the first token, then {WORDS} words {TOKEN_DELAY_S * 1000:g} ms apart), every "
        "event written to one SQLite file through `StoreWriter`. Load average (1/5/15 min) "
        f"before {load_before}, after {load_after}.",
        "",
        "| what | figure |",
        "|---|---|",
        f"| a run alone (median of {ALONE_REPEATS}) | {e['alone_p50_s']:.3f} s |",
        f"| wall time, {args.runs} runs | {e['wall_s']:.2f} s |",
        f"| throughput | **{e['runs_per_s']:.1f} runs/s**, {e['calls_per_s']:.1f} calls/s |",
        f"| run latency under load p50 / p95 / max | {e['p50_s']:.2f} / {e['p95_s']:.2f} / "
        f"{e['max_s']:.2f} s |",
        f"| latency ratio to a run alone, p50 / p95 | **{ratio50:.2f}x** / {ratio95:.2f}x |",
        f"| errors | {e['errors']} |",
        f"| CPU of this process (engine, litellm, store) | {e['cpu_s']:.1f} s = "
        f"{e['cpu_s'] / e['wall_s']:.2f} of a core over the wall time; "
        f"{e['cpu_s'] * 1000 / e['chunks']:.2f} ms per streamed token ({e['chunks']:,} tokens, "
        f"{e['chunks'] / e['wall_s']:,.0f} tokens/s) |",
        f"| CPU of the loopback model server | {e['server_cpu_s']:.1f} s |",
        f"| in the database | {e['stored']} runs ({e['stored_ok']} ok), {e['calls_ok']} calls "
        f"ok, integrity_check {e['integrity']} |",
        f"| time the store's writes held the event loop | {e['store_busy_s']:.2f} s in all "
        f"({e['store_writes']} writes; worst {e['store_worst_ms']:.1f} ms; of it "
        f"{e['store_by_event'].get('RunFinished', 0):.2f} s in `finish_run`, which also "
        "computes the attribution shares) |",
        f"| the same {args.runs} runs without the store | wall {e['bare_wall_s']:.2f} s, p50 / "
        f"p95 {e['bare_p50_s']:.2f} / {e['bare_p95_s']:.2f} s, {e['bare_errors']} errors |",
    ]
    per_token_ms = e["cpu_s"] * 1000 / e["chunks"]
    lines += [
        "",
        f"Where the time goes: the process is CPU-bound on litellm's work per streamed token "
        f"(~{per_token_ms:.1f} ms here, openai SDK chunk objects and litellm's stream wrapper), "
        f"so one process streams at most ~{1000 / per_token_ms:,.0f} tokens/s on a free core; "
        "all runs progress together and finish together, hence latency ~ wall time. The "
        f"store is not the bottleneck: without it the same runs took {e['bare_wall_s']:.1f} s "
        f"against {e['wall_s']:.1f} s, and its writes held the event loop "
        f"{e['store_busy_s'] / e['wall_s']:.0%} of the wall time. The per-provider limit (16 "
        "calls at once) is per run, so it does not cap concurrent runs; the loopback server "
        f"used {e['server_cpu_s']:.1f} s of CPU in its own process.",
        "",
        f"A full garbage collection in a process with litellm, Streamlit and plotly loaded "
        f"takes {e['gc_ms']:.0f} ms, holding the GIL. Streamlit does one after every script "
        "run (`runner.postScriptGC`): it stalls every other session's streams, and with four "
        "sessions it delayed the redraw after a run by 0.26-0.76 s (0.002-0.06 s without it; "
        "timed once on 2026-11-22 by wrapping `moa.ui.live.follow` in the app server). "
        "`.streamlit/config.toml` turns it off.",
    ]
    if e["error_examples"]:
        lines += ["", f"Errors, first few: {e['error_examples']}"]
    if args.browser:
        b = browser_load()
        print(json.dumps(b, indent=2), file=sys.stderr)
        one, four = b[1], b[max(b)]
        lines += [
            "",
            "### Four browser sessions on one app server",
            "",
            "Each session is a Playwright browser context in one headless Chromium (all on the "
            "same 2 cores), doing 5 runs in a row on the Run page (3 proposers + aggregator, "
            "~25 words each at 10 ms), on a warm server (one run before, so litellm's import "
            "and first call are not in the figures). Timed in the page: Ctrl+Enter to the final "
            "answer shown done, and from then to the Run button enabled again.",
            "",
            "| sessions | runs saved ok | answer p50 / p95 (s) | first run's answer, worst (s) "
            "| later runs' answer p50 / p95 (s) | Run enabled again p50 / p95 / max (s) "
            "| wall (s) | 'database is locked' |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n, s in sorted(b.items()):
            lines.append(
                f"| {n} | {s['saved_ok']} of {s['runs']} | {s['answer_p50_s']:.2f} / "
                f"{s['answer_p95_s']:.2f} | {s['first_answer_max_s']:.2f} | "
                f"{s['warm_answer_p50_s']:.2f} / {s['warm_answer_p95_s']:.2f} | "
                f"{s['ready_p50_s']:.2f} / {s['ready_p95_s']:.2f} / {s['ready_max_s']:.2f} | "
                f"{s['wall_s']:.1f} | {'yes' if s['locked'] else 'no'} |"
            )
        lines += [
            "",
            "CPU seconds used during the runs, per run: the app server "
            + ", ".join(
                f"{s['cpu_server_s'] / s['runs']:.2f} ({n} session{'s' if n > 1 else ''})"
                for n, s in sorted(b.items())
            )
            + "; Chromium + Playwright "
            + ", ".join(f"{s['cpu_browser_s'] / s['runs']:.2f}" for _, s in sorted(b.items()))
            + "; the loopback model server and this script "
            + ", ".join(f"{s['cpu_bench_s'] / s['runs']:.2f}" for _, s in sorted(b.items()))
            + ".",
        ]
        lines += [
            "",
            f"Four sessions at once against one alone: answer p50 "
            f"**{four['answer_p50_s'] / one['answer_p50_s']:.2f}x**, Run enabled again p50 "
            f"{four['ready_p50_s'] / one['ready_p50_s']:.2f}x. Load average after: "
            f"{load_average()}.",
        ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("Load (bench/load.py)", text)


if __name__ == "__main__":
    main()
