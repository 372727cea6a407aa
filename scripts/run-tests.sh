#!/usr/bin/env bash
# Run InvEdit's tests: the pure unit tests and the tests that run the nodes inside a real
# ComfyUI (pinned commit, headless, CPU). Arguments go to pytest; paths among them replace the
# default `tests`, e.g.
#   bash scripts/run-tests.sh tests/unit -k ddim
# The first run builds the test venv (a few minutes); see scripts/env.sh for the knobs.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" || exit 1
cd "$INVEDIT_ROOT"

targets=(tests)
for arg in "$@"; do
  if [[ $arg != -* && -e ${arg%%::*} ]]; then
    targets=()
    break
  fi
done
# With other processes on a 2-core machine, spinning OpenMP workers slow these small tensors
# down 10-30x (measured); passive waiting avoids that. The tests set the thread count.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
# PYTHONSAFEPATH: `python -m` would otherwise put the repo root on sys.path, where its nodes/
# folder shadows ComfyUI's nodes module.
status=0
PYTHONSAFEPATH=1 python -m pytest "${targets[@]}" -q -p no:cacheprovider \
  --timeout="${INVEDIT_TEST_TIMEOUT:-900}" "$@" || status=$?
if [[ $status -eq 5 ]]; then
  echo "run-tests: pytest collected no tests; the test tree or the arguments are wrong" >&2
fi
exit "$status"
