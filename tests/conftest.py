"""Shared fixtures: the loopback model server, a fresh database, configs pointing at them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
# Tests must not depend on (or leak) the developer's own keys.
for _name in list(os.environ):
    if _name.endswith("_API_KEY"):
        del os.environ[_name]

from moa.config import ModelSpec, RunConfig  # noqa: E402
from tests.fakeserver import FakeServer  # noqa: E402


@pytest.fixture(scope="session")
def server():
    s = FakeServer().start()
    # litellm's first call in a process sets up clients (~1 s); pay it once, not in a timed test.
    from moa import engine

    engine.run_sync(make_config(s, ["warmup"]), "warm up")
    yield s
    s.stop()


@pytest.fixture
def fake(server):
    """The loopback server with behaviours and request log cleared for this test."""
    server.reset()
    return server


@pytest.fixture
def db_path(tmp_path, monkeypatch):
    path = tmp_path / "moa.db"
    monkeypatch.setenv("MOA_DB", str(path))
    return path


def moa(
    *args: str, stdin: str | None = None, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`python -m moa ARGS` in a fresh process (the environment plus `env`), its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "moa", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def make_config(
    server: FakeServer, proposers: list[str], aggregator: str = "agg", **kw
) -> RunConfig:
    """A config whose models are `openai/<name>` on the loopback server."""
    timeout = kw.pop("timeout_s", None)
    return RunConfig(
        proposers=[
            ModelSpec(model=f"openai/{m}", api_base=server.base_url, label=m, timeout_s=timeout)
            for m in proposers
        ],
        aggregator=ModelSpec(
            model=f"openai/{aggregator}", api_base=server.base_url, label=aggregator
        ),
        name=kw.pop("name", "test"),
        **kw,
    )


@pytest.fixture
def netns():
    """Run app servers, model servers and Chromium with only loopback, when possible (the
    yielded reason why not, else None)."""
    from tests.appserver import interfaces, loopback_netns

    with loopback_netns() as why_not:
        if why_not is None:
            assert interfaces() == ["lo"]
        yield why_not
