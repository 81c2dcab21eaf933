#!/usr/bin/env bash
# The one prepared GPU check: correctness (pytest -m gpu), MAE ViT-B/16 and ViT-L/16 throughput at 224 px bf16
# (engine vs a plain eager loop, share of the card's bf16 peak), generator training and sampling rates, and a
# time-boxed real-data run; about 7 minutes on one H100. Writes docs/bench/device.json after every part.
#
#   bash benchmarks/device_check.sh                 # on a CUDA machine: docs/bench/device.json
#   bash benchmarks/device_check.sh --smoke         # tiny sizes on any machine (the test suite runs this on CPU)
#   bash benchmarks/device_check.sh --out F.json    # write elsewhere; other arguments go to device_check.py
#
# Python: the first of .venv/bin/python and python3 that imports torch, timm, diffusers and accelerate (on a full
# run: with CUDA available) runs everything, with src/ on PYTHONPATH if synthfm is not installed in it. Only when
# neither does and .venv is missing does it run `make install` (which needs PyPI). The real-data part reads
# RetinaMNIST from $SYNTHFM_DATA, ../shared/data or runs/data (carry runs/data/retinamnist to a bare machine);
# without it, it uses a fundus phantom and says so. When $OUT is set (the device machine), the JSON and the log
# are copied there as well.
set -u
cd "$(dirname "$0")/.."
export SYNTHFM_PROGRESS=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

SMOKE=0
OUTFILE=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; ARGS+=("--smoke") ;;
    --out) OUTFILE="$2"; shift ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
if [ -z "$OUTFILE" ]; then
  if [ "$SMOKE" = 1 ]; then OUTFILE="${TMPDIR:-/tmp}/synthfm_device_smoke.json"; else OUTFILE="docs/bench/device.json"; fi
fi

usable() {  # usable PYTHON: imports the stack (and sees CUDA on a full run)
  local need="import torch, timm, diffusers, accelerate"
  [ "$SMOKE" = 1 ] || need="$need; assert torch.cuda.is_available()"
  [ -x "$(command -v "$1" 2>/dev/null)" ] && "$1" -c "$need" >/dev/null 2>&1
}

PY=""
for cand in .venv/bin/python python3; do
  if usable "$cand"; then PY="$cand"; break; fi
done
if [ -z "$PY" ] && [ ! -d .venv ]; then
  echo "[device_check] no Python with torch + timm + diffusers + accelerate; make install" >&2
  make install >&2 && PY=.venv/bin/python
fi
if [ -z "$PY" ]; then
  PY=python3
  echo "[device_check] warning: no Python passed the check (torch stack$([ "$SMOKE" = 1 ] || echo ' with CUDA')); trying $PY" >&2
fi
if ! "$PY" -c "import synthfm" >/dev/null 2>&1; then
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "[device_check] python: $PY ($("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.cuda.is_available())' 2>&1))" >&2

LOG="${OUTFILE%.json}.log"
mkdir -p "$(dirname "$OUTFILE")"
"$PY" benchmarks/device_check.py --out "$OUTFILE" "${ARGS[@]}" 2> >(tee "$LOG" >&2)
rc=$?
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$OUTFILE" "$OUT/" 2>/dev/null
  cp "$LOG" "$OUT/" 2>/dev/null
fi
exit $rc
