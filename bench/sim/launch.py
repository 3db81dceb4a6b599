"""Start the simulator as its own process (`trilemma sim`) and wait until it answers: what the CLI,
calibration and the memory check use. Nothing here imports the measurement stack."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimStartError(ValueError):
    """The simulator exited or did not answer; the message is its own one-line reason."""


def start_sim(*args: str, timeout_s: float = 30.0, tries: int = 3) -> tuple[subprocess.Popen, str]:
    """Start `trilemma sim` on a free port and wait for /health. The child exits with this process
    (TRILEMMA_SIM_PARENT: the simulator watches its parent, see sim.server.exit_with_parent); if it exits
    early, its own error line is raised at once — except a port taken between choosing and binding it
    (another process's outgoing connection can take any free port), which is retried on a new one."""
    for attempt in range(tries):
        try:
            return _start_once(args, timeout_s)
        except SimStartError as e:
            if "address already in use" not in str(e) or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def _start_once(args: tuple[str, ...], timeout_s: float) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    err = tempfile.TemporaryFile()
    p = subprocess.Popen([sys.executable, "-m", "bench.cli", "sim", "--port", str(port), *args], stdout=subprocess.DEVNULL,
                         stderr=err, env={**os.environ, "TRILEMMA_SIM_PARENT": str(os.getpid())})
    url = f"http://127.0.0.1:{port}"
    t_end = time.monotonic() + timeout_s
    try:
        while time.monotonic() < t_end:
            if p.poll() is not None:
                err.seek(0)
                lines = [ln for ln in err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
                why = lines[-1].removeprefix("error: ") if lines else f"exit status {p.returncode}"
                raise SimStartError(f"the simulator did not start: {why}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    return p, url
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        p.kill()
        p.wait(5)
        raise SimStartError(f"the simulator did not answer {url}/health within {timeout_s:g} s (is this machine overloaded?)")
    finally:
        err.close()
