#!/usr/bin/env bash
# Install what the browser test (tests/browser/) needs, once; a second run returns at once.
#
#   bash scripts/browser-deps.sh
#
# - Chromium: Debian's `chromium` package (/usr/bin/chromium), installed with apt-get when missing
#   (needs root or sudo). Set INVEDIT_CHROMIUM to use another Chromium or Chrome binary instead.
# - playwright-core (pinned below; it drives the browser, it downloads none) installed with npm into
#   ${XDG_CACHE_HOME:-$HOME/.cache}/invedit/browser/node_modules (needs Node.js 18+ and npm).
# The test finds both there; set INVEDIT_SKIP_BROWSER=1 to skip the browser test instead.
set -euo pipefail

PLAYWRIGHT_CORE_VERSION=1.65.1
BROWSER_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/invedit/browser
CHROMIUM=${INVEDIT_CHROMIUM:-/usr/bin/chromium}

say() { printf 'browser-deps: %s\n' "$*" >&2; }

if [[ ! -x $CHROMIUM ]]; then
  if [[ -n ${INVEDIT_CHROMIUM:-} ]]; then
    say "INVEDIT_CHROMIUM=$CHROMIUM is not an executable"
    exit 1
  fi
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { say "installing chromium needs root (apt-get install chromium)"; exit 1; }
    sudo=(sudo)
  fi
  say "installing Debian's chromium with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null
  [[ -x $CHROMIUM ]] || { say "apt-get installed chromium, but $CHROMIUM is missing"; exit 1; }
fi

installed=$(node -p "require('$BROWSER_CACHE/node_modules/playwright-core/package.json').version" 2>/dev/null || true)
if [[ $installed != "$PLAYWRIGHT_CORE_VERSION" ]]; then
  command -v npm >/dev/null || { say "npm (Node.js 18+) is needed to install playwright-core"; exit 1; }
  say "installing playwright-core@$PLAYWRIGHT_CORE_VERSION into $BROWSER_CACHE"
  mkdir -p "$BROWSER_CACHE"
  [[ -f $BROWSER_CACHE/package.json ]] || echo '{"private": true}' >"$BROWSER_CACHE/package.json"
  npm install --prefix "$BROWSER_CACHE" --no-audit --no-fund --loglevel=error \
    "playwright-core@$PLAYWRIGHT_CORE_VERSION" 2> >(grep -v 'Unknown user config' >&2)
fi
say "ready: $("$CHROMIUM" --version 2>/dev/null | head -1), playwright-core $PLAYWRIGHT_CORE_VERSION in $BROWSER_CACHE"
