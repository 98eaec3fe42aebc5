"""Embedded models: batched vs sequential proposers, our provider vs raw llama-cpp-python, runs.

1. The `local-quick` preset's proposer stage (three SmolLM2 samples) with the local calls
   decoded together in one batch (the default) against one at a time (`local` limit 1),
   alternating in one process: prints the ratio (target <= 0.5).
2. Tokens/s of one call through our litellm provider vs raw llama-cpp-python: same prompt,
   seed, temperature 0 and max_tokens on both sides, alternating (target: ours >= 0.95 of raw).
3. Whole `local-quick` and `local-demo` runs through `moa.engine`, with the moment each card's
   first token arrived.

    .venv/bin/python bench/local.py [--write] [--rounds N] [--ab-rounds N] [--ab-only]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.results import write_section  # noqa: E402
from moa import local  # noqa: E402
from moa import local_weights as lw  # noqa: E402

MESSAGES = [{"role": "user", "content": "Explain how a bicycle gear system works, step by step."}]
MAX_TOKENS, SEED = 128, 1234
RUN_PROMPT = "Why is the sky blue? Answer in a few sentences."


@dataclass
class Call:
    tokens: int
    wall_s: float
    cpu_s: float  # CPU time of the whole process (all threads) during the call
    text: str
    caller_cpu_s: float = 0.0  # CPU of the calling thread: litellm's stream handling (ours)


def ours(lt, model_id: str) -> Call:
    """One streamed call through litellm."""
    local.get_llama(model_id).reset()
    started, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
    stream = lt.completion(
        model=model_id,
        messages=MESSAGES,
        temperature=0,
        max_tokens=MAX_TOKENS,
        seed=SEED,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, tokens = [], 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        usage = getattr(chunk, "usage", None)
        if usage:
            tokens = usage.completion_tokens
    wall, cpu, own = (
        time.perf_counter() - started,
        time.process_time() - cpu,
        time.thread_time() - own,
    )
    return Call(tokens, wall, cpu, "".join(parts), own)


def raw(model_id: str) -> Call:
    """The same call straight into llama-cpp-python, on the very same loaded model.

    Run on a fresh thread, as our provider runs its generations: under CPU contention the
    calling thread's OpenMP team behaved differently from a new thread's, which would skew the
    comparison either way.
    """
    llama = local.get_llama(model_id)
    llama.reset()
    out: dict = {}

    def call() -> None:
        out.update(
            llama.create_chat_completion(
                messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS, seed=SEED
            )
        )

    started, cpu = time.perf_counter(), time.process_time()
    worker = threading.Thread(target=call)
    worker.start()
    worker.join()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Call(
        out["usage"]["completion_tokens"], wall, cpu, out["choices"][0]["message"]["content"]
    )


def compare(lt, model_id: str, rounds: int) -> list[str]:
    load_started = time.perf_counter()
    local.get_llama(model_id)  # verify (or join) + load, timed apart from generation
    first_load = time.perf_counter() - load_started
    ours(lt, model_id)  # warm-up: first-call setup in litellm and llama.cpp
    raw(model_id)
    mine, theirs, wall_ratios, cpu_ratios, decode, caller = [], [], [], [], [], []
    for i in range(rounds):
        # Pairs, in alternating order, so drifting load from other processes hits both sides.
        if i % 2:
            b = raw(model_id)
            a = ours(lt, model_id)
        else:
            a = ours(lt, model_id)
            b = raw(model_id)
        decode.append(local.last_stats.tokens_per_s or 0.0)  # raw calls leave it alone
        if (a.tokens, a.text) != (b.tokens, b.text):
            print(
                f"warning: {model_id}: outputs differ ({a.tokens} vs {b.tokens})", file=sys.stderr
            )
        mine.append(a.tokens / a.wall_s)
        theirs.append(b.tokens / b.wall_s)
        wall_ratios.append(mine[-1] / theirs[-1])
        cpu_ratios.append((b.cpu_s / b.tokens) / (a.cpu_s / a.tokens))
        caller.append(a.caller_cpu_s / a.cpu_s)
    wall, cpu = statistics.median(wall_ratios), statistics.median(cpu_ratios)
    print(
        f"{model_id}: ours {statistics.median(mine):.1f} tok/s, raw {statistics.median(theirs):.1f}"
        f" tok/s; wall ratio {wall:.3f} {[round(r, 2) for r in wall_ratios]}; "
        f"CPU ratio {cpu:.3f} {[round(r, 3) for r in cpu_ratios]}; caller thread "
        f"{statistics.median(caller):.1%} of CPU; load {first_load:.2f} s"
    )
    return [
        f"| `{model_id}` | {statistics.median(mine):.1f} | {statistics.median(theirs):.1f} "
        f"| **{wall:.3f}** ({min(wall_ratios):.2f}-{max(wall_ratios):.2f}) "
        f"| **{cpu:.3f}** ({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}) "
        f"| {statistics.median(caller):.1%} | {statistics.median(decode):.1f} | {first_load:.2f} |"
    ]


def join_line(model_id: str) -> str:
    """First-use cost of a split model: join its pieces into a scratch folder, hashing."""
    before = os.environ.get("MOA_MODELS_DIR")
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["MOA_MODELS_DIR"] = scratch
        try:
            started = time.perf_counter()
            path = local.weights_path(model_id)
            joined = time.perf_counter() - started
            size = path.stat().st_size
        finally:
            if before is None:
                del os.environ["MOA_MODELS_DIR"]
            else:
                os.environ["MOA_MODELS_DIR"] = before
    return (
        f"Joining `{model_id}` from its {len(local.MODELS[model_id].pieces)} pieces "
        f"({size / 1e6:.0f} MB, hashed while writing) takes {joined:.1f} s on first use."
    )


def _missing(cfg) -> str | None:
    for spec in cfg.models():
        try:
            lw._find_pieces(local.resolve(spec.model))
        except local.LocalModelError as e:
            return e.message
    return None


def _first_tokens(record) -> list[float]:
    """Seconds from the run's start to each proposer's first token (None: it sent none)."""
    return [
        round(c.start_s + c.ttft_s, 2)
        for c in record.calls
        if c.role == "proposer" and c.ttft_s is not None
    ]


def _stage(record) -> tuple[float, int]:
    """Wall time of the proposer stage (first call start to last call end) and its tokens."""
    calls = [c for c in record.calls if c.role == "proposer"]
    start = min(c.start_s for c in calls)
    end = max(c.start_s + c.latency_s for c in calls)
    return end - start, sum(c.tokens_out or 0 for c in calls)


class _Seeded:
    """Every local call gets a seed fixed by its messages and the round: crc32(messages) + round.

    The engine sends no seed, so each sample would draw its own at random and the two modes
    would generate different answers of different lengths. With these seeds a proposer's call is
    the same in both modes, and a seeded sample gives the same tokens batched or alone
    (tests/test_local.py), so both modes do the very same work (checked every round). The seeds
    follow from the prompts and the round number; they are not chosen.
    """

    def __init__(self) -> None:
        self.round = 0
        self._prepare = local.prepare

    def prepare(self, model_id, messages, params=None, timeout=None):
        params = dict(params or {})
        if params.get("seed") is None:
            params["seed"] = (zlib.crc32(repr(messages).encode()) + self.round) % 2**31
        return self._prepare(model_id, messages, params, timeout)

    def __enter__(self) -> _Seeded:
        local.prepare = self.prepare  # the provider looks `prepare` up at each call
        return self

    def __exit__(self, *_) -> None:
        local.prepare = self._prepare


def batched_vs_sequential(rounds: int) -> list[str]:
    """The local-quick proposer stage, batched (default limits) vs one call at a time."""
    from moa import config, engine
    from moa import events as ev

    cfg = config.load_preset("local-quick")
    for spec in cfg.models():
        local.get_llama(spec.model)
    modes = {
        "batched": engine.Limits(),
        "sequential": engine.Limits(per_provider={"local": 1}),
    }
    engine.run_sync(cfg, RUN_PROMPT, limits=modes["batched"])  # warm-up
    stage: dict[str, list[float]] = {m: [] for m in modes}
    cpu_per_token: dict[str, list[float]] = {m: [] for m in modes}
    per_token: dict[str, list[float]] = {m: [] for m in modes}
    last_first: dict[str, list[float]] = {m: [] for m in modes}
    tokens: dict[str, list[int]] = {m: [] for m in modes}
    lengths: list[list[int]] = []
    ratios, same = [], 0
    seeded = _Seeded()
    for i in range(rounds):
        seeded.round = i
        order = list(modes) if i % 2 == 0 else list(reversed(modes))
        seconds, answers = {}, {}
        for mode in order:
            cpu: list[float] = []  # process CPU time at the run's start and at layer 1's end

            def clock(event, cpu=cpu) -> None:
                if isinstance(event, ev.RunStarted | ev.LayerFinished):
                    cpu.append(time.process_time())

            with seeded:
                record = engine.run_sync(cfg, RUN_PROMPT, limits=modes[mode], on_event=clock)
            if record.status != "ok":
                print(f"warning: {mode} run {record.status}: {record.error}", file=sys.stderr)
            wall, n = _stage(record)
            seconds[mode] = wall
            answers[mode] = [(c.text, c.tokens_out) for c in record.calls if c.role == "proposer"]
            stage[mode].append(wall)
            tokens[mode].append(n)
            per_token[mode].append(wall / max(n, 1))
            cpu_per_token[mode].append((cpu[1] - cpu[0]) / max(n, 1))
            last_first[mode].append(max(_first_tokens(record), default=float("nan")))
        if answers["batched"] == answers["sequential"]:
            same += 1
        else:
            print(f"warning: round {i + 1}: the modes' answers differ", file=sys.stderr)
        lengths.append([t or 0 for _, t in answers["sequential"]])
        ratios.append(seconds["batched"] / seconds["sequential"])
        print(
            f"round {i + 1}: batched {seconds['batched']:.2f} s, sequential "
            f"{seconds['sequential']:.2f} s, ratio {ratios[-1]:.3f}, answer lengths {lengths[-1]}"
        )
    med = statistics.median
    ratio = med(stage["batched"]) / med(stage["sequential"])
    token_ratio = med(per_token["batched"]) / med(per_token["sequential"])
    cpu_ratio = med(cpu_per_token["batched"]) / med(cpu_per_token["sequential"])
    print(f"local-quick proposer stage: batched/sequential = {ratio:.3f} (target <= 0.5)")
    rows = [
        f"| {mode} | {med(stage[mode]):.2f} ({min(stage[mode]):.2f}-{max(stage[mode]):.2f}) "
        f"| {med(tokens[mode]):.0f} | {1000 * med(per_token[mode]):.1f} "
        f"| {1000 * med(cpu_per_token[mode]):.1f} | {med(last_first[mode]):.2f} |"
        for mode in modes
    ]
    temps = "/".join(f"{p.temperature:g}" for p in cfg.proposers)
    limits = "/".join(sorted({str(p.max_tokens) for p in cfg.proposers}))
    return [
        f"`local-quick`'s proposer stage (three SmolLM2 135M samples, temperatures {temps}, "
        f"max_tokens {limits}) through `moa.engine.run_sync`, prompt {RUN_PROMPT!r}: the three "
        "calls decoded together in one llama.cpp batch (the default) vs one at a time (`local` "
        f"limit 1); {rounds} rounds in alternating order, one process, models loaded first. "
        "Stage = first proposer call's start to the last one's end. Same work in both modes: "
        "the bench gives every call a seed (crc32 of its messages + the round number; the engine "
        "itself sends none), and a seeded sample gives the same tokens batched or alone, so "
        f"each round's answers are identical in both modes (checked: {same} of {rounds} rounds).",
        "",
        "| mode | proposer stage (s) | tokens out | ms per token | CPU ms per token "
        "| last card's first token (s) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Batched / sequential, median stage time: **{ratio:.3f}** (per round: "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; target <= 0.5); per output token: "
        f"**{token_ratio:.3f}**; process CPU time per output token: **{cpu_ratio:.3f}**. "
        f"Answer lengths per round (tokens): "
        f"{'; '.join('/'.join(map(str, x)) for x in lengths)}: the batch runs only while "
        "several answers are unfinished, and the longest one ends alone. "
        f"Load average during the A/B: {_load()}.",
    ]


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg()) + " (1/5/15 min, 2 cores)"


def whole_run(preset: str) -> str | None:
    try:
        from moa import config, engine
    except ImportError as e:
        print(f"skipping the {preset} run: {e}", file=sys.stderr)
        return None
    cfg = config.load_preset(preset)
    missing = _missing(cfg)
    if missing:
        print(f"skipping the {preset} run: {missing}", file=sys.stderr)
        return None
    for spec in cfg.models():
        local.get_llama(spec.model)  # load first: time the run, not the loading
    record = engine.run_sync(cfg, RUN_PROMPT)
    calls = record.calls
    tokens = sum(c.tokens_out or 0 for c in calls)
    failed = [f"{c.label}: {c.error}" for c in calls if c.status != "ok"]
    firsts = _first_tokens(record)
    print(
        f"{preset}: {record.status} in {record.wall_s:.1f} s, {tokens} tokens out, "
        f"first tokens at {firsts} s {failed or ''}"
    )
    families = sorted({local.MODELS[c.model].family for c in calls if c.role == "proposer"})
    return (
        f"| `{preset}` | {len(cfg.proposers)} + 1 | {', '.join(families)} | {record.status} "
        f"| {record.wall_s:.1f} | {_stage(record)[0]:.1f} "
        f"| {', '.join(f'{t:.2f}' for t in firsts)} | {tokens} |"
    )


def main() -> None:
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 7
    ab_rounds = int(sys.argv[sys.argv.index("--ab-rounds") + 1]) if "--ab-rounds" in sys.argv else 4
    import litellm

    litellm.suppress_debug_info = True
    local.register(litellm)
    models = ["local/smollm2-135m"]
    try:
        lw._find_pieces(local.MODELS["local/qwen2.5-coder-0.5b"])
        models.append("local/qwen2.5-coder-0.5b")
    except local.LocalModelError as e:
        print(f"skipping Qwen 0.5B: {e.message}", file=sys.stderr)

    ab = batched_vs_sequential(ab_rounds)
    print("\n".join(ab))
    if "--write" in sys.argv:
        write_section("Local batching (bench/local.py)", "\n".join(ab))
    if "--ab-only" in sys.argv:
        return
    lines = [
        f"Streaming through litellm (`local/...` provider) vs `Llama.create_chat_completion` on "
        f"the same loaded model: temperature 0, seed {SEED}, max_tokens {MAX_TOKENS}, KV cache "
        f"reset before each call, both generating on a worker thread; {rounds} rounds of one "
        "call each, in alternating order. tok/s = completion tokens / wall time of the call "
        "(prompt evaluation included). Wall ratio = median over rounds of ours/raw tok/s; "
        "CPU ratio = median of raw/ours process CPU seconds per token (all threads), which "
        "other processes on the machine disturb less. Ranges in brackets. Target >= 0.95. "
        "Caller CPU = share of our call's CPU spent on the calling thread (litellm's stream "
        "handling; llama.cpp runs on our worker thread): the provider's overhead, which other "
        "processes barely affect.",
        "",
        "| model | ours (tok/s) | raw (tok/s) | wall ratio | CPU ratio | caller CPU "
        "| ours, decode only (tok/s) | first load (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model_id in models:
        lines += compare(lt=litellm, model_id=model_id, rounds=rounds)
        if model_id != "local/smollm2-135m":
            local.unload(model_id)

    smol = local.weights_path("local/smollm2-135m")
    started = time.perf_counter()
    lw._sha256_file(smol)  # what a first start (or a changed file) pays before loading
    hash_s = time.perf_counter() - started
    lines += [
        "",
        f"Verifying SmolLM2 (sha256 of {smol.stat().st_size / 1e6:.0f} MB) takes {hash_s:.2f} s "
        f"({smol.stat().st_size / 1e6 / hash_s:.0f} MB/s); later processes reuse the cached "
        "result until the file changes.",
    ]

    if "local/qwen2.5-coder-0.5b" in models:
        lines += ["", join_line("local/qwen2.5-coder-0.5b")]
    lines += [
        "",
        "`moa.local` sets `OMP_WAIT_POLICY=PASSIVE` (unless already set) before llama.cpp loads: "
        "with OpenMP's default spinning, generation slowed up to ~10x whenever other processes "
        "busied the 2 cores (SmolLM2 at 2-5 instead of 25-30 tok/s at load average 5).",
    ]

    runs = [r for r in map(whole_run, ("local-quick", "local-demo", "local-families")) if r]
    if runs:
        lines += [
            "",
            f"Whole runs through `moa.engine.run_sync` (models already loaded), prompt "
            f"{RUN_PROMPT!r}:",
            "",
            "| preset | calls | proposer families | status | wall (s) | proposer stage (s) "
            "| each card's first token (s after start) | tokens out |",
            "|---|---|---|---|---|---|---|---|",
            *runs,
        ]
    load = os.getloadavg()
    lines += [
        "",
        f"System load average during the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        "(1/5/15 min) on 2 cores; other processes share the CPU, so single runs vary.",
    ]
    print("\n".join(lines))
    if "--write" in sys.argv:
        write_section("Local models (bench/local.py)", "\n".join(lines))


if __name__ == "__main__":
    main()
