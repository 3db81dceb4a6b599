"""Servers for integration tests: the real vLLM CPU rig (once per session) and the built-in sim."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not healthy after {timeout} s")


def trilemma(*args, check=True, timeout=600, env=None, **kw) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (a subprocess), returning its output."""
    p = subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT, env={**os.environ, "COLUMNS": "200", **(env or {})}, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"trilemma {' '.join(map(str, args))} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


class Sim:
    def __init__(self, *args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "sim", "--port", str(self.port), *map(str, args)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        wait_healthy(self.url, self.proc)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def sim_factory():
    sims = []

    def make(*args):
        s = Sim(*args)
        sims.append(s)
        return s

    yield make
    for s in sims:
        s.stop()


@pytest.fixture(scope="session")
def vllm_server():
    """The real vLLM OpenAI server (CPU) on a free port with the tiny local Llama."""
    import vllm_rig

    proc, url = vllm_rig.start_server()
    yield {"url": url, "model": vllm_rig.SERVED_NAME, "proc": proc, "rig": vllm_rig}
    vllm_rig.stop_server(proc)
