"""Servers trilemma starts itself (`trilemma run --launch`, a sweep's `target: {launch: ...}`): the exact
command, its log, its version, and a teardown that leaves no process behind.

A launched server runs in a process group of its own (same session), so stopping it ends the whole tree
(vLLM's engine and worker processes included): SIGTERM to the group, then SIGKILL after a grace period.
A watchdog process in its own session watches trilemma itself: when trilemma dies without stopping the
server (`kill -9`, an OOM kill), the watchdog tears the group down (and removes the container of a
`image:` launch, which a killed `docker run` client would leave running).

The command is a template: `{port}` (a free port picked here), `{host}`, and every key of the serve
parameters (`params`) are filled in token by token (a value with spaces stays one argument).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.config import LaunchSpec

HOST = "127.0.0.1"
# the environment variables recorded with a launched server (what changes its behaviour; never secrets)
RECORDED_ENV = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "VLLM_ATTENTION_BACKEND", "VLLM_USE_V1", "VLLM_TARGET_DEVICE",
                "VLLM_CPU_KVCACHE_SPACE", "OMP_NUM_THREADS", "NCCL_P2P_DISABLE")


class LaunchError(RuntimeError):
    """The server did not start or did not become healthy; the message carries its log's last lines."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def config_label(params: dict[str, Any]) -> str:
    """A serve config as a label: 'max_num_seqs=16 chunked=true' ('' for no parameters)."""
    return " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(params.items()))


def config_hash(cmd: str, params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([cmd, params], sort_keys=True).encode()).hexdigest()[:10]


def render(spec: LaunchSpec, params: dict[str, Any], port: int, name: str = "trilemma-server") -> list[str]:
    """The argv of one server start: the template's tokens filled in; with `image:` the `docker run` line."""
    values = {"port": port, "host": HOST, **{k: (str(v).lower() if isinstance(v, bool) else v) for k, v in params.items()}}
    try:
        argv = [tok.format(**values) for tok in shlex.split(spec.cmd)]
    except KeyError as e:
        raise LaunchError(f"launch command uses {{{e.args[0]}}}, which is neither port, host nor a serve parameter "
                          f"({', '.join(sorted(params)) or 'none given'})") from None
    except ValueError as e:
        raise LaunchError(f"launch command: {e}") from None
    if spec.image is None:
        return argv
    cache = os.path.expanduser("~/.cache/huggingface")
    return ["docker", "run", "--rm", "--name", name, "--gpus", spec.gpus, "--ipc=host", "-p", f"{HOST}:{port}:{port}",
            "-v", f"{cache}:/root/.cache/huggingface", *(a for k, v in spec.env.items() for a in ("-e", f"{k}={v}")),
            *spec.docker_args, spec.image, *argv]


class LaunchedServer:
    """One start of a serve config: `start()` returns its URL once healthy; `stop()` ends its process group."""

    def __init__(self, spec: LaunchSpec, params: dict[str, Any], log_dir: Path):
        self.spec, self.params = spec, dict(params)
        self.log_dir = Path(log_dir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.argv: list[str] = []
        self.version: str | None = None
        self.starts = 0
        self.name = f"trilemma-{os.getpid()}-{config_hash(spec.cmd, self.params)}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "server.log"

    def start(self) -> str:
        import httpx

        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.argv = render(self.spec, self.params, self.port, self.name)
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n=== trilemma start {self.starts} at {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(self.argv)}\n".encode())
        log.flush()
        try:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **self.spec.env}, preexec_fn=os.setpgrp)
        except OSError as e:
            raise LaunchError(f"cannot start the server ({self.argv[0]}: {e.strerror}); check target.launch.cmd") from None
        finally:
            log.close()
        self.watchdog = subprocess.Popen([sys.executable, "-m", "bench.launch", str(os.getpid()), str(self.proc.pid),
                                          self.name if self.spec.image else ""],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        t_end = time.monotonic() + self.spec.startup_timeout_s
        paths = [self.spec.health_path] if self.spec.health_path else ["/v1/models"]
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise LaunchError(f"the server exited with status {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                if all(httpx.get(self.url + p, timeout=2).status_code == 200 for p in paths):
                    self.version = self._version()
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise LaunchError(f"the server did not answer {self.url}{paths[0]} within {self.spec.startup_timeout_s:g} s "
                          f"(raise target.launch.startup_timeout_s if it loads slowly):\n{self.log_tail()}")

    def _version(self) -> str | None:
        import httpx

        try:
            r = httpx.get(self.url + "/version", timeout=2)
            return str(r.json().get("version")) if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join("  | " + ln for ln in lines[-n:])

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after `grace_s`; the watchdog is ended too."""
        if self.proc is not None:
            stop_group(self.proc.pid, grace_s)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            if self.spec.image:
                subprocess.run(["docker", "rm", "-f", self.name], capture_output=True)
        if self.watchdog is not None and self.watchdog.poll() is None:
            self.watchdog.terminate()
            self.watchdog.wait(5)

    def record(self) -> dict[str, Any]:
        """What run.json keeps about the server: the exact command, its parameters, version, log, environment."""
        return {"command": shlex.join(self.argv), "argv": self.argv, "pid": self.proc.pid if self.proc else None,  # = its process group
                "template": self.spec.cmd, "params": self.params,
                "config": config_label(self.params), "image": self.spec.image, "version": self.version, "starts": self.starts,
                "log": str(self.log_path), "env": {k: os.environ[k] for k in RECORDED_ENV if k in os.environ} | dict(self.spec.env)}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_group(pgid: int, grace_s: float = 20.0) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    t_end = time.monotonic() + grace_s
    while time.monotonic() < t_end and _group_alive(pgid):
        time.sleep(0.2)
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def watch(parent: int, pgid: int, container: str = "") -> None:
    """The watchdog: wait while trilemma (`parent`) lives; if it dies first, end the server's group."""
    while _group_alive(pgid):
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            stop_group(pgid)
            if container:
                subprocess.run(["docker", "rm", "-f", container], capture_output=True)
            return
        time.sleep(0.5)


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "")
