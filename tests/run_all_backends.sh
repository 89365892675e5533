#!/usr/bin/env bash
# Run the whole test suite once per Keras backend; fail if any backend fails.
# Extra arguments go to pytest (e.g. `-k unet`, `--run-slow`).
#
# The three backends run at the same time, each in its own processes with its own log:
# most of the suite's time is JAX/XLA and TensorFlow compiling tiny models, which uses
# one core, so on a 2-core machine the runs overlap well. Torch gets one thread so that
# its OpenMP workers do not spin against the other two. Set IMAGEN_TEST_SERIAL=1 to run
# them one after another instead.
#
# Each backend runs the suite in a few groups of test files, one fresh pytest process per
# group, one group after another: a process that compiles hundreds of tiny models keeps
# growing (TensorFlow reached 15 GiB, JAX 8 GiB over the whole suite), and on a 24 GiB
# machine the two together ran it out of memory and into a crawl. Each group prints its
# process's peak memory. Test files not named in a group run in the last one.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
backends="jax tensorflow torch"
groups=(
  "tests/test_unet.py tests/test_unet_errors.py tests/test_unet_param_counts.py tests/test_bad_inputs.py tests/diffusion tests/convert tests/bench"
  "tests/test_imagen.py tests/test_imagen_errors.py tests/test_imagen_texts.py tests/test_elucidated_imagen.py tests/test_generation.py tests/test_saving.py tests/test_training_safety.py tests/test_export.py"
  "tests/training tests/recipes"
)
named=" ${groups[*]} "
rest=""
for file in $(find tests -name 'test_*.py' | sort); do
  dir=$(dirname "$file")
  case "$named" in *" $file "* | *" $dir "*) ;; *) rest="$rest $file" ;; esac
done
groups+=("${rest# }")

declare -A pids starts
run_one() {
  local backend=$1
  shift
  local threads="" rc=0 group_rc i=0
  if [ "$backend" = torch ] && [ -z "${IMAGEN_TEST_SERIAL:-}" ]; then threads="OMP_NUM_THREADS=1"; fi
  for group in "${groups[@]}"; do
    i=$((i + 1))
    echo "--- group $i/${#groups[@]}: $group" >>"$logs/$backend.log"
    # shellcheck disable=SC2086
    env $threads KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider \
      --basetemp="$logs/$backend-tmp-$i" --durations=10 $group "$@" >>"$logs/$backend.log" 2>&1
    group_rc=$?
    # pytest exits 5 when nothing was collected: a group must test something.
    if [ "$group_rc" -ne 0 ]; then rc=$group_rc; fi
    echo "--- group $i: exit $group_rc at $(date +%T)" >>"$logs/$backend.log"
  done
  return $rc
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
  if [ "$rc" -ne 0 ]; then status=1; fi
  end=$(stat -c %Y "$logs/$backend.rc" 2>/dev/null || date +%s)
  summary="$summary\n  $backend: exit $rc in $(( end - starts[$backend] )) s"
done
echo -e "=== per-backend results:$summary"
rm -rf "$logs"
exit $status
