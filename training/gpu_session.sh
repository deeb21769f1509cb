#!/bin/bash
# One GPU session's teacher run, in two steps (README "Teachers on a GPU").
#
#   training/gpu_session.sh pack [DATA_DIR]   # here: .gpudata/ = the training npz + PublicTest alone, xz-compressed
#                                             # (61 MiB with the working tree: under a device call's 64 MiB)
#   training/gpu_session.sh run               # on the GPU machine, from the repository root, .gpudata/ carried:
#                                             # teachers, their ensemble and three students; results packed into $OUT
#
# `run` trains the three teacher configs in parallel for TEACHER_MIN minutes each (default 4.5), writes their
# ensemble's predictions, distils them into the student configs for STUDENT_MIN minutes (default 2.5), and packs
# into $OUT: records.tgz (summary, every run's records, logs and predictions, no weights) and one tgz per student
# with its exported model. Inside 10 minutes; Python is cut off at PY_LIMIT seconds (default 540) so that packing
# still runs. EXTRA adds arguments to training/gpu_teachers.py (a CPU smoke run: EXTRA="--cpu --teacher debug ...").
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
STUDENTS="student_kd_scratch student_kd_scratch_robust student_kd_finetune"
case "${1:-}" in
pack)
  DATA=${2:-$REPO/../shared/data/fer2013}
  mkdir -p "$REPO/.gpudata"
  grep -qx '/.gpudata/' "$REPO/.git/info/exclude" 2>/dev/null || echo '/.gpudata/' >> "$REPO/.git/info/exclude"
  cp "$DATA/fer2013_train.npz" "$REPO/.gpudata/"
  PY=${PYTHON:-$REPO/.venv/bin/python}  # the project's environment (numpy), else whatever python3 is
  [ -x "$PY" ] || PY=python3
  "$PY" - "$DATA/fer2013_test.npz" "$REPO/.gpudata/fer2013_test.npz.xz" <<'PY'
import io, lzma, sys
import numpy as np
d = np.load(sys.argv[1])
keep = d["usage"] == 1  # PublicTest: PrivateTest is never scored on the GPU machine
buf = io.BytesIO()
np.savez(buf, **{k: d[k][keep] for k in ("pixels", "emotion", "usage", "row")})
open(sys.argv[2], "wb").write(lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))
PY
  du -sh "$REPO/.gpudata"
  ;;
run)
  export PYTHONUNBUFFERED=1
  R=${RUN_DIR:-/tmp/gpu_ensemble_1}
  cd "$REPO" || exit 1
  mkdir -p /tmp/fer
  ln -sf "$REPO/.gpudata/fer2013_train.npz" /tmp/fer/fer2013_train.npz
  python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.gpudata/fer2013_test.npz.xz'), open('/tmp/fer/fer2013_test.npz','wb'))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  date -u
  args=()
  for s in $STUDENTS; do args+=(--student "$s"); done
  # shellcheck disable=SC2086  # EXTRA is a list of arguments
  timeout "${PY_LIMIT:-540}" python3 training/gpu_teachers.py /tmp/fer --out "$R" --minutes "${TEACHER_MIN:-4.5}" \
    "${args[@]}" --student-minutes "${STUDENT_MIN:-2.5}" ${EXTRA:-}
  echo "gpu_teachers exit $?"
  date -u
  cd "$R" || { echo "no results in $R"; exit 1; }
  tar czf "$OUT/records.tgz" --exclude='model.safetensors' --exclude='checkpoint*' --exclude='*.pt' .
  for s in $STUDENTS; do
    if [ -d "$s/model" ]; then tar czf "$OUT/$s.tgz" "$s/model"; fi
  done
  ls -la "$OUT"
  ;;
*)
  echo "usage: training/gpu_session.sh pack [DATA_DIR] | run" >&2
  exit 2
  ;;
esac
