"""Embedded local models served to litellm as `local/...`: loading and batched generation.

How local calls run (the seam between `moa.engine` and this module):

- The engine lets up to `SEQUENCES` local calls run at once (its `local` per-provider limit);
  this module schedules them itself, on one thread, the decoder, which alone runs llama.cpp.
- Calls to the same model are sequences of one llama.cpp context with `SEQUENCES` KV streams
  (one `seq_id` each). Every step is one `llama_decode` of a batch holding the next token of
  every running sequence, plus prompt pieces of sequences that just arrived. Each sequence
  samples with its own chain (temperature, top_p, seed), and stops on its own (end of
  generation, a stop string, max_tokens, cancel, its deadline), leaving the batch at once.
- Different models take turns step by step (round robin), so every card streams from the start.
- Each sequence has its own KV stream (`kv_unified = False`) of the model's full context, so
  its attention reads exactly the cells it would read alone: at temperature 0 a batched call
  gives the same tokens as the same call run alone.
- `_gen_lock` is held for each decode step, not for a whole call: whatever else wants llama.cpp
  to itself (a reference call in the tests, unloading a model) takes it between two steps.
- Timings are each call's own: queued (submitted), started (got a KV stream), first token, end.
  Usage (prompt and completion tokens) is counted per sequence.

Weights (registry, joining, verification) live in `moa.local_weights`; the names are
re-exported here, so `moa.local` stays the one entry point for callers.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import ctypes
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# llama.cpp's CPU backend runs on OpenMP. By default idle OpenMP threads spin, and when other
# processes also want the 2 cores that spinning slowed generation ~10x in our measurements;
# sleeping instead costs nothing measurable when the machine is idle. libgomp reads this once,
# when llama_cpp first loads it, so it is set here, before any import of llama_cpp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from moa.local_weights import (  # noqa: E402  (re-exported: moa.local is the entry point)
    MODELS,
    PROVIDER,
    ROOT,
    VERIFIED_FILE,
    LocalModel,
    LocalModelError,
    LocalModelStatus,
    Piece,
    is_local,
    model_status,
    models_dir,
    resolve,
    weights_path,
)

if TYPE_CHECKING:  # llama_cpp and litellm are heavy: imported lazily, on first use
    import llama_cpp

__all__ = [
    "MODELS",
    "PROVIDER",
    "ROOT",
    "VERIFIED_FILE",
    "LocalModel",
    "LocalModelError",
    "LocalModelStatus",
    "Piece",
    "is_local",
    "model_status",
    "models_dir",
    "resolve",
    "weights_path",
]

LLAMA_CPP_REQUIREMENT = "llama-cpp-python==0.3.36"
DEFAULT_TEMPERATURE = 0.7
# llama-cpp-python's own defaults for chat completions; kept so our output matches theirs.
TOP_K, TOP_P, MIN_P, PENALTY_LAST_N = 40, 0.95, 0.05, 64
# Except the repetition penalty (llama.cpp repeat_penalty, over the last PENALTY_LAST_N
# tokens): at 1.0 the 135M model repeated one sentence three times in a final answer.
# bench/stop_reasons.py measures what repeating is left.
REPEAT_PENALTY = 1.1
SEQUENCES = 4  # calls of one model decoded together (KV streams per loaded model)
N_BATCH = 512  # tokens in one decode step, all sequences together (long prompts go in pieces)
# The `Llama` object's own context is used only for reference calls (tests, bench) and for
# tokenizing: small, since generation runs in the batched context.
REFERENCE_CTX = 512


# ---------------------------------------------------------------- loaded models


class _TokenText:
    """Token id -> bytes with a buffer big enough for any piece, cached per token."""

    def __init__(self, llama: llama_cpp.Llama) -> None:
        import llama_cpp

        self._vocab = llama._model.vocab
        self._to_piece = llama_cpp.llama_token_to_piece
        self._buf = ctypes.create_string_buffer(256)
        self._cache: dict[int, bytes] = {}

    def __call__(self, token: int) -> bytes:
        piece = self._cache.get(token)
        if piece is None:
            n = self._to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
            if n < 0:  # longer than the buffer: llama.cpp reports the size it needs
                self._buf = ctypes.create_string_buffer(-n)
                n = self._to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
            piece = self._cache[token] = self._buf.raw[:n]
        return piece


@dataclass
class _Loaded:
    """A loaded model with what generation needs next to it."""

    llama: llama_cpp.Llama
    formatter: Any  # llama_chat_format.Jinja2ChatFormatter built from the GGUF's template
    token_text: _TokenText
    ctx: Any  # llama_cpp._internals.LlamaContext with SEQUENCES KV streams (the decoder's)
    batch: Any  # llama_cpp.llama_batch of N_BATCH tokens, refilled every step

    def close(self) -> None:
        import llama_cpp

        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        self.ctx.close()  # before the model it belongs to
        self.llama.close()


_load_lock = threading.Lock()  # one model load at a time; guards _loaded
_gen_lock = threading.Lock()  # held by the decoder for each step (2 cores: one thing at a time)
_loaded: dict[str, _Loaded] = {}
_shutdown_registered = False
load_seconds: dict[str, float] = {}  # model id -> seconds its last load took


def _threads(model: LocalModel) -> int:
    env = os.environ.get("MOA_LOCAL_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else model.n_threads


def get_llama(model_id: str) -> llama_cpp.Llama:
    """The loaded model, verified and loaded once per process."""
    return _load(resolve(model_id)).llama


def _batch_context(llama: llama_cpp.Llama, model: LocalModel) -> Any:
    """A context over the loaded weights with one KV stream of `model.n_ctx` per sequence."""
    import llama_cpp
    from llama_cpp import _internals

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = model.n_ctx * SEQUENCES  # split evenly between the streams
    params.n_batch = params.n_ubatch = N_BATCH
    params.n_seq_max = SEQUENCES
    params.kv_unified = False  # a stream per sequence: see the module docstring
    params.n_threads = params.n_threads_batch = _threads(model)
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as Llama's default
    params.no_perf = True
    # Sliding-window layers (Gemma 3) keep only the window, not the whole context: we never
    # roll a sequence back, which is what a full-size window cache would be for.
    params.swa_full = False
    return _internals.LlamaContext(model=llama._model, params=params, verbose=False)


def _load(model: LocalModel) -> _Loaded:
    global _shutdown_registered
    with _load_lock:
        loaded = _loaded.get(model.id)
        if loaded is not None:
            return loaded
        path = weights_path(model.id)
        try:
            import llama_cpp
            from llama_cpp import llama_chat_format
        except ImportError as e:
            raise LocalModelError(
                f"{model.id} needs llama-cpp-python: pip install {LLAMA_CPP_REQUIREMENT} ({e})"
            ) from e
        started = time.perf_counter()
        llama = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=REFERENCE_CTX,
            n_threads=_threads(model),
            n_threads_batch=_threads(model),
            swa_full=False,  # as in _batch_context (and llama.cpp stays quiet about it)
            verbose=False,
        )
        template = llama.metadata.get("tokenizer.chat_template") or model.chat_template
        if not template:
            llama.close()
            raise LocalModelError(f"{model.id}: {path.name} carries no chat template", 422)
        eos, bos = llama.token_eos(), llama.token_bos()
        # The same formatter llama-cpp-python builds from the GGUF for chat_format=None.
        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )
        try:
            ctx = _batch_context(llama, model)
        except Exception as e:
            llama.close()
            raise LocalModelError(f"{model.id}: llama.cpp could not make a context: {e}") from e
        batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        load_seconds[model.id] = time.perf_counter() - started
        if not _shutdown_registered:
            atexit.register(_shutdown)
            _shutdown_registered = True
        loaded = _Loaded(llama, formatter, _TokenText(llama), ctx, batch)
        _loaded[model.id] = loaded
        return loaded


def unload(model_id: str | None = None) -> None:
    """Free one loaded model (or all); waits for its running calls to finish."""
    with _load_lock:
        ids = [resolve(model_id).id] if model_id else list(_loaded)
        for mid in ids:
            with _decoder.cond:  # idle, and gone before the decoder can admit another call
                _decoder.cond.wait_for(lambda mid=mid: not _decoder.busy(mid))
                loaded = _loaded.pop(mid, None)
            if loaded is not None:
                with _gen_lock:
                    loaded.close()


# ---------------------------------------------------------------- generation


@dataclass
class GenStats:
    """Timings and token counts of one generation (perf_counter seconds)."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "cancelled"
    queued_at: float  # the call reached the decoder
    started_at: float  # it got a KV stream (a place in its model's batch)
    first_token_at: float | None
    ended_at: float

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: tokens after the first over the time after the first."""
        if self.first_token_at is None or self.completion_tokens < 2:
            return None
        span = self.ended_at - self.first_token_at
        return (self.completion_tokens - 1) / span if span > 0 else None

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


last_stats: GenStats | None = None  # the most recent finished generation
recent_stats: deque[GenStats] = deque(maxlen=64)  # newest last; the bench and tests read it


@dataclass
class _Request:
    """A prepared call: model loaded, prompt tokenized, limits checked."""

    model: LocalModel
    loaded: _Loaded
    prompt_tokens: list[int]
    stop: list[str]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    deadline: float | None  # perf_counter time after which the call fails with a timeout
    timeout_s: float | None


def _text_content(model: LocalModel, content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):  # OpenAI content parts: only text is meaningful here
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise LocalModelError(
                    f"{model.id} reads text only; got a {kind!r} message part", status_code=400
                )
        return "".join(texts)
    return str(content)


def _plain_messages(model: LocalModel, messages: list[Any]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        role = m.get("role", "user") if isinstance(m, dict) else getattr(m, "role", "user")
        content = m.get("content") if isinstance(m, dict) else getattr(m, "content", "")
        # "developer" is OpenAI's newer name for the system role; chat templates know "system".
        out.append({"role": "system" if role == "developer" else role, "content": content})
        out[-1]["content"] = _text_content(model, out[-1]["content"])
    return out


def _number(model: LocalModel, params: dict[str, Any], key: str, kind: type) -> Any:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LocalModelError(f"{model.id}: {key} must be a number, got {value!r}", 400)
    return kind(value)


def prepare(
    model_id: str,
    messages: list[Any],
    params: dict[str, Any] | None = None,
    timeout: Any = None,
) -> _Request:
    """Load the model, apply its chat template and check the request fits its context.

    Runs in the caller's thread (litellm runs it in an executor for async calls), so
    loading and hashing never block an event loop.
    """
    params = params or {}
    model = resolve(model_id)
    loaded = _load(model)
    llama = loaded.llama
    formatted = loaded.formatter(messages=_plain_messages(model, messages))
    prompt = llama.tokenize(
        formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
    )
    max_tokens = _number(model, params, "max_tokens", int)
    if max_tokens is None:
        max_tokens = _number(model, params, "max_completion_tokens", int)
    if max_tokens is not None and max_tokens < 1:
        raise LocalModelError(f"{model.id}: max_tokens must be at least 1", 400)
    n_ctx = model.n_ctx
    if len(prompt) >= n_ctx or (max_tokens is not None and len(prompt) + max_tokens > n_ctx):
        asked = f" + max_tokens {max_tokens}" if max_tokens is not None else ""
        raise LocalModelError(
            f"prompt is {len(prompt)} tokens{asked}; {model.id} holds {n_ctx}; "
            "shorten the prompt or lower max_tokens",
            status_code=400,
        )
    stop = params.get("stop") or []
    stop = [stop] if isinstance(stop, str) else [s for s in stop if s]
    stop += [s for s in [*(formatted.stop or []), *model.stop] if s and s not in stop]
    temperature = _number(model, params, "temperature", float)
    top_p = _number(model, params, "top_p", float)
    seed = _number(model, params, "seed", int)
    timeout_s = timeout if isinstance(timeout, (int, float)) and timeout > 0 else None
    return _Request(
        model=model,
        loaded=loaded,
        prompt_tokens=prompt,
        stop=stop,
        max_tokens=max_tokens if max_tokens is not None else n_ctx - len(prompt),
        temperature=max(0.0, DEFAULT_TEMPERATURE if temperature is None else temperature),
        top_p=TOP_P if top_p is None else top_p,
        seed=seed,
        deadline=time.perf_counter() + timeout_s if timeout_s else None,
        timeout_s=timeout_s,
    )


def _timed_out(req: _Request) -> LocalModelError:
    return LocalModelError(
        f"{req.model.id}: request timed out after {req.timeout_s:g} s "
        "(local calls share the CPU; fewer or shorter calls, or a longer timeout_s, help)",
        status_code=408,
    )


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could start a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


# ---------------------------------------------------------------- the decoder


def _sampler(req: _Request, loaded: _Loaded) -> Any:
    """A sampling chain for one sequence: llama-cpp-python's own chain for the same settings."""
    from llama_cpp import _internals

    chain = _internals.LlamaSampler()
    chain.add_penalties(
        n_vocab=loaded.llama.n_vocab(),
        penalty_last_n=PENALTY_LAST_N,
        penalty_repeat=REPEAT_PENALTY,
        penalty_freq=0.0,
        penalty_present=0.0,
    )
    if req.temperature == 0.0:
        chain.add_greedy()
    else:
        chain.add_top_k(TOP_K)
        chain.add_typical(1.0, 1)
        chain.add_top_p(req.top_p, 1)
        chain.add_min_p(MIN_P, 1)
        chain.add_temp(req.temperature)
        chain.add_dist(req.seed if req.seed is not None else random.randrange(2**31))
    return chain


class _Seq:
    """One call being generated: its place in its model's batch, its sampler, its text so far."""

    def __init__(
        self,
        req: _Request,
        emit: Callable[[str], None],
        done: Callable[[GenStats | None, BaseException | None], None],
        cancel: threading.Event,
    ) -> None:
        self.req, self.emit, self.done, self.cancel = req, emit, done, cancel
        self.queued_at = time.perf_counter()
        self.started_at = self.queued_at
        self.first_at: float | None = None
        self.seq_id = -1
        self.sampler: Any = None
        self.todo: list[int] = list(req.prompt_tokens)  # to decode: the prompt, then each token
        self.pos = 0  # KV position of todo[0]
        self.logits_at = -1  # row of this step's batch whose logits this sequence samples from
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text, self.sent, self.n = "", 0, 0
        self.finish: str | None = None  # "stop" | "length" | "cancelled" once complete
        self.hit_stop_string = False

    def take(self, token: int, is_eog: bool, piece: bytes) -> None:
        """One sampled token: stream its text, or complete the call (sets `finish`)."""
        req = self.req
        if self.first_at is None:
            self.first_at = time.perf_counter()
        if is_eog:
            self.finish = "stop"
            return
        self.n += 1
        self.text += self.utf8.decode(piece)
        upto = len(self.text)
        if req.stop:
            hits = [i for s in req.stop if (i := self.text.find(s, self.sent)) != -1]
            if hits:
                self.text, self.finish, self.hit_stop_string = self.text[: min(hits)], "stop", True
                return
            upto -= _held_back(self.text, req.stop)
        if upto > self.sent:
            self.emit(self.text[self.sent : upto])
            self.sent = upto
        if self.n >= req.max_tokens:
            self.finish = "length"
        else:
            self.todo = [token]

    def stats(self) -> GenStats:
        return GenStats(
            model=self.req.model.id,
            prompt_tokens=len(self.req.prompt_tokens),
            completion_tokens=self.n,
            finish_reason=self.finish or "cancelled",
            queued_at=self.queued_at,
            started_at=self.started_at,
            first_token_at=self.first_at,
            ended_at=time.perf_counter(),
        )


class _Decoder:
    """The one thread that runs llama.cpp: batches per model, models in turn, step by step."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.waiting: deque[_Seq] = deque()  # submitted, no KV stream yet
        self.running: dict[str, list[_Seq]] = {}  # model id -> sequences in its batch
        self.thread: threading.Thread | None = None

    def submit(self, seq: _Seq) -> None:
        with self.cond:
            self.waiting.append(seq)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="moa-local", daemon=True)
                self.thread.start()
            self.cond.notify_all()

    def busy(self, model_id: str | None) -> bool:
        if model_id is None:
            return bool(self.waiting) or any(self.running.values())
        return bool(self.running.get(model_id)) or any(
            s.req.model.id == model_id for s in self.waiting
        )

    def wait_idle(self, model_id: str | None = None, timeout: float | None = None) -> bool:
        """Wait until no call (of `model_id`, or at all) is queued or running."""
        with self.cond:
            return self.cond.wait_for(lambda: not self.busy(model_id), timeout)

    def cancel_all(self) -> None:
        with self.cond:
            for seq in [*self.waiting, *(s for seqs in self.running.values() for s in seqs)]:
                seq.cancel.set()
            self.cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self.cond:
                self._admit()
                while not any(self.running.values()):
                    self.cond.wait(0.05 if self.waiting else None)
                    self._admit()
                models = [mid for mid, seqs in self.running.items() if seqs]
            for mid in models:  # one step each: every model's cards stream from the start
                self._step(mid)

    def _admit(self) -> None:
        """Give waiting calls a KV stream of their model (caller holds `cond`)."""
        import llama_cpp

        still: deque[_Seq] = deque()
        while self.waiting:
            seq = self.waiting.popleft()
            req = seq.req
            loaded = _loaded.get(req.model.id)
            if seq.cancel.is_set():
                seq.finish = "cancelled"
                self._report(seq, None)
            elif req.deadline is not None and time.perf_counter() > req.deadline:
                self._report(seq, _timed_out(req))
            elif loaded is not req.loaded:  # unload() ran since prepare()
                self._report(
                    seq,
                    LocalModelError(f"{req.model.id} was unloaded before it ran; call it again"),
                )
            elif len(self.running.get(req.model.id, ())) >= SEQUENCES:
                still.append(seq)
            else:
                # Running sequences hold the ids 0..k-1 (see _end): the next one is k.
                seq.seq_id = len(self.running.get(req.model.id, ()))
                try:
                    llama_cpp.llama_memory_seq_rm(loaded.ctx.memory, seq.seq_id, -1, -1)
                    seq.sampler = _sampler(req, loaded)
                except Exception as e:  # the call fails, the decoder goes on
                    self._report(seq, LocalModelError(f"{req.model.id}: {e}"))
                    continue
                seq.started_at = time.perf_counter()
                self.running.setdefault(req.model.id, []).append(seq)
        self.waiting = still

    def _step(self, model_id: str) -> None:
        with self.cond:
            seqs = list(self.running.get(model_id, ()))
        if not seqs:
            return
        loaded = seqs[0].req.loaded
        try:
            with _gen_lock:
                _decode_step(loaded, seqs)
        except Exception as e:
            error = e if isinstance(e, LocalModelError) else LocalModelError(f"{model_id}: {e}")
            for seq in seqs:
                self._end(loaded, seq, error)
            return
        now = time.perf_counter()
        for seq in seqs:
            if seq.finish is None and seq.cancel.is_set():
                seq.finish = "cancelled"
            if seq.finish is not None:
                self._end(loaded, seq)
            elif seq.req.deadline is not None and now > seq.req.deadline:
                self._end(loaded, seq, _timed_out(seq.req))

    def _end(self, loaded: _Loaded, seq: _Seq, error: BaseException | None = None) -> None:
        """Take a sequence out of its batch, free its KV stream, report the outcome."""
        import llama_cpp

        with self.cond:
            running = self.running[seq.req.model.id]
            running.remove(seq)
            memory = loaded.ctx.memory
            llama_cpp.llama_memory_seq_rm(memory, seq.seq_id, -1, -1)
            last = max(running, key=lambda s: s.seq_id, default=None)
            if last is not None and last.seq_id > seq.seq_id:
                # Keep the ids 0..k-1 without a gap: llama.cpp decodes sequences of consecutive
                # ids in one pass, and splits the batch where they jump. So the last sequence
                # moves into the freed stream (its KV copied whole at the next decode).
                llama_cpp.llama_memory_seq_cp(memory, last.seq_id, seq.seq_id, -1, -1)
                llama_cpp.llama_memory_seq_rm(memory, last.seq_id, -1, -1)
                last.seq_id = seq.seq_id
            seq.sampler.close()
            self._report(seq, error)

    def _report(self, seq: _Seq, error: BaseException | None) -> None:
        global last_stats
        try:
            if error is not None:
                seq.done(None, error)
            else:
                if seq.finish != "cancelled":
                    if not seq.hit_stop_string:
                        seq.text += seq.utf8.decode(b"", final=True)
                    if len(seq.text) > seq.sent:
                        seq.emit(seq.text[seq.sent :])
                        seq.sent = len(seq.text)
                stats = seq.stats()
                last_stats = stats
                recent_stats.append(stats)
                seq.done(stats, None)
        finally:
            self.cond.notify_all()


def _decode_step(loaded: _Loaded, seqs: list[_Seq]) -> None:
    """One llama_decode for all of a model's running sequences, then one token each."""
    import llama_cpp

    # Room for every sequence past its prompt first (one token each), then for prompts, in
    # pieces if long.
    room, takes = N_BATCH, {}
    for seq in sorted(seqs, key=lambda s: len(s.todo) > 1):
        takes[seq] = min(len(seq.todo), room)
        room -= takes[seq]
    # Written in seq_id order: llama.cpp computes sequences of consecutive ids (one KV stream
    # each) in one pass, and splits the batch where the ids jump.
    batch, n = loaded.batch, 0
    for seq in sorted(seqs, key=lambda s: s.seq_id):
        take, seq.logits_at = takes[seq], -1
        for j in range(take):
            batch.token[n] = seq.todo[j]
            batch.pos[n] = seq.pos + j
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.seq_id
            batch.logits[n] = False
            n += 1
        if take and take == len(seq.todo):
            batch.logits[n - 1] = True
            seq.logits_at = n - 1
        seq.todo = seq.todo[take:]
        seq.pos += take
    batch.n_tokens = n
    code = llama_cpp.llama_decode(loaded.ctx.ctx, batch)
    if code != 0:
        raise LocalModelError(f"{seqs[0].req.model.id}: llama_decode failed (code {code})")
    vocab = loaded.llama._model.vocab
    for seq in seqs:
        if seq.logits_at >= 0:
            token = llama_cpp.llama_sampler_sample(
                seq.sampler.sampler, loaded.ctx.ctx, seq.logits_at
            )
            seq.take(token, llama_cpp.llama_vocab_is_eog(vocab, token), loaded.token_text(token))


_decoder = _Decoder()

_TEXT, _DONE, _ERROR = "text", "done", "error"
# Text reaches the consumer at most this often (the first piece at once). litellm spends ~1 ms
# of CPU per stream chunk, which on 2 cores is taken from llama.cpp: one chunk per token would
# cost SmolLM2 ~5% of its speed; 50 ms batches (~2 tokens) halve that, unnoticeable on screen.
FLUSH_INTERVAL_S = 0.05


def _start(req: _Request, deliver: Callable[[tuple[str, Any]], None]) -> threading.Event:
    """Hand the call to the decoder; its events go to `deliver`. Returns its cancel switch."""
    cancel = threading.Event()
    pending: list[str] = []
    last_delivery = 0.0

    def on_text(text: str) -> None:
        nonlocal last_delivery
        pending.append(text)
        now = time.perf_counter()
        if now - last_delivery >= FLUSH_INTERVAL_S:  # the first piece goes out at once
            deliver((_TEXT, "".join(pending)))
            pending.clear()
            last_delivery = now

    def on_done(stats: GenStats | None, error: BaseException | None) -> None:
        if error is not None:
            deliver((_ERROR, error))
            return
        if pending:
            deliver((_TEXT, "".join(pending)))
        deliver((_DONE, stats))

    _decoder.submit(_Seq(req, on_text, on_done, cancel))
    return cancel


def _events(req: _Request) -> Iterator[tuple[str, Any]]:
    """Generation events for a synchronous consumer; closing the iterator cancels."""
    inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    cancel = _start(req, inbox.put)
    try:
        while True:
            kind, value = inbox.get()
            if kind == _ERROR:
                raise value
            yield kind, value
            if kind == _DONE:
                return
    finally:
        cancel.set()


async def _aevents(req: _Request) -> AsyncIterator[tuple[str, Any]]:
    """Generation events for an async consumer; the event loop never waits on llama."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancel_box: list[threading.Event] = []

    def deliver(item: tuple[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            if cancel_box:
                cancel_box[0].set()

    cancel_box.append(_start(req, deliver))
    try:
        while True:
            kind, value = await inbox.get()
            if kind == _ERROR:
                raise value
            yield kind, value
            if kind == _DONE:
                return
    finally:
        cancel_box[0].set()  # also runs when the consumer is cancelled or closes us early


def _shutdown() -> None:
    """At exit: stop generations at a token boundary, then free the models.

    Closing them here, while modules are intact, avoids llama-cpp-python's noisy __del__
    at interpreter teardown (and never frees a model under a running step).
    """
    _decoder.cancel_all()
    _decoder.wait_idle(timeout=5)
    if _gen_lock.acquire(timeout=1):
        try:
            with _load_lock:
                while _loaded:
                    _loaded.popitem()[1].close()
        finally:
            _gen_lock.release()


# ---------------------------------------------------------------- litellm provider


def _chunk(text: str, stats: GenStats | None = None) -> dict[str, Any]:
    """A litellm GenericStreamingChunk; the last one carries finish_reason and usage."""
    return {
        "text": text,
        "is_finished": stats is not None,
        "finish_reason": stats.finish_reason if stats else "",
        "index": 0,
        "tool_use": None,
        "usage": stats.usage if stats else None,
    }


def _fill_response(model_response: Any, req: _Request, text: str, stats: GenStats) -> Any:
    import litellm

    model_response.choices[0].message.content = text
    model_response.choices[0].finish_reason = stats.finish_reason
    model_response.created = int(time.time())
    model_response.model = req.model.id
    model_response.usage = litellm.Usage(**stats.usage)
    model_response._hidden_params["local_stats"] = {
        "tokens_per_s": stats.tokens_per_s,
        "queue_s": stats.started_at - stats.queued_at,
        "ttft_s": None if stats.first_token_at is None else stats.first_token_at - stats.started_at,
        "generate_s": stats.ended_at - stats.started_at,
    }
    return model_response


_handler: Any = None
_handler_lock = threading.Lock()


def _build_handler_class() -> type:
    from litellm.llms.custom_llm import CustomLLM

    class LocalLLM(CustomLLM):
        """litellm custom provider `local`: chat completions from the embedded GGUF models.

        litellm calls these with keyword arguments only. `acompletion` and `astreaming` are
        plain methods returning a coroutine / async iterator: litellm calls them from an
        executor thread, so model loading and prompt checks happen there and errors are
        raised at call time; only the generation itself is awaited on the event loop.
        """

        def completion(  # type: ignore[override]
            self,
            model: str,
            messages: list[Any],
            model_response: Any,
            optional_params: dict[str, Any],
            timeout: Any = None,
            **_: Any,
        ) -> Any:
            req = prepare(model, messages, optional_params, timeout)
            parts: list[str] = []
            stats: GenStats | None = None
            for kind, value in _events(req):
                if kind == _TEXT:
                    parts.append(value)
                else:
                    stats = value
            assert stats is not None
            return _fill_response(model_response, req, "".join(parts), stats)

        def streaming(  # type: ignore[override]
            self,
            model: str,
            messages: list[Any],
            optional_params: dict[str, Any],
            timeout: Any = None,
            **_: Any,
        ) -> Iterator[dict[str, Any]]:
            req = prepare(model, messages, optional_params, timeout)

            def chunks() -> Iterator[dict[str, Any]]:
                for kind, value in _events(req):
                    yield _chunk(value) if kind == _TEXT else _chunk("", value)

            return chunks()

        def acompletion(  # type: ignore[override]
            self,
            model: str,
            messages: list[Any],
            model_response: Any,
            optional_params: dict[str, Any],
            timeout: Any = None,
            **_: Any,
        ) -> Coroutine[Any, Any, Any]:
            req = prepare(model, messages, optional_params, timeout)

            async def run() -> Any:
                parts: list[str] = []
                stats: GenStats | None = None
                async for kind, value in _aevents(req):
                    if kind == _TEXT:
                        parts.append(value)
                    else:
                        stats = value
                assert stats is not None
                return _fill_response(model_response, req, "".join(parts), stats)

            return run()

        def astreaming(  # type: ignore[override]
            self,
            model: str,
            messages: list[Any],
            optional_params: dict[str, Any],
            timeout: Any = None,
            **_: Any,
        ) -> AsyncIterator[dict[str, Any]]:
            req = prepare(model, messages, optional_params, timeout)

            async def chunks() -> AsyncIterator[dict[str, Any]]:
                events = _aevents(req)
                try:
                    async for kind, value in events:
                        yield _chunk(value) if kind == _TEXT else _chunk("", value)
                finally:
                    await events.aclose()  # stop the worker now, not when GC gets to it

            return chunks()

    return LocalLLM


def handler() -> Any:
    """The process-wide LocalLLM instance (imports litellm on first call)."""
    global _handler
    with _handler_lock:
        if _handler is None:
            _handler = _build_handler_class()()
        return _handler


def __getattr__(name: str) -> Any:
    # `from moa.local import LocalLLM` works without importing litellm at module import.
    if name == "LocalLLM":
        return type(handler())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(litellm_module: Any = None) -> None:
    """Make `local/...` models callable through litellm, at zero cost. Idempotent."""
    if litellm_module is None:
        import litellm as litellm_module
    from litellm.utils import custom_llm_setup

    ours = handler()
    entries = [e for e in litellm_module.custom_provider_map if e.get("provider") != PROVIDER]
    if not any(
        e.get("provider") == PROVIDER and e.get("custom_handler") is ours
        for e in litellm_module.custom_provider_map
    ):
        # Keep other providers' entries; replace a stale `local` entry (e.g. a reloaded module).
        litellm_module.custom_provider_map = [
            *entries,
            {"provider": PROVIDER, "custom_handler": ours},
        ]
    custom_llm_setup()  # litellm also runs this per call; doing it now lets cost lookups work
    if any(m not in litellm_module.model_cost for m in MODELS):
        litellm_module.register_model(
            {
                m.id: {
                    "input_cost_per_token": 0.0,
                    "output_cost_per_token": 0.0,
                    # stated explicitly, else litellm warns that it assumes them to be 0
                    "cache_creation_input_token_cost": 0.0,
                    "cache_read_input_token_cost": 0.0,
                    "litellm_provider": PROVIDER,
                    "mode": "chat",
                    "max_tokens": m.n_ctx,
                    "max_input_tokens": m.n_ctx,
                    "max_output_tokens": m.n_ctx,
                }
                for m in MODELS.values()
            }
        )
