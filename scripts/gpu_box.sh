#!/usr/bin/env bash
# One command on a fresh Ubuntu GPU machine (a rented box): install trilemma and vLLM, find the SLO knee of a
# model served by vLLM that trilemma launches itself, and write the report.
#
#   scripts/gpu_box.sh MODEL [options]
#     --vllm VERSION     vLLM release to install (default 0.11.0)
#     --tp N             tensor-parallel size = GPUs per replica (default 1)
#     --isl N --osl N    workload cell (default 512 / 128)
#     --slo LIST         SLOs (default ttft_p99=500ms,itl_p99=50ms)
#     --serve-args ARGS  more `vllm serve` flags, e.g. "--max-num-seqs 256 --enable-prefix-caching"
#     --out DIR          results directory (default results/)
#     --dry-run          print the sweep spec and the commands; install and run nothing
#
# The GPU is labelled from nvidia-smi (h100 / h200 / a100, as in bench/catalog/gpus.yaml), so the report prices
# the knee; the model is downloaded by vLLM itself (set HF_TOKEN for gated models).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VLLM_VERSION="0.11.0"
TP=1
ISL=512
OSL=128
SLO="ttft_p99=500ms,itl_p99=50ms"
SERVE_ARGS=""
OUT="$ROOT/results"
DRY=0
MODEL=""

die() { echo "gpu_box.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --vllm) VLLM_VERSION="${2:?--vllm needs a version}"; shift 2 ;;
    --tp) TP="${2:?--tp needs a number}"; shift 2 ;;
    --isl) ISL="${2:?--isl needs a number}"; shift 2 ;;
    --osl) OSL="${2:?--osl needs a number}"; shift 2 ;;
    --slo) SLO="${2:?--slo needs a list}"; shift 2 ;;
    --serve-args) SERVE_ARGS="${2?--serve-args needs flags}"; shift 2 ;;
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$MODEL" ] || die "one MODEL only (got '$MODEL' and '$1')"; MODEL="$1"; shift ;;
  esac
done
[ -n "$MODEL" ] || die "give the model to serve, e.g. scripts/gpu_box.sh meta-llama/Llama-3.1-8B-Instruct"
[[ "$TP" =~ ^[1-9][0-9]*$ ]] || die "--tp must be a positive integer, got '$TP'"
[[ "$ISL" =~ ^[1-9][0-9]*$ && "$OSL" =~ ^[1-9][0-9]*$ ]] || die "--isl and --osl must be positive integers"

VENV="${TRILEMMA_BOX_VENV:-$HOME/trilemma-box}"
GPU_NAME="$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true) | head -n 1)"
case "${GPU_NAME,,}" in
  *h200*) GPU=h200 ;;
  *h100*) GPU=h100 ;;
  *a100*) GPU=a100 ;;
  "") GPU=unknown ;;
  *) GPU="$(echo "$GPU_NAME" | tr '[:upper:] ' '[:lower:]-')" ;;
esac
SLUG="$(echo "$MODEL" | tr '/:' '--' | tr -cd 'A-Za-z0-9._-')"
NAME="box-$SLUG-tp$TP"
SPEC="$OUT/$NAME.yaml"

slos_yaml() {  # ttft_p99=500ms,itl_p99=50ms -> "{ttft_p99: 500ms, itl_p99: 50ms}"
  local out="" item
  IFS=',' read -r -a items <<< "$SLO"
  for item in "${items[@]}"; do out+="${out:+, }${item%%=*}: ${item#*=}"; done
  echo "{$out}"
}

write_spec() {
  mkdir -p "$OUT"
  cat > "$SPEC" <<EOF
# written by scripts/gpu_box.sh for $MODEL on $GPU_NAME (tensor parallel $TP)
name: $NAME
target:
  api: chat
  launch:
    cmd: "$VENV/bin/vllm serve $MODEL --host 127.0.0.1 --port {port} --tensor-parallel-size $TP $SERVE_ARGS"
    startup_timeout_s: 1800
cells:
  - {name: chat-$ISL-$OSL, isl: $ISL, osl: $OSL}
load: auto
slos: $(slos_yaml)
duration_s: 30
warmup: 10s
labels: {gpu: $GPU, gpus: "$TP"}
EOF
}

if [ "$DRY" = 1 ]; then
  write_spec
  echo "# sweep spec: $SPEC"
  cat "$SPEC"
  echo "# would run: install trilemma and vllm==$VLLM_VERSION into $VENV; trilemma sweep $SPEC --out $OUT; trilemma report $OUT/$NAME"
  exit 0
fi

command -v nvidia-smi >/dev/null || die "no nvidia-smi: this script is for a GPU machine with the NVIDIA driver installed"
if ! python3 -m venv --help >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q && $SUDO apt-get install -y -q python3-venv python3-pip
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e "$ROOT" "vllm==$VLLM_VERSION"
write_spec
echo "sweep spec: $SPEC"
"$VENV/bin/trilemma" sweep "$SPEC" --out "$OUT"
"$VENV/bin/trilemma" report "$OUT/$NAME" --out "$ROOT/reports" --name "$NAME"
echo "report: $ROOT/reports/$NAME/index.html"
