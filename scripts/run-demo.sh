#!/usr/bin/env bash
# Run the InvEdit demo (scripts/demo.py) in the test environment; arguments go to the demo.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" || exit 1
cd "$INVEDIT_ROOT"
if [[ ! -f scripts/demo.py ]]; then
  echo "run-demo: scripts/demo.py does not exist yet" >&2
  exit 2
fi
exec python scripts/demo.py "$@"
