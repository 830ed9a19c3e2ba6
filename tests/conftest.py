"""Shared fixtures: the real model is loaded once per session (dequantised once per machine)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))   # tests/strategies.py


@pytest.fixture(autouse=True)
def learner_mode(monkeypatch):
    """Python tests call the exercise checks as a learner would (the root conftest makes notebooks blank).
    In learn mode a checker's own error becomes a "wrong" verdict; a test fails if one did, so that a
    crashing checker cannot pass as a wrong answer rejected (a test that means it clears CHECK_ERRORS)."""
    from layerq_nb.exercises import CHECK_ERRORS
    monkeypatch.setenv("LAYERQ_EXERCISES", "learn")
    monkeypatch.delenv("LAYERQ_SOLVE", raising=False)
    CHECK_ERRORS.clear()
    yield
    errors, CHECK_ERRORS[:] = list(CHECK_ERRORS), []
    assert not errors, f"a check raised instead of giving a verdict: {errors}"


@pytest.fixture(scope="session")
def real():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct, from the cache or the shipped GGUF."""
    from layerq_nb import load_model
    return load_model("smollm2-135m", device=os.environ.get("LAYERQ_DEVICE", "cpu"))


@pytest.fixture(scope="session")
def tiny():
    from layerq_nb import load_model
    return load_model("tiny-llama", device=os.environ.get("LAYERQ_DEVICE", "cpu"))


# ----------------------------------------------------------------------------- browser tests (tests/browser)
# Debian's chromium driven by pytest-playwright (no browser download); skipped with a reason when no
# chromium binary is installed (`apt-get install chromium`); CI installs it.

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-dev-shm-usage"]


def pytest_collection_modifyitems(config, items):
    if CHROMIUM:
        return
    skip = pytest.mark.skip(reason="no chromium binary: apt-get install chromium (or set CHROMIUM_PATH)")
    for item in items:
        if "browser" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": ARGS}


@pytest.fixture
def console_errors(page):
    """Every console error and uncaught page error of the test's page."""
    errors = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: errors.append(str(err)))
    return errors


# --- a real JupyterLab server for the browser tests: `start_lab(root, log, token=...)` starts one serving
# `root` on a free port and waits until it answers; every server a module started is stopped at its end
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def start_lab():
    servers = []

    def start(root: Path, log: Path, *, token: str) -> str:
        port = free_port()
        out = open(log, "w")
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
             "--LabApp.news_url=", "--allow-root", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "JUPYTER_PLATFORM_DIRS": "1"})
        servers.append(server)
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                return url
            except OSError:
                time.sleep(0.5)
        pytest.fail("jupyter lab did not start: " + Path(log).read_text()[-2000:])

    yield start
    for server in servers:
        server.terminate()
        server.wait(timeout=20)
