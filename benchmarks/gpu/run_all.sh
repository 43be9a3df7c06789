#!/usr/bin/env bash
# One entry for the GPU checks of the pretraining and detector steps (benchmarks/gpu/README.md).
#
#   bash benchmarks/gpu/run_all.sh "$OUT"              # on the GPU machine, ~9 minutes
#   bash benchmarks/gpu/run_all.sh /tmp/gpu_dry --dry-run   # here: no installs, CPU, --tiny
#
# Parts, each under its own timeout (capped by what is left of TOTAL_S, default 540 s):
#   install  jax[cuda13]==0.10.2 + the project (only if a package index answers; else the
#            machine's own jax / torch are used and the log says so); wheels in .whl/ if carried
#   env      nvidia-smi, jax devices, versions
#   pretrain pretrain_mfu.py: variants interleaved in one process, MFU, 2 profiles
#   detector detector_step.py: train step time + profile
#   torch    torch_pretrain.py: the same pretraining step in PyTorch, ratio JAX / torch
# Caps (seconds, env; 0 skips the part): PRETRAIN_S=300 COMPILE_BUDGET_S=200 (then up to
# COMPILE_GRACE_S=60 more for compiles already running) ROI_CHECK_S=45
# DETECTOR_S=130 TORCH_S=120;
# OFFLINE=1 skips probing for a package index (the device image has none).
# OUT gets at most 5 files (the device returns 8): results.md, profile_summary.md,
# results.json, run_log.txt, traces.tgz (trace events json of the profiles, if under 15 MB).
set -u -o pipefail
OUT=${1:?usage: bash benchmarks/gpu/run_all.sh OUT_DIR [--dry-run]}
DRY=0
[[ "${2:-}" == "--dry-run" ]] && DRY=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/benchmarks/gpu
WORK=${WORK:-/tmp/regionclip_gpu_work}
TOTAL=${TOTAL_S:-540}
START=$(date +%s)
rm -rf "$WORK" && mkdir -p "$OUT" "$WORK"
LOG=$OUT/run_log.txt
: >"$LOG"
export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

log() { echo "[$(date +%T) +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((TOTAL - ($(date +%s) - START))); }
# part NAME MAX_S CMD...: run CMD under min(MAX_S, time left - 20 s), output into the log
part() {
  local name=$1 max=$2 t
  shift 2
  if ((max == 0)); then
    log "SKIP $name: cap 0"
    echo "| $name | skipped: cap 0 |" >>"$WORK/status.md"
    return 0
  fi
  t=$(($(left) - 20))
  ((t > max)) && t=$max
  if ((t < 15)); then
    log "SKIP $name: out of time"
    echo "| $name | skipped: out of time |" >>"$WORK/status.md"
    return 1
  fi
  log "START $name (timeout ${t}s): $*"
  timeout --kill-after=10 "$t" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  log "END $name rc=$rc"
  echo "| $name | rc=$rc$( ((rc == 124)) && echo ' (timed out)') |" >>"$WORK/status.md"
  return "$rc"
}

PY=${PYTHON:-python3}
TINY=()
if ((DRY)); then
  [[ -x $ROOT/.venv/bin/python ]] && PY=$ROOT/.venv/bin/python
  export JAX_PLATFORMS=cpu
  TINY=(--tiny)
  VARIANTS=${VARIANTS:-before,base,teacher_bf16_b24}
  log "dry run: no installs, CPU, --tiny, variants $VARIANTS"
else
  VARIANTS=${VARIANTS:-before,base,batch24,teacher_bf16,chunk64,roi_f32,attnpool_unfolded,remat}
fi
if ((DRY || ${NO_INSTALL:-0})); then
  log "no installs: $PY as it is"
else
  if [[ -d $ROOT/.whl ]] && ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then  # carried wheels
    part wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/whl" \
      "$ROOT"/.whl/*.whl && export PYTHONPATH=$WORK/whl:$PYTHONPATH
  fi
  if ((!${OFFLINE:-0})) && timeout 15 "$PY" -m pip download -q --no-deps --retries 0 --timeout 5 -d "$WORK/probe" six \
    >/dev/null 2>&1; then
    log "a package index answers: installing jax[cuda13]==0.10.2 and the project"
    PINS=$(grep -E '^(flax|optax|grain|ml_collections|absl-py|etils|numpy)==' "$ROOT/requirements.txt")
    # shellcheck disable=SC2086  # one pin per word
    if part install_jax 180 "$PY" -m pip install -q --target "$WORK/site" "jax[cuda13]==0.10.2" $PINS \
      && PYTHONPATH=$WORK/site:$PYTHONPATH "$PY" -c "import jax; jax.devices('gpu')"; then
      export PYTHONPATH=$WORK/site:$PYTHONPATH
    else
      log "jax[cuda13]==0.10.2 not usable here: falling back to this machine's own jax"
    fi
    part install_project 60 "$PY" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"
    if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
      part install_torch 200 "$PY" -m pip install -q --target "$WORK/torch" torch==2.13.0
    fi
    "$PY" -c "import clip" 2>/dev/null \
      || part clip_wheel 30 "$PY" -m pip download -q --no-deps -d "$WORK/wheels" clip-anytorch==2.6.0
  else
    log "no package index reachable: using this machine's own jax and torch (see env below)"
  fi
fi

# (a) machine and versions
{
  echo '```'
  date -u
  echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) $(git -C "$ROOT" status --short 2>/dev/null | wc -l) changed files"
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__); print(jax.devices())" 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1
  echo '```'
} >"$WORK/env.md"
tee -a "$LOG" <"$WORK/env.md"

# (b, c) pretraining variants, MFU, profiles of the baseline and the fastest
part pretrain "${PRETRAIN_S:-300}" "$PY" "$HERE/pretrain_mfu.py" --out="$WORK" \
  --variants="$VARIANTS" --budget_s="${COMPILE_BUDGET_S:-200}" --grace_s="${COMPILE_GRACE_S:-60}" \
  "${TINY[@]}"
# (c') RoIAlign's 16-bit branch against float32 at the pretraining shapes: errors and times
part roi_check "${ROI_CHECK_S:-45}" "$PY" "$HERE/roi_align_check.py" --out="$WORK" "${TINY[@]}"
# (d) detector train step + profile
part detector "${DETECTOR_S:-130}" "$PY" "$HERE/detector_step.py" --out="$WORK" --batch=2 "${TINY[@]}"
# (e) the same pretraining step in PyTorch (the machine's torch, else the one installed above)
TORCH_PATH=$ROOT
[[ -d $WORK/torch ]] && TORCH_PATH=$WORK/torch:$ROOT
PYTHONPATH=$TORCH_PATH part torch "${TORCH_S:-120}" "$PY" "$HERE/torch_pretrain.py" --out="$WORK" \
  --jax_json="$WORK/pretrain_mfu.json" --wheels="$ROOT/.whl,$WORK/wheels" "${TINY[@]}"
if ((!DRY)) && (($(left) > 150)); then  # torch.compile, if time is left
  PYTHONPATH=$TORCH_PATH part torch_compile 120 "$PY" "$HERE/torch_pretrain.py" --out="$WORK" \
    --compile --jax_json="$WORK/pretrain_mfu.json" --wheels="$ROOT/.whl,$WORK/wheels"
fi

# (f) one folder of results
cat_or() { if [[ -s $1 ]]; then cat "$1"; else echo "($2: no result, see run_log.txt)"; fi; }
{
  echo "# RegionCLIP GPU checks ($( ((DRY)) && echo 'dry run, CPU, tiny' || echo 'device'))"
  echo
  echo "Written by benchmarks/gpu/run_all.sh in $(($(date +%s) - START)) s. Profiles: profile_summary.md."
  echo
  echo "| part | status |"
  echo "|---|---|"
  cat "$WORK/status.md"
  echo
  cat "$WORK/env.md"
  echo
  cat_or "$WORK/pretrain_mfu.md" pretrain
  echo
  cat_or "$WORK/roi_align_check.md" roi_check
  echo
  cat_or "$WORK/detector_step.md" detector
  echo
  cat_or "$WORK/torch_pretrain.md" torch
  [[ -s $WORK/torch_pretrain_compile.md ]] && tail -n 1 "$WORK/torch_pretrain_compile.md"
} >"$OUT/results.md"
{
  echo "# Profiles (ms per step, from the jax.profiler trace events)"
  echo
  cat_or "$WORK/profile_pretrain.md" "pretrain profile"
  echo
  cat_or "$WORK/profile_detector.md" "detector profile"
} >"$OUT/profile_summary.md"
"$PY" - "$WORK" "$OUT/results.json" <<'EOF'
import glob, json, os, sys
work, out = sys.argv[1:]
res = {os.path.basename(p)[:-5]: json.load(open(p)) for p in sorted(glob.glob(f"{work}/*.json"))}
json.dump(res, open(out, "w"), indent=1)
EOF
TRACES=$(cd "$WORK" && find traces -name '*.trace.json.gz' 2>/dev/null)
[[ -n $TRACES ]] && (cd "$WORK" && echo "$TRACES" | tar czf "$OUT/traces.tgz" -T -)
if [[ -f $OUT/traces.tgz ]] && (($(stat -c %s "$OUT/traces.tgz") > 15000000)); then
  rm -f "$OUT/traces.tgz" && log "traces.tgz over 15 MB: left in $WORK/traces"
fi
log "done: $(ls "$OUT" | tr '\n' ' ')"
tail -n 40 "$OUT/results.md"
