#!/usr/bin/env bash
# Run the whole test suite once per Keras backend; fail if any backend fails.
# Extra arguments go to pytest (e.g. `-k unet`, `--run-slow`).
#
# The three backends run at the same time, each in its own process with its own log:
# most of the suite's time is JAX/XLA and TensorFlow compiling tiny models, which uses
# one core, so on a 2-core machine the runs overlap well. Torch gets one thread so that
# its OpenMP workers do not spin against the other two. Set IMAGEN_TEST_SERIAL=1 to run
# them one after another instead.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
backends="jax tensorflow torch"
declare -A pids starts
run_one() {
  local backend=$1
  shift
  local threads=""
  if [ "$backend" = torch ] && [ -z "${IMAGEN_TEST_SERIAL:-}" ]; then threads="OMP_NUM_THREADS=1"; fi
  env $threads KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider \
    --basetemp="$logs/$backend-tmp" --durations=15 "$@" >"$logs/$backend.log" 2>&1
}
for backend in $backends; do
  starts[$backend]=$(date +%s)
  if [ -n "${IMAGEN_TEST_SERIAL:-}" ]; then
    run_one "$backend" "$@"
    echo $? >"$logs/$backend.rc"
    echo "$backend done"
  else
    ( run_one "$backend" "$@"; echo $? >"$logs/$backend.rc"; echo "$backend: done at $(date +%T)" ) &
    pids[$backend]=$!
  fi
done
wait
status=0
summary=""
for backend in $backends; do
  echo "=== KERAS_BACKEND=$backend ==="
  cat "$logs/$backend.log"
  rc=$(cat "$logs/$backend.rc" 2>/dev/null || echo 99)
  # pytest exits 5 when nothing was collected: treat as a failure, a run must test something.
  if [ "$rc" -ne 0 ]; then status=1; fi
  end=$(stat -c %Y "$logs/$backend.rc" 2>/dev/null || date +%s)
  summary="$summary\n  $backend: exit $rc in $(( end - starts[$backend] )) s"
done
echo -e "=== per-backend results:$summary"
rm -rf "$logs"
exit $status
