#!/usr/bin/env bash
# The command the agent skill runs: model-sync with output an assistant can
# read (markdown tables, no colour). Arguments pass through untouched. Run it
# by its full path from the user's working directory: paths are the user's.
#
# Runs the first model-sync it finds:
#   1. `model-sync` on PATH;
#   2. the one scripts/install.sh installs (an assistant's shell often lacks
#      ~/.local/bin on PATH): $MODEL_SYNC_HOME/bin, default ~/.local/share/model-sync;
#   3. the package next to this script (a checkout, or the repository linked
#      as the skill), or in the checkout a copied skill came from (the first
#      line of scripts/source, which `install.sh --skill` writes), if its
#      dependencies import;
# else prints an install command and exits 127.
# Only bash builtins here, so the fallback works on a bare PATH.
set -euo pipefail

case ${BASH_SOURCE[0]} in
  */*) here=${BASH_SOURCE[0]%/*} ;;
  *) here=. ;;
esac
here=$(cd "$here" && pwd)
repo=${here%/*}
export NO_COLOR=1

# markdown unless the caller chose a form; stop looking at `--`, after which
# words belong to a remote command (exec)
form=(--format markdown)
for arg in "$@"; do
  case $arg in
    --) break ;;
    --json | --format | --format=*) form=(); break ;;
  esac
done

installed=$(command -v model-sync || true)
# a model-sync that is this very script (a symlink) would call itself forever
if [ -n "$installed" ] && ! [ "$installed" -ef "${BASH_SOURCE[0]}" ]; then
  exec "$installed" ${form[@]+"${form[@]}"} "$@"
fi
venv=${MODEL_SYNC_HOME:-${HOME:-}/.local/share/model-sync}
if [ -x "$venv/bin/model-sync" ]; then
  exec "$venv/bin/model-sync" ${form[@]+"${form[@]}"} "$@"
fi

# where a copy of the skill came from: a checkout's path, then its git URL
source_dir= source_url=
if [ -f "$here/source" ]; then
  { IFS= read -r source_dir || true; IFS= read -r source_url || true; } < "$here/source"
fi
is_checkout() { [ -n "$1" ] && [ -f "$1/pyproject.toml" ] && [ -f "$1/model_sync/__init__.py" ]; }

for dir in "$repo" "$source_dir"; do
  is_checkout "$dir" || continue
  for py in python3 python; do
    command -v "$py" >/dev/null 2>&1 || continue
    if PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}" "$py" -c \
        'import click, yaml, rich, fabric, xxhash, model_sync.cli' >/dev/null 2>&1; then
      PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m model_sync.cli ${form[@]+"${form[@]}"} "$@"
    fi
  done
done

# an install command that works from here: a checkout's installer (it builds
# a virtualenv from the checkout); from a copy, this copy's installer told
# where the source is
if is_checkout "$repo"; then
  echo "model-sync: not installed, and the package in $repo cannot run here (missing dependencies)." >&2
  printf 'Install it with: bash %q\n' "$repo/scripts/install.sh" >&2
elif is_checkout "$source_dir"; then
  echo "model-sync: not installed, and the package in $source_dir cannot run here (missing dependencies)." >&2
  printf 'Install it with: bash %q\n' "$source_dir/scripts/install.sh" >&2
elif [ -n "$source_url" ]; then
  echo "model-sync: not installed." >&2
  printf 'Install it with: MODEL_SYNC_SOURCE=%q bash %q\n' "$source_url" "$here/install.sh" >&2
else
  echo "model-sync: not installed, and this copy of the skill ($repo) holds no package and does not record where it came from." >&2
  printf 'Install it with: MODEL_SYNC_SOURCE=CHECKOUT bash %q\n' "$here/install.sh" >&2
  echo "where CHECKOUT is a clone of the model-sync repository (or pip's git+URL of it); 'bash CHECKOUT/scripts/install.sh --skill $repo' also makes this copy remember it." >&2
fi
exit 127
