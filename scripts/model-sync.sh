#!/usr/bin/env bash
# The command the agent skill runs: model-sync with output an assistant can
# read (markdown tables, no colour). Arguments pass through untouched.
#
# Uses the `model-sync` on PATH; else this repository's package, if its
# dependencies import; else says how to install and exits 127.
# Only bash builtins here, so the fallback works on a bare PATH.
set -euo pipefail

case ${BASH_SOURCE[0]} in
  */*) here=${BASH_SOURCE[0]%/*} ;;
  *) here=. ;;
esac
repo=$(cd "$here/.." && pwd)
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

for py in python3 python; do
  command -v "$py" >/dev/null 2>&1 || continue
  if PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$py" -c \
      'import click, yaml, rich, fabric, xxhash, model_sync.cli' >/dev/null 2>&1; then
    PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m model_sync.cli ${form[@]+"${form[@]}"} "$@"
  fi
done

echo "model-sync: not installed, and the package in $repo cannot run here (missing dependencies)." >&2
echo "Install it with: bash $repo/scripts/install.sh" >&2
exit 127
