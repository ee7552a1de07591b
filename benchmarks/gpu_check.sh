#!/usr/bin/env bash
# The GPU set of every benchmark in one call, and one table at the end (issue 22).
#
#   benchmarks/gpu_check.sh --prepare   # here: wheels + DSB2018 into .gpu/ (git-ignored)
#   bash benchmarks/gpu_check.sh        # on the GPU machine (the device tool: carry .gpu)
#   benchmarks/gpu_check.sh --tiny      # every step at a tiny size on this CPU (the test suite)
#
# Steps, in this order (each one's own table is printed as it ends; the summary table
# at the end has one line per step with its wall time):
#   1. the card, torch, CUDA;
#   2. bench_train --quick: the training pipeline against the bare (compiled) step,
#      compile time reported apart;
#   3. bench_predict: napari-unet's tiled prediction against MONAI's sliding window;
#   4. bench_time_to_accuracy: AP@0.5 after 30, 60 and 120 s from scratch, with the
#      wall time of each training call;
#   5. bench_accuracy --time-budget 60: `napari-unet train` from launch to exit (the
#      wall-time target), AP@0.5 on the held-out DSB2018 images.
# GPU_CHECK_STEPS="train predict" runs only those steps.  Results also go to $OUT
# (the device tool's output folder) when it is set.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPU="$ROOT/.gpu"
PY="${PYTHON:-python3}"
[ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && PY="$ROOT/.venv/bin/python"
MODE=gpu
case "${1:-}" in
  --prepare) MODE=prepare ;;
  --tiny) MODE=tiny ;;
  "") ;;
  *) echo "gpu_check.sh: unknown argument '$1' (use --prepare, --tiny or nothing)" >&2; exit 2 ;;
esac

if [ "$MODE" = prepare ]; then
  # What the GPU machine lacks (it has torch, numpy, scipy, scikit-image, tifffile,
  # pillow): napari-unet's other compute dependencies and MONAI, as wheels; the data.
  shared="$ROOT/../shared/data"
  [ -d "$shared/dsb2018-nuclei" ] || { echo "gpu_check.sh --prepare: no $shared/dsb2018-nuclei" >&2; exit 1; }
  mkdir -p "$GPU/wheels" "$GPU/data"
  "$PY" -m pip download --no-deps -d "$GPU/wheels" \
    safetensors filelock tqdm imageio lazy_loader monai >/dev/null || exit 1
  rm -rf "$GPU/data/dsb2018-nuclei"
  cp -r "$shared/dsb2018-nuclei" "$GPU/data/"
  du -sh "$GPU"
  echo "ready: run 'bash benchmarks/gpu_check.sh' on the GPU machine with carry ['.gpu']"
  exit 0
fi

DEVICE=cuda
TINY=()
DATA="$GPU/data"
if [ "$MODE" = tiny ]; then
  DEVICE=cpu
  TINY=(--tiny)
elif [ -d "$GPU/wheels" ]; then
  # install what the machine lacks next to the checkout, not into its Python
  "$PY" -m pip install --quiet --no-index --no-deps --target "$GPU/site" "$GPU"/wheels/*.whl \
    || echo "gpu_check.sh: installing the wheels in $GPU/wheels failed" >&2
  export PYTHONPATH="$GPU/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$GPU/inductor-cache}"
STEPS="${GPU_CHECK_STEPS:-train predict accuracy wall}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
TABLE=()

run_step() {  # name, then the command; prints its output, keeps its summary line
  local name="$1" start=$SECONDS status line
  shift
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  echo
  echo "## $name: $*"
  (cd "$WORK" && "$@") 2>&1 | tee "$WORK/$name.log"
  status=${PIPESTATUS[0]}
  line=$(grep -i '^summary' "$WORK/$name.log" | tail -n 1)
  [ "$status" -eq 0 ] || line="FAILED (exit $status): $(tail -n 1 "$WORK/$name.log")"
  TABLE+=("| $name | $((SECONDS - start)) | ${line:-no summary line} |")
}

echo "# gpu_check.sh $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
"$PY" - "$DEVICE" <<'EOF' || exit 1
import sys

import torch

dev = sys.argv[1]
if dev == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu_check.sh: no CUDA device here (use --tiny on a CPU)")
name = torch.cuda.get_device_name() if dev == "cuda" else "CPU (--tiny)"
print(f"# device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

B="$ROOT/benchmarks"
run_step train "$PY" "$B/bench_train.py" --device "$DEVICE" --quick "${TINY[@]}"
run_step predict "$PY" "$B/bench_predict.py" --device "$DEVICE" "${TINY[@]}"
run_step accuracy "$PY" "$B/bench_time_to_accuracy.py" --device "$DEVICE" --recipes fast \
  --budgets 30 60 120 --data "$DATA/dsb2018-nuclei" "${TINY[@]}"
run_step wall "$PY" "$B/bench_accuracy.py" --device "$DEVICE" --only dsb --time-budget 60 \
  --data "$DATA" "${TINY[@]}"

SUMMARY="| step | wall s | summary |
|---|---:|---|"
for row in "${TABLE[@]}"; do SUMMARY+=$'\n'"$row"; done
echo
echo "$SUMMARY"
echo "summary: gpu_check.sh ${#TABLE[@]} steps in $SECONDS s on $DEVICE"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && cp "$WORK"/*.log "$OUT/" 2>/dev/null
  echo "$SUMMARY" > "$OUT/gpu_check.md"
fi
grep -q FAILED <<<"$SUMMARY" && exit 1
exit 0
