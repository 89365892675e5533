#!/usr/bin/env bash
# Run the whole test suite once per Keras backend; fail if any backend fails.
# Extra arguments go to pytest (e.g. `-k unet`, `--run-slow`).
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
summary=""
for backend in jax tensorflow torch; do
  echo "=== KERAS_BACKEND=$backend ==="
  start=$(date +%s)
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider "$@"
  rc=$?
  # pytest exits 5 when nothing was collected: treat as a failure, a run must test something.
  if [ $rc -ne 0 ]; then status=1; fi
  summary="$summary\n  $backend: exit $rc in $(( $(date +%s) - start )) s"
done
echo -e "=== per-backend results:$summary"
exit $status
