# shellcheck shell=bash
# InvEdit's test and demo environment. Source it (scripts/run-tests.sh and scripts/run-demo.sh do):
#
#   source scripts/env.sh
#
# It finds a ComfyUI checkout at the pinned commit, creates or reuses a virtual environment with
# torch, ComfyUI's requirements and the test requirements, then exports
#   COMFYUI_PATH   the ComfyUI checkout the tests run against
#   INVEDIT_VENV   the virtual environment (its bin/ is put first on PATH)
#
# Where ComfyUI comes from, first match wins:
#   1. $COMFYUI_PATH, an existing checkout;
#   2. the cache directory ${XDG_CACHE_HOME:-$HOME/.cache}/invedit/comfyui, if it exists;
#   3. a clone of $COMFYUI_GIT_URL (default: ComfyUI on GitHub) into that cache directory.
# The checkout must be at INVEDIT_COMFYUI_COMMIT; INVEDIT_ALLOW_OTHER_COMFYUI=1 accepts another
# commit with a warning.
#
# The venv lives in ${XDG_CACHE_HOME:-$HOME/.cache}/invedit/venv-<key>, where <key> hashes
# everything that decides its contents (Python version, this file, the requirement files, the
# ComfyUI commit). A marker file is written only once every install step has succeeded, so an
# interrupted build is redone. INVEDIT_PYTHON picks the interpreter (default python3);
# INVEDIT_KEEP_VENVS (default 2) is how many venvs, the newest used, are kept in the cache.

INVEDIT_COMFYUI_COMMIT=a125cd84b054a57729b5eecab930ca9408719832 # ComfyUI v0.3.64
INVEDIT_COMFYUI_DEFAULT_GIT_URL=https://github.com/comfyanonymous/ComfyUI.git
INVEDIT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INVEDIT_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/invedit

_invedit_say() { printf 'invedit env: %s\n' "$*" >&2; }

_invedit_comfyui_help() {
  cat >&2 <<EOF
invedit env: the tests need a ComfyUI checkout at commit ${INVEDIT_COMFYUI_COMMIT:0:8} (v0.3.64).
  Either set COMFYUI_PATH to such a checkout:
      git clone https://github.com/comfyanonymous/ComfyUI.git /some/dir
      git -C /some/dir checkout $INVEDIT_COMFYUI_COMMIT
      COMFYUI_PATH=/some/dir bash scripts/run-tests.sh
  or set COMFYUI_GIT_URL to a reachable clone or mirror of ComfyUI (a URL or a local path) and
  this script clones it into $INVEDIT_CACHE/comfyui.
  To run against another commit anyway, set INVEDIT_ALLOW_OTHER_COMFYUI=1.
EOF
}

# Check out the pinned commit in a fresh clone, leaving out files whose objects the source lacks
# (mirrors made without large files), which the tests do not need.
_invedit_checkout_pinned() {
  local dir=$1 missing=() _mode _type sha path
  if git -C "$dir" checkout -q --detach "$INVEDIT_COMFYUI_COMMIT" 2>/dev/null; then
    return 0
  fi
  git -C "$dir" cat-file -e "$INVEDIT_COMFYUI_COMMIT^{commit}" 2>/dev/null || return 1
  while read -r _mode _type sha path; do
    git -C "$dir" cat-file -e "$sha" 2>/dev/null || missing+=("$path")
  done < <(git -C "$dir" ls-tree -r "$INVEDIT_COMFYUI_COMMIT")
  _invedit_say "the ComfyUI source lacks ${#missing[@]} file(s); checking out without them: ${missing[*]}"
  git -C "$dir" config core.sparseCheckout true
  { echo '/*'; for path in "${missing[@]}"; do echo "!/$path"; done; } >"$dir/.git/info/sparse-checkout"
  git -C "$dir" checkout -q --detach "$INVEDIT_COMFYUI_COMMIT"
}

_invedit_clone_comfyui() {
  local dest=$1 url=${COMFYUI_GIT_URL:-$INVEDIT_COMFYUI_DEFAULT_GIT_URL} tmp
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp -d "$dest.partial.XXXXXX")
  _invedit_say "cloning ComfyUI from $url into $dest"
  if GIT_TERMINAL_PROMPT=0 git clone -q --no-checkout "$url" "$tmp/repo" && _invedit_checkout_pinned "$tmp/repo"; then
    mv "$tmp/repo" "$dest"
    rm -rf "$tmp"
    return 0
  fi
  rm -rf "$tmp"
  _invedit_say "could not clone ComfyUI at ${INVEDIT_COMFYUI_COMMIT:0:8} from $url"
  return 1
}

_invedit_find_comfyui() {
  local dir head
  if [[ -n ${COMFYUI_PATH:-} ]]; then
    dir=$COMFYUI_PATH
  elif [[ -d $INVEDIT_CACHE/comfyui ]]; then
    dir=$INVEDIT_CACHE/comfyui
  else
    dir=$INVEDIT_CACHE/comfyui
    _invedit_clone_comfyui "$dir" || { _invedit_comfyui_help; return 1; }
  fi
  if [[ ! -f $dir/nodes.py || ! -f $dir/execution.py ]]; then
    _invedit_say "$dir is not a ComfyUI checkout (no nodes.py / execution.py)"
    _invedit_comfyui_help
    return 1
  fi
  dir=$(cd "$dir" && pwd)
  head=$(git -C "$dir" rev-parse HEAD 2>/dev/null) || head=unknown
  if [[ $head != "$INVEDIT_COMFYUI_COMMIT" ]]; then
    if [[ ${INVEDIT_ALLOW_OTHER_COMFYUI:-0} == 1 ]]; then
      _invedit_say "WARNING: ComfyUI at $dir is at commit $head, not the pinned $INVEDIT_COMFYUI_COMMIT (allowed by INVEDIT_ALLOW_OTHER_COMFYUI=1)"
    else
      _invedit_say "ComfyUI at $dir is at commit $head, not the pinned $INVEDIT_COMFYUI_COMMIT"
      _invedit_comfyui_help
      return 1
    fi
  fi
  INVEDIT_COMFYUI_HEAD=$head
  export COMFYUI_PATH=$dir
}

_invedit_venv_key() {
  local python=$1
  {
    "$python" -c 'import platform, sys; print(sys.version, platform.machine(), sys.implementation.name)'
    echo "comfyui $INVEDIT_COMFYUI_HEAD"
    cat "$INVEDIT_ROOT/scripts/env.sh" "$INVEDIT_ROOT/requirements-test.txt" "$INVEDIT_ROOT/requirements.txt" "$COMFYUI_PATH/requirements.txt"
  } | sha256sum | cut -c1-12
}

# pip warns for every package about index locations of this machine's pip config that do not
# exist; those lines are dropped, everything else pip says is kept.
_invedit_pip() {
  "$INVEDIT_VENV/bin/python" -m pip --disable-pip-version-check -q "$@" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}

_invedit_build_venv() {
  local python=$1 started=$SECONDS
  _invedit_say "building the test venv $INVEDIT_VENV (a few minutes, once)"
  rm -rf "$INVEDIT_VENV"
  "$python" -m venv "$INVEDIT_VENV" || return 1
  # torch and torchvision in one call so pip picks a matching pair; never pinned here.
  _invedit_pip install torch torchvision || return 1
  _invedit_pip install -r "$COMFYUI_PATH/requirements.txt" || return 1
  _invedit_pip install -r "$INVEDIT_ROOT/requirements.txt" -r "$INVEDIT_ROOT/requirements-test.txt" || return 1
  # ComfyUI lists torchaudio unpinned; the newest one can be built for another torch and then
  # raises at import. ComfyUI runs without it (audio nodes only), so drop a broken one.
  if ! "$INVEDIT_VENV/bin/python" -c 'import torchaudio' >/dev/null 2>&1; then
    _invedit_say "torchaudio does not import with this torch; uninstalling it (only ComfyUI's audio nodes need it)"
    _invedit_pip uninstall -y torchaudio || return 1
  fi
  "$INVEDIT_VENV/bin/python" -c 'import torch, torchvision; print("invedit env: torch", torch.__version__, "torchvision", torchvision.__version__)' >&2 || return 1
  "$INVEDIT_VENV/bin/python" -m pip freeze --disable-pip-version-check >"$INVEDIT_VENV/invedit-freeze.txt" || return 1
  touch "$INVEDIT_VENV/.invedit-ready" || return 1
  _invedit_say "venv ready in $((SECONDS - started)) s"
}

# Keep the INVEDIT_KEEP_VENVS most recently used venvs (the current one always), delete the rest.
_invedit_prune_venvs() {
  local keep=${INVEDIT_KEEP_VENVS:-2} marker venv kept=1
  while read -r marker; do
    venv=$(dirname "$marker")
    [[ $venv == "$INVEDIT_VENV" ]] && continue
    if ((kept < keep)); then
      kept=$((kept + 1))
    else
      _invedit_say "removing old venv $venv"
      rm -rf "$venv" "$venv.lock"
    fi
  done < <(ls -1t "$INVEDIT_CACHE"/venv-*/.invedit-ready 2>/dev/null)
}

_invedit_setup_venv() {
  local python=${INVEDIT_PYTHON:-python3} key
  command -v "$python" >/dev/null || { _invedit_say "no $python on PATH (set INVEDIT_PYTHON)"; return 1; }
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    _invedit_say "$python is older than Python 3.10"
    return 1
  }
  key=$(_invedit_venv_key "$python")
  export INVEDIT_VENV=$INVEDIT_CACHE/venv-$key
  mkdir -p "$INVEDIT_CACHE"
  (
    # One build at a time per venv; a second run waits and then reuses it.
    if command -v flock >/dev/null; then flock 9 || exit 1; fi
    [[ -f $INVEDIT_VENV/.invedit-ready ]] || _invedit_build_venv "$python"
  ) 9>"$INVEDIT_VENV.lock" || { _invedit_say "building the venv failed; rerun to retry"; return 1; }
  touch "$INVEDIT_VENV/.invedit-ready"
  _invedit_prune_venvs
  export VIRTUAL_ENV=$INVEDIT_VENV
  export PATH=$INVEDIT_VENV/bin:$PATH
}

_invedit_find_comfyui && _invedit_setup_venv
