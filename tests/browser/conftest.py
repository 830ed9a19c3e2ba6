"""A real JupyterLab server for the browser tests: `start_lab(root, log, token=...)` starts one serving
`root` on a free port, waits until it answers, and every server a module started is stopped at its end."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


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
