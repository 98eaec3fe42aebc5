"""The README's promise: a real MoA on the embedded local models with no key and no network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.local

# Runs inside the child before moa loads: any connection to a non-loopback address raises.
GUARD = """
import socket, sys
def guard(event, args):
    if event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else str(address)
        if isinstance(address, tuple) and host not in ("127.0.0.1", "::1", "localhost"):
            raise RuntimeError(f"network access attempted: {address!r}")
sys.addaudithook(guard)
sys.argv = ["moa", *sys.argv[1:]]
from moa.cli import main
sys.exit(main())
"""


def _no_network_prefix() -> list[str]:
    """`unshare -n` (a network namespace with nothing in it) where this machine allows it."""
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return ["unshare", "-n"] if probe.returncode == 0 else []


def test_local_quick_runs_offline_with_no_keys(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["MOA_DB"] = str(tmp_path / "moa.db")
    prefix = _no_network_prefix()
    if not prefix:
        print("unshare -n unavailable here: relying on the socket audit hook alone")
    proc = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-c",
            GUARD,
            "run",
            "Give two tips for learning to cook.",
            "--preset",
            "local-quick",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["status"] == "ok"
    assert [c["model"] for c in out["candidates"]] == ["local/smollm2-135m"] * 3
    assert all(c["status"] == "ok" and c["text"].strip() for c in out["candidates"])
    assert out["final"]["text"].strip()
    assert out["usage"]["cost_usd"] == 0.0  # local models are free
    assert out["attribution"]  # what the aggregator kept, sentence by sentence
    assert "network access attempted" not in proc.stderr
