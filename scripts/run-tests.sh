#!/usr/bin/env bash
# Run InvEdit's tests: the pure unit tests and the tests that run the nodes inside a real
# ComfyUI (pinned commit, headless, CPU). Arguments go to pytest; paths among them replace the
# default `tests`, e.g.
#   bash scripts/run-tests.sh tests/unit -k ddim
# The first run builds the test venv (a few minutes); see scripts/env.sh for the knobs.
# INVEDIT_TEST_THREADS (default 1) sets torch's thread count, INVEDIT_TEST_TIMEOUT (default 900)
# the per-test time limit in seconds. The browser tests (tests/browser) need Chromium and
# playwright-core: scripts/browser-deps.sh installs them once (apt-get + npm); set
# INVEDIT_SKIP_BROWSER=1 to skip those tests instead.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" || exit 1
cd "$INVEDIT_ROOT"
if [[ ${INVEDIT_SKIP_BROWSER:-0} != 1 ]]; then
  # On failure the browser tests fail and say what is missing; the other tests still run.
  bash scripts/browser-deps.sh || echo "run-tests: scripts/browser-deps.sh failed; the browser tests will fail" >&2
fi

targets=(tests)
for arg in "$@"; do
  if [[ $arg != -* && -e ${arg%%::*} ]]; then
    targets=()
    break
  fi
done
# PYTHONSAFEPATH: `python -m` would otherwise put the repo root on sys.path, where its nodes/
# folder shadows ComfyUI's nodes module.
status=0
PYTHONSAFEPATH=1 python -m pytest "${targets[@]}" -q -p no:cacheprovider \
  --timeout="${INVEDIT_TEST_TIMEOUT:-900}" "$@" || status=$?
if [[ $status -eq 5 ]]; then
  echo "run-tests: pytest collected no tests; the test tree or the arguments are wrong" >&2
fi
exit "$status"
