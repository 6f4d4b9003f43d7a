#!/usr/bin/env bash
# Install model-sync from this checkout: system tools via apt when missing,
# the package into its own virtualenv, and `model-sync` onto PATH.
#   MODEL_SYNC_HOME  where the virtualenv goes (default ~/.local/share/model-sync)
#   BIN_DIR          where the commands are linked (default /usr/local/bin as root, else ~/.local/bin)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MODEL_SYNC_HOME:-$HOME/.local/share/model-sync}
if [ "$(id -u)" = 0 ]; then bin=${BIN_DIR:-/usr/local/bin}; else bin=${BIN_DIR:-$HOME/.local/bin}; fi

need=()
command -v rsync >/dev/null || need+=(rsync)
command -v ssh >/dev/null || need+=(openssh-client)
command -v xxhsum >/dev/null || need+=(xxhash)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "model-sync needs: ${need[*]} (install them with your package manager, then rerun)" >&2
    exit 1
  fi
fi

python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$repo"
mkdir -p "$bin"
ln -sf "$venv/bin/model-sync" "$bin/model-sync"
ln -sf "$venv/bin/model-sync-mcp" "$bin/model-sync-mcp"
echo "installed: $bin/model-sync ($("$venv/bin/model-sync" --version))" >&2
