"""A MoA on the real llama-cpp-python OpenAI-compatible server (`python -m llama_cpp.server`), which
serves one request at a time and cuts the stream in progress when another request arrives.

The server runs SmolLM2-135M on 127.0.0.1 (a free port) for this module and is stopped after.
Its extras (fastapi, sse-starlette, starlette-context, pydantic-settings, uvicorn) are pinned
in requirements-dev.txt.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace

import pytest

from moa import engine, local
from moa.config import ModelSpec, RunConfig, validate
from tests.appserver import free_port

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's server extras missing")

PROMPT = "Name one colour of the sky."


@pytest.fixture(scope="module")
def llamacpp_server(tmp_path_factory):
    gguf = local.weights_path("local/smollm2-135m")
    port = free_port()
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--model_alias",
                "smollm2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as r:
                    assert json.load(r)["data"][0]["id"] == "smollm2"
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _config(base: str, **kw) -> RunConfig:
    def spec(label: str) -> ModelSpec:
        return ModelSpec(
            model="openai/smollm2", api_base=base, label=label, temperature=0.0, max_tokens=48
        )

    return validate(
        RunConfig(proposers=[spec("first"), spec("second")], aggregator=spec("agg"), **kw)
    )


@pytest.mark.timeout(300)
def test_a_moa_on_llamacpp_server_succeeds_with_a_concurrency_limit(llamacpp_server):
    cfg = _config(llamacpp_server, concurrency={llamacpp_server: 1})
    record = engine.run_sync(cfg, PROMPT)
    assert record.status == "ok", record.error
    assert [c.status for c in record.calls] == ["ok", "ok", "ok"], [c.error for c in record.calls]
    assert all(c.text.strip() for c in record.calls)
    # One at a time: each call started after the one before it ended.
    first, second = sorted(record.proposer_calls, key=lambda c: c.start_s)
    assert second.start_s >= first.start_s + first.latency_s - 0.05


@pytest.mark.timeout(300)
def test_without_the_limit_the_cut_off_proposer_says_to_set_concurrency(llamacpp_server):
    record = engine.run_sync(_config(llamacpp_server), PROMPT)
    failed = [c for c in record.proposer_calls if c.status == "failed"]
    assert failed, [(c.status, c.text) for c in record.proposer_calls]
    for call in failed:
        assert "empty answer" not in call.error
        assert "one request at a time" in call.error
        assert f'`[concurrency]` with `"{llamacpp_server}" = 1`' in call.error
    # The same config with the limit, as the message says, runs clean.
    fixed = replace(_config(llamacpp_server), concurrency={llamacpp_server: 1})
    assert engine.run_sync(validate(fixed), PROMPT).status == "ok"
