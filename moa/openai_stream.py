"""One streamed chat completion from an OpenAI-compatible server (`api_base`), over plain httpx.

litellm turns every streamed chunk into several pydantic objects and checks, ~1 ms of CPU a chunk
on 2 cores, and does its per-call setup and end-of-stream logging on the event loop: with four
streams ending together that was ~0.1-0.2 s between one layer's last byte and the next layer's
first request (bench/orchestration.py). For a server that speaks the OpenAI wire protocol the
work is small enough to do here: POST, read the server-sent events, json.loads each one.
Every other provider still goes through litellm.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import ssl
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx

_ssl_lock = threading.Lock()
_ssl_context: ssl.SSLContext | None = None
# The client of the run in progress (its calls share keep-alive connections), if any.
_CLIENT: contextvars.ContextVar[httpx.AsyncClient | None] = contextvars.ContextVar(
    "moa_openai_client", default=None
)


class ServerError(Exception):
    """The server answered with an HTTP error; `message` is its own words."""

    def __init__(self, status_code: int, message: str, response: httpx.Response) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.response = response  # its headers hold Retry-After


class StreamFormatError(ValueError):
    """A streamed event was not the JSON the protocol promises."""


def _ssl() -> ssl.SSLContext:
    # Building an SSL context (loading the CA bundle) costs ~20-40 ms: once per process.
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = httpx.create_ssl_context()
        return _ssl_context


def warm_up() -> None:
    """Pay the one-off costs at import time, not in a run's first call: the CA bundle, and
    httpcore, which httpx imports only when its first client is made (~0.25 s)."""
    import httpcore  # noqa: F401

    _ssl()


def new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=_ssl(), timeout=None, trust_env=True)


@contextlib.asynccontextmanager
async def client_scope() -> AsyncIterator[None]:
    """Calls made inside share one client (one per run: clients belong to an event loop)."""
    client = new_client()
    token = _CLIENT.set(client)
    try:
        yield
    finally:
        _CLIENT.reset(token)
        await client.aclose()


def _error_message(response: httpx.Response) -> str:
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:2000] or response.reason_phrase
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str) and err:
        return err
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])  # FastAPI-based servers (llama-cpp-python, vLLM)
    return text.strip()[:2000]


async def stream(
    api_base: str,
    api_key: str,
    body: dict[str, Any],
    timeout_s: float,
) -> AsyncIterator[dict[str, Any]]:
    """POST {api_base}/chat/completions with stream=true; yields each event's JSON object."""
    client = _CLIENT.get()
    own = client is None
    if own:
        client = new_client()
    try:
        url = api_base.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {api_key}", "Accept": "text/event-stream"}
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0))
        async with client.stream(
            "POST", url, json=body, headers=headers, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                raise ServerError(response.status_code, _error_message(response), response)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # comments, event names, blank separators
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError as e:
                    raise StreamFormatError(f"the server sent a malformed event: {e}") from None
                if not isinstance(event, dict):
                    raise StreamFormatError("the server sent an event that is not a JSON object")
                if "error" in event and not event.get("choices"):
                    err = event["error"]
                    message = err.get("message") if isinstance(err, dict) else err
                    raise ServerError(500, str(message or err), response)
                yield event
    finally:
        if own:
            await client.aclose()
