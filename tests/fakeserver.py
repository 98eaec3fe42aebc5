"""A loopback OpenAI-compatible chat server for tests and benchmarks: SSE streaming with usage,
per-model delays and faults (500, 429 + Retry-After, hang, reset, malformed SSE, empty answer,
a huge answer streamed fast).

Behaviour is chosen per model name: `server.set("slow", delay_s=1.0)`; litellm model ids are
`openai/<name>` with `api_base=server.base_url`.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("500", "429", "hang", "reset", "malformed", "empty", "huge")
HUGE_CHARS = 1_200_000  # the "huge" answer: more than any call should keep
HUGE_CHUNK_CHARS = 8192  # sent in deltas this big, so 1 MB streams in well under a second


@dataclass
class Behaviour:
    text: str | None = None  # the answer; default: a few sentences naming the model
    delay_s: float = 0.0  # before the response starts (time to first token)
    token_delay_s: float = 0.0  # between streamed words
    fault: str | None = None  # one of FAULTS
    fail_times: int | None = None  # 500/429: fail this many times, then answer; None = always
    retry_after: str | None = "0.2"  # the Retry-After header sent with 429
    fault_after_words: int = 3  # hang/reset/malformed: words sent before the fault
    usage: bool = True  # send a usage chunk when asked (stream_options.include_usage)
    echo_auth: bool = False  # 500: echo the Authorization header, as careless providers do
    huge_chars: int = HUGE_CHARS  # huge: the answer's length (`text`, or sentences, repeated)
    # Answer by role: the first key found in the request's system message picks the answer
    # (a proposer that also ranks: {"strict reviewer": "FINAL RANKING: 1 > 2"}).
    when_system: dict[str, str] | None = None
    honour_max_tokens: bool = False  # stop after max_tokens words, finish_reason "length"
    # (substring, answer): the answer when the last user message holds the substring (first
    # match wins; else `text`), e.g. a judge that rates second turns differently
    when: tuple[tuple[str, str], ...] = ()
    # The answers to this model's 1st, 2nd, … request (later ones: as above), e.g. two samples
    # of one model that disagree.
    nth: tuple[str, ...] = ()
    # Like llama-cpp-python's server (one request at a time): a request arriving while this
    # answer streams ends it at once with [DONE] and no finish_reason.
    one_at_a_time: bool = False


def huge_text(seed: str, n: int) -> str:
    """`seed` repeated (space-separated) up to exactly `n` characters."""
    seed = seed.strip() + " "
    return (seed * (n // len(seed) + 1))[:n]


def default_text(model: str, prompt: str) -> str:
    topic = " ".join(prompt.split()[:6]) or "the question"
    return (
        f"{model} considered {topic}. "
        f"The first point from {model} is that careful answers help. "
        f"The second point from {model} is that examples make ideas concrete."
    )


class FakeServer:
    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.requests: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.completed: Counter[str] = Counter()  # streams sent to the end ([DONE]), per model
        self.aborted: Counter[str] = Counter()  # responses the client hung up on, per model
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._release = threading.Event()  # set by reset(): hung handlers of a past test end
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ control

    def start(self) -> FakeServer:
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def set(self, model: str, **kwargs: Any) -> None:
        self.behaviours[model] = Behaviour(**kwargs)

    def reset(self) -> None:
        self._release.set()
        deadline = time.monotonic() + 2
        while self.active and time.monotonic() < deadline:
            time.sleep(0.01)
        self._release = threading.Event()
        with self._lock:
            self.behaviours.clear()
            self.requests.clear()
            self.counts.clear()
            self.completed.clear()
            self.aborted.clear()
            self.max_active = 0

    def requests_for(self, model: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["body"].get("model") == model]

    # ------------------------------------------------------------ bookkeeping

    def _record(self, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, int]:
        """Log a request; returns how many this model had so far and its place in the log."""
        with self._lock:
            model = body.get("model", "")
            self.counts[model] += 1
            # t: arrival; t_end: the response's last byte (set when the handler is done).
            self.requests.append({"headers": headers, "body": body, "t": time.monotonic()})
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            return self.counts[model], len(self.requests) - 1

    def _done(self, n_request: int) -> None:
        with self._lock:
            self.active -= 1
            if n_request < len(self.requests):
                self.requests[n_request]["t_end"] = time.monotonic()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (cancel, timeout, keep-alive close) are normal here.
        import sys

        exc = sys.exc_info()[1]
        # After a "reset" fault the handler's files are closed on purpose: its last flush fails.
        closed = isinstance(exc, ValueError) and "closed file" in str(exc)
        if not isinstance(exc, ConnectionError) and not closed:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # otherwise every keep-alive call stalls ~45 ms

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            data = [{"id": m, "object": "model"} for m in self.fake.behaviours]
            self._json(200, {"object": "list", "data": data})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._json(400, {"error": {"message": "request body is not JSON"}})
            return
        n, n_request = self.fake._record(dict(self.headers), body)
        try:
            self._answer(body, n, n_request)
        except (BrokenPipeError, ConnectionResetError):
            with self.fake._lock:  # the client went away (cancel, timeout, cap): fine
                self.fake.aborted[body.get("model", "")] += 1
        finally:
            self.fake._done(n_request)

    def _pause(self, seconds: float, release: threading.Event) -> bool:
        """Wait `seconds`; True if the server stops or a reset() ends this request's test first
        (a 30 s delay of a past test must not still count as active in the next one)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.fake._stop.is_set() or release.is_set():
                return True
            release.wait(min(left, 0.05))
        return self.fake._stop.is_set() or release.is_set()

    def _answer(self, body: dict[str, Any], n: int, n_request: int) -> None:
        model = body.get("model", "")
        b = self.fake.behaviours.get(model, Behaviour())
        released = self.fake._release  # this test's: reset() sets it and makes a new one
        if b.delay_s and self._pause(b.delay_s, released):
            return
        failing = b.fail_times is None or n <= b.fail_times
        if b.fault == "500" and failing:
            msg = f"upstream {model} exploded"
            if b.echo_auth:
                msg += f" (request had Authorization: {self.headers.get('Authorization')})"
            self._json(500, {"error": {"message": msg, "type": "server_error"}})
            return
        if b.fault == "429" and failing:
            headers = {"Retry-After": b.retry_after} if b.retry_after else {}
            msg = {"error": {"message": f"rate limit for {model}", "type": "rate_limit"}}
            self._json(429, msg, headers)
            return
        prompt = ""
        for m in body.get("messages", []):
            if m.get("role") == "user":
                prompt = m.get("content") or ""
        text = b.text if b.text is not None else default_text(model, prompt)
        text = next((answer for key, answer in b.when if key in prompt), text)
        if n <= len(b.nth):
            text = b.nth[n - 1]
        system = " ".join(
            str(m.get("content") or "")
            for m in body.get("messages", [])
            if m.get("role") == "system"
        )
        for key, answer in (b.when_system or {}).items():
            if key in system:
                text = answer
                break
        if b.fault == "empty":
            text = ""
        if b.fault == "huge":
            text = huge_text(text, b.huge_chars)
            # Big deltas, not words: a million one-word chunks would time litellm, not us.
            words = [text[i : i + HUGE_CHUNK_CHARS] for i in range(0, len(text), HUGE_CHUNK_CHARS)]
        else:
            words = [w + " " for w in text.split(" ")] if text else []
            if words:
                words[-1] = words[-1][:-1]
        finish_reason = "stop"
        cap = body.get("max_tokens") or body.get("max_completion_tokens")
        if b.honour_max_tokens and isinstance(cap, int) and len(words) > cap:
            words, finish_reason = words[:cap], "length"  # as real servers cut an answer
        prompt_tokens = sum(
            len(str(m.get("content", "")).split()) for m in body.get("messages", [])
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        if not body.get("stream"):
            self._json(
                200,
                {
                    "id": f"chatcmpl-{n}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": text},
                        }
                    ],
                    "usage": usage,
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        # Chunked, as real servers stream: a connection cut before the last chunk is an error
        # the client can see, not a quiet end of the body.
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        self._sse(chunk({"role": "assistant", "content": ""}))
        # Any request logged after this one cuts it, as llama-cpp-python's server does (counted
        # from the request's own place in the log: two requests arriving together still cut one).
        arrived = n_request + 1
        for i, word in enumerate(words):
            if b.one_at_a_time and len(self.fake.requests) > arrived:
                self._chunk(b"data: [DONE]\n\n")  # cut off by a newer request
                self._chunk(b"")
                return
            if b.fault in ("hang", "reset", "malformed") and i == b.fault_after_words:
                if b.fault == "hang":
                    release = self.fake._release
                    while not (self.fake._stop.is_set() or release.is_set()):
                        release.wait(0.05)
                elif b.fault == "reset":
                    # SO_LINGER 0 makes close() send RST: a connection reset mid-stream.
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    # The file objects hold references to the socket: close them all so the
                    # descriptor really closes now.
                    self.wfile.close()
                    self.rfile.close()
                    self.connection.close()
                    self.close_connection = True
                else:
                    self._chunk(b"data: {this is not json\n\n")
                    self._chunk(b"")
                return
            if b.token_delay_s and self._pause(b.token_delay_s, released):
                return
            self._sse(chunk({"content": word}))
        self._sse(chunk({}, finish_reason))
        if b.usage and (body.get("stream_options") or {}).get("include_usage"):
            self._sse({**chunk({}), "choices": [], "usage": usage})
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")  # the empty chunk ends the body
        with self.fake._lock:
            self.fake.completed[model] += 1

    def _sse(self, obj: dict[str, Any]) -> None:
        self._chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(
        self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":  # python tests/fakeserver.py: serve until Ctrl+C, for manual tries
    s = FakeServer().start()
    print(f"fake OpenAI-compatible server at {s.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        s.stop()
