"""Model access through litellm: lazy import, input checks, one streamed call, errors, cost."""

from __future__ import annotations

import contextvars
import email.utils
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from moa.config import ModelSpec

# Env var names of the providers people use most; `python -m moa models` lists which are set.
PROVIDER_KEYS: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "groq": "GROQ_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "xai": "XAI_API_KEY",
    "cohere": "COHERE_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
}
# Placeholder key for OpenAI-compatible servers that need none (Ollama, llama.cpp, vLLM): the
# openai client refuses to send a request without some key, and a real provider key must not
# be sent to a server the user merely pointed api_base at.
NO_KEY = "sk-no-key-required"

_lock = threading.Lock()
_litellm: Any = None


def litellm() -> Any:
    """Import litellm once (≈5 s on 2 cores), quietly, with the local provider registered."""
    global _litellm
    if _litellm is None:
        with _lock:
            if _litellm is None:
                os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                import litellm as lt

                lt.suppress_debug_info = True
                lt.drop_params = True  # a provider that lacks a param ignores it instead of failing
                lt.telemetry = False
                from moa import local

                local.register(lt)
                _warm_up(lt)
                _litellm = lt
    return _litellm


def _warm_up(lt: Any) -> None:
    """Do now, with the import, what litellm otherwise does during a process's first call.

    Measured in a fresh `moa run` (bench/orchestration.py): the first request left 0.52 s after
    the run started, because the first acompletion imported every openai.resources module (the
    SDK client's `.chat`, ~0.5 s), and the first streamed answer loaded tiktoken's encoding
    (cost calculation), built litellm's pydantic schemas and imported anyio's thread backend,
    all on the event loop between the first layer and the next. A streamed mock_response goes
    through litellm's own streaming wrapper and cost code without any network. Best effort: a
    failure here only means the first call pays for it."""
    try:
        import anyio._backends._asyncio  # noqa: F401  # litellm's asyncify (end of a stream)
        import litellm._service_logger  # noqa: F401  # imported lazily by the first async call
        import litellm.litellm_core_utils.default_encoding  # noqa: F401  # tiktoken cl100k
        import openai.resources  # noqa: F401

        stream = lt.completion(
            model="openai/moa-warm-up",
            messages=[{"role": "user", "content": "warm up"}],
            mock_response="ok",
            stream=True,
            stream_options={"include_usage": True},
        )
        for _ in stream:
            pass
    except Exception:  # pragma: no cover - a litellm change; the first call pays instead
        pass


def preload_in_background() -> threading.Thread:
    """Start importing litellm off the caller's thread (the UI's first paint must not wait)."""
    t = threading.Thread(target=litellm, name="moa-import-litellm", daemon=True)
    t.start()
    return t


# ---------------------------------------------------------------- secrets

# Keys typed into one browser session (the app's "API keys" expander). They must never reach
# os.environ: the server process is shared by every session. The UI sets this variable in the
# thread that checks or runs a session's calls; asyncio tasks inherit it, other threads do not.
_SESSION_KEYS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "moa_session_keys", default=None
)
# Names of variables read through `api_key_env` (e.g. MY_SERVER_CRED): their values are
# scrubbed from text too, even when the name does not look like a key.
_KEY_NAMES_USED: set[str] = set()


def set_session_keys(keys: Mapping[str, str] | None) -> contextvars.Token:
    """Make `keys` (env var name → value) this context's session keys; returns a reset token."""
    clean = {k: v for k, v in (keys or {}).items() if isinstance(v, str) and v.strip()}
    return _SESSION_KEYS.set(clean or None)


@contextmanager
def session_keys(keys: Mapping[str, str] | None) -> Iterator[None]:
    token = set_session_keys(keys)
    try:
        yield
    finally:
        _SESSION_KEYS.reset(token)


def key_value(name: str) -> str | None:
    """The value of key variable `name`: this session's key first, then the environment."""
    keys = _SESSION_KEYS.get() or {}
    return keys.get(name) or os.environ.get(name) or None


def secret_values() -> list[str]:
    """Values of every key-like environment variable and session key, to scrub from text."""
    names = set(PROVIDER_KEYS.values()) | _KEY_NAMES_USED
    names |= {k for k in os.environ if re.search(r"(KEY|TOKEN|SECRET|PASSWORD)$", k.upper())}
    values = {v for k in names if len(v := os.environ.get(k, "")) >= 8}
    values |= {v for v in (_SESSION_KEYS.get() or {}).values() if len(v) >= 8}
    return sorted(values, key=len, reverse=True)  # longest first: no half-replaced key


_KEY_PATTERNS = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9_.\-]{8,}|"
    r"(?i:api[_-]?key['\"]?\s*[:=]\s*['\"]?)[A-Za-z0-9_.\-]{8,})"
)


def redact(text: str | None) -> str | None:
    """Remove API keys from text that may be shown, logged or stored."""
    if not text:
        return text
    for value in secret_values():
        text = text.replace(value, "[REDACTED]")
    return _KEY_PATTERNS.sub("[REDACTED]", text).replace(NO_KEY, "[REDACTED]")


def keys_set() -> dict[str, bool]:
    """Env var name → whether it is set, in the environment or this session (never the value)."""
    return {env: bool(key_value(env)) for env in PROVIDER_KEYS.values()}


def needed_keys(spec: ModelSpec) -> list[str]:
    """Names of the variables a model's calls read its key from (none for local or api_base)."""
    if spec.model.startswith("local/"):
        return []
    if spec.api_key_env:
        return [spec.api_key_env]
    if spec.api_base:
        return []
    if spec.provider in PROVIDER_KEYS:
        return [PROVIDER_KEYS[spec.provider]]
    if _litellm is None:  # not imported yet: don't block a page on it
        return []
    try:
        env = _litellm.validate_environment(model=spec.model)
    except Exception:
        return []
    return [k for k in env.get("missing_keys", []) if not k.endswith("_BASE")]


# ---------------------------------------------------------------- input checks


_WHERE_KEYS = (
    ", in .streamlit/secrets.toml, or (in the app) under “API keys” in the sidebar, "
    "for this browser session only"
)


class ModelInputError(ValueError):
    """A model id, endpoint or key is unusable; raised before any call is made."""


def check_model(spec: ModelSpec, where: str) -> None:
    """Unknown provider, unknown local model or missing key → ModelInputError naming the fix."""
    if spec.model.startswith("local/"):
        from moa import local

        if spec.model not in local.MODELS:
            known = ", ".join(local.MODELS)
            raise ModelInputError(f"{where}: unknown local model {spec.model!r} (known: {known})")
        return
    lt = litellm()
    try:
        _, provider, _, _ = lt.get_llm_provider(model=spec.model, api_base=spec.api_base)
    except Exception:
        raise ModelInputError(
            f"{where}: {spec.model!r} is not a model id litellm knows; use 'provider/model', "
            "e.g. 'openai/gpt-4o-mini', 'ollama/llama3.2' or 'local/smollm2-135m'"
        ) from None
    if spec.api_key_env and not key_value(spec.api_key_env):
        raise ModelInputError(
            f"{where}: api_key_env names {spec.api_key_env}, which is not set; set it in the "
            f"environment{_WHERE_KEYS}"
        )
    if spec.api_base:
        return  # a self-hosted OpenAI-compatible server: no provider key is sent
    env = lt.validate_environment(model=spec.model)
    missing = [
        k for k in env.get("missing_keys", []) if not k.endswith("_BASE") and not key_value(k)
    ]
    if missing:
        raise ModelInputError(
            f"{where}: {spec.model!r} needs {' and '.join(missing)}; set it in the "
            f"environment{_WHERE_KEYS}"
        )


def context_window(model: str) -> int | None:
    try:
        info = litellm().get_model_info(model)
    except Exception:
        return None
    return info.get("max_input_tokens") or info.get("max_tokens")


def count_tokens(model: str, messages: list[dict[str, str]] | None = None, text: str = "") -> int:
    lt = litellm()
    try:
        if messages is not None:
            return int(lt.token_counter(model=model, messages=messages))
        return int(lt.token_counter(model=model, text=text))
    except Exception:
        # litellm falls back to tiktoken for unknown models; if even that fails, ~4 chars/token
        joined = text if messages is None else " ".join(m["content"] for m in messages)
        return max(1, len(joined) // 4)


# ---------------------------------------------------------------- cost


def cost_usd(model: str | ModelSpec, tokens_in: int, tokens_out: int) -> float | None:
    """The spec's own prices (input/output_cost_per_mtok) if it has them, else litellm's
    bundled map; None when the model's price is unknown (never a made-up 0)."""
    if isinstance(model, ModelSpec):
        spec, model = model, model.model
        if spec.own_prices:
            usd = tokens_in * spec.input_cost_per_mtok + tokens_out * spec.output_cost_per_mtok
            return round(usd / 1_000_000, 10)
    if model.startswith("local/"):
        return 0.0
    try:
        p, c = litellm().cost_per_token(
            model=model, prompt_tokens=tokens_in, completion_tokens=tokens_out
        )
    except Exception:
        return None
    return round(float(p) + float(c), 10)


def has_price(model: str | ModelSpec) -> bool:
    return cost_usd(model, 1000, 1000) is not None


# ---------------------------------------------------------------- errors


@dataclass
class ErrorInfo:
    message: str  # the provider's own message, keys redacted
    retryable: bool  # 429 / 5xx / connection trouble
    retry_after_s: float | None
    status_code: int | None


def _retry_after(exc: Exception) -> float | None:
    headers = None
    for attr in ("response", "litellm_response_headers"):
        obj = getattr(exc, attr, None)
        headers = getattr(obj, "headers", obj) if obj is not None else None
        if headers:
            break
    if not headers:
        return None
    try:
        value = headers.get("retry-after")
    except Exception:
        return None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _connection_problem(exc: Exception) -> str | None:
    """Why the server could not be reached at all (refused, unknown host…), or None.

    litellm reports these as "HTTP 500: Connection error.", which reads like the server
    answered; the cause chain holds the real reason.
    """
    names = {type(e).__name__ for e in _causes(exc)}
    if not names & {"APIConnectionError", "ConnectError", "ClientConnectorError", "ConnectTimeout"}:
        return None
    for e in _causes(exc):
        if isinstance(e, ConnectionRefusedError):
            return "connection refused: nothing is listening there"
        if isinstance(e, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(e, TimeoutError) or type(e).__name__ == "ConnectTimeout":
            return "the connection timed out"
    return "could not connect"


def classify(exc: Exception) -> ErrorInfo:
    problem = _connection_problem(exc)
    if problem is not None:
        where = getattr(exc, "moa_api_base", None) or "the provider"
        fix = (
            "check that the server is running and that api_base is right"
            if getattr(exc, "moa_api_base", None)
            else "check the network connection"
        )
        return ErrorInfo(
            message=redact(f"cannot connect to {where} ({problem}); {fix}"),
            retryable=True,
            retry_after_s=None,
            status_code=None,
        )
    code = getattr(exc, "status_code", None)
    name = type(exc).__name__
    message = str(getattr(exc, "message", "") or exc)
    if not message:  # httpx's ReadError says nothing itself; its cause does (the reset)
        message = next((str(e) for e in _causes(exc) if str(e)), "") or name
    # litellm prefixes messages with its own class names; keep the provider's words.
    message = re.sub(r"^(litellm\.)?\w+(Error|Exception):\s*", "", message)
    message = re.sub(r"^(litellm\.)?\w+(Error|Exception):\s*", "", message)
    retryable = code in (408, 409, 429) or (isinstance(code, int) and code >= 500)
    retryable = retryable or name in ("APIConnectionError", "InternalServerError", "Timeout")
    # httpx's own (OpenAI-compatible servers are streamed without litellm): a dropped or
    # refused connection, or no answer in time.
    retryable = retryable or name in ("ConnectError", "ReadError", "RemoteProtocolError")
    retryable = retryable or name in ("ConnectTimeout", "ReadTimeout", "WriteError")
    if name == "APIConnectionError" and "Connection refused" in message:
        retryable = True
    message = message.strip() or name
    if isinstance(code, int) and not message.startswith(f"HTTP {code}"):
        message = f"HTTP {code}: {message}"
    return ErrorInfo(
        message=redact(message),
        retryable=retryable,
        retry_after_s=_retry_after(exc),
        status_code=code if isinstance(code, int) else None,
    )


# ---------------------------------------------------------------- the call


@dataclass
class Chunk:
    text: str = ""
    tokens_in: int | None = None
    tokens_out: int | None = None
    # The last chunk of a stream that ended normally: `end` is True and `finish_reason` is what
    # the server sent (None if it sent none; litellm would report a made-up "stop").
    end: bool = False
    finish_reason: str | None = None


def call_kwargs(spec: ModelSpec, messages: list[dict[str, str]], timeout_s: float) -> dict:
    kwargs: dict[str, Any] = {
        "model": spec.model,
        "messages": messages,
        "temperature": spec.temperature,
        "max_tokens": spec.max_tokens,
        "timeout": timeout_s,
        "num_retries": 0,  # the engine retries, so it can report each retry
    }
    if spec.api_base:
        kwargs["api_base"] = spec.api_base
        kwargs["api_key"] = NO_KEY
    if spec.api_key_env:
        _KEY_NAMES_USED.add(spec.api_key_env)
        kwargs["api_key"] = key_value(spec.api_key_env) or NO_KEY
    elif not spec.api_base:
        # A key typed in this browser session travels with the call, never through os.environ.
        session = _SESSION_KEYS.get() or {}
        names = [n for n in needed_keys(spec) if session.get(n)]
        if len(names) == 1:
            kwargs["api_key"] = session[names[0]]
    return kwargs


async def astream(
    spec: ModelSpec, messages: list[dict[str, str]], timeout_s: float
) -> AsyncIterator[Chunk]:
    """Stream one chat completion: text deltas, then usage if the provider reports it."""
    lt = litellm()
    try:
        response = await lt.acompletion(
            **call_kwargs(spec, messages, timeout_s),
            stream=True,
            stream_options={"include_usage": True},
        )
    except Exception as e:
        e.moa_api_base = spec.api_base  # type: ignore[attr-defined]  # for classify's message
        raise
    async for chunk in response:
        out = Chunk()
        choices = getattr(chunk, "choices", None) or []
        if choices:
            delta = getattr(choices[0], "delta", None)
            out.text = (getattr(delta, "content", None) or "") if delta is not None else ""
        usage = getattr(chunk, "usage", None)
        if usage:
            out.tokens_in = getattr(usage, "prompt_tokens", None)
            out.tokens_out = getattr(usage, "completion_tokens", None)
        if out.text or out.tokens_out is not None:
            yield out
    # litellm fills in "stop" when a server ended its stream without a finish_reason; what the
    # server really sent is kept on the stream wrapper.
    sent = getattr(response, "received_finish_reason", None) or getattr(
        response, "intermittent_finish_reason", None
    )
    yield Chunk(end=True, finish_reason=sent if isinstance(sent, str) else None)
