"""The app as a real server, Chromium to look at it, and a loopback-only network namespace."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLONE_NEWNET = 0x40000000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python -m streamlit run app.py` on a free loopback port, stopped on exit."""

    def __init__(self, env: dict[str, str] | None = None, script: str = "app.py") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {**os.environ, **(env or {})}
        self.script = script
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.log = b""

    def start(self) -> AppServer:
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                self.script,
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
                "--server.address",
                "127.0.0.1",
                "--server.port",
                str(self.port),
                "--server.fileWatcherType",
                "none",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        # Drain the output in the background: a full pipe would block the server.
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log += line

    def wait_healthy(self, timeout_s: float = 30.0) -> float:
        """Seconds from start() until /_stcore/health answers ok."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited: {self.log.decode(errors='replace')}")
            try:
                with urllib.request.urlopen(self.url + "_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - self.started_at
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"streamlit did not start: {self.log.decode(errors='replace')}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def app_env(db, presets, preset: str = "") -> dict[str, str]:
    """The environment of an app server on a test's own log and presets folder, with every
    `*_API_KEY` of the developer's environment blanked (the app must not see real keys)."""
    env = {"MOA_DB": str(db), "MOA_PRESETS_DIR": str(presets), "MOA_PRESET": preset}
    return env | {k: "" for k in os.environ if k.endswith("_API_KEY")}


def pick_preset(page, name: str) -> None:
    """Choose a preset in the sidebar's Preset select box."""
    page.get_by_test_id("stSelectbox").filter(has_text="Preset").click()
    page.get_by_role("option", name=name, exact=True).click()


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def submit_prompt(page, prompt: str) -> None:
    """Start a new conversation with `prompt` on the Run page: New conversation if one is open,
    then type it and press Ctrl+Enter (st.form: it submits, i.e. Run)."""
    new = page.get_by_role("button", name="New conversation")
    if new.count() and new.first.is_visible():
        new.first.click()
    box = page.get_by_label("Prompt", exact=True)
    box.fill(prompt)
    box.press("Control+Enter")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def loopback_netns() -> Iterator[str | None]:
    """Enter a network namespace that has only `lo` (calling thread and its children).

    Yields None when it worked, else the reason it could not (not root, no unshare, …); the
    caller then runs in the normal namespace. Network namespaces are per thread, so the
    calling thread's sockets, threads and subprocesses (the app server, Playwright's driver
    and Chromium) end up inside, and the thread is moved back on exit.
    """
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        yield "unshare or ip is not installed"
        return
    holder = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", "ip link set lo up && echo ready && exec sleep 3600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert holder.stdout is not None
    ready = holder.stdout.readline().strip() == b"ready"
    if not ready:
        holder.kill()
        err = holder.stderr.read().decode(errors="replace").strip() if holder.stderr else ""
        holder.wait()
        yield f"unshare -n failed: {err or 'no reason given'}"
        return
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY)
    try:
        try:
            _setns(target)
        except OSError as e:
            yield f"setns failed: {e}"
            return
        try:
            yield None
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
        holder.kill()
        holder.wait()


def interfaces() -> list[str]:
    """Network interfaces the calling thread sees (just ["lo"] inside loopback_netns)."""
    return [name for _, name in socket.if_nameindex()]
