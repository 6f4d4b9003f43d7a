#!/usr/bin/env bash
# Install model-sync: system tools via apt when missing, the package into its
# own virtualenv, and `model-sync` onto PATH.
#   bash scripts/install.sh                  from a checkout: install it
#   bash scripts/install.sh --skill [DIR]    also copy the agent skill (SKILL.md, scripts/) to DIR
#                                            (default ~/.claude/skills/model-sync), recording this
#                                            checkout in DIR/scripts/source so the copy can find it
#   MODEL_SYNC_SOURCE  what to install: a checkout, or anything pip takes (git+https://...).
#                      Default: the checkout this script is in, else the one a copied skill records
#   MODEL_SYNC_HOME    where the virtualenv goes (default ~/.local/share/model-sync)
#   BIN_DIR            where the commands are linked (default /usr/local/bin as root, else ~/.local/bin)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
venv=${MODEL_SYNC_HOME:-$HOME/.local/share/model-sync}
if [ "$(id -u)" = 0 ]; then bin=${BIN_DIR:-/usr/local/bin}; else bin=${BIN_DIR:-$HOME/.local/bin}; fi

skill=
while [ $# -gt 0 ]; do
  case $1 in
    --skill) skill=$HOME/.claude/skills/model-sync
             if [ $# -gt 1 ] && [ "${2#-}" = "$2" ]; then skill=$2; shift; fi ;;
    --skill=*) skill=${1#--skill=} ;;
    -h | --help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

is_checkout() { [ -n "$1" ] && [ -f "$1/pyproject.toml" ] && [ -f "$1/model_sync/__init__.py" ]; }
# what to install: given, this checkout, or the source a copied skill recorded
src=${MODEL_SYNC_SOURCE:-}
if [ -z "$src" ]; then
  if is_checkout "$repo"; then
    src=$repo
  elif [ -f "$here/source" ]; then
    { IFS= read -r recorded || true; IFS= read -r url || true; } < "$here/source"
    if is_checkout "$recorded"; then src=$recorded; else src=${url:-}; fi
  fi
fi
if [ -z "$src" ]; then
  echo "install.sh: $repo is a copy of the skill, not a model-sync checkout, and records no source;" \
       "run it as MODEL_SYNC_SOURCE=CHECKOUT bash $here/install.sh, CHECKOUT being a clone of the" \
       "model-sync repository (or pip's git+URL of it)" >&2
  exit 2
fi
if [ -d "$src" ]; then
  src=$(cd "$src" && pwd)
  if ! is_checkout "$src"; then
    echo "install.sh: $src is not a model-sync checkout (no pyproject.toml and model_sync/ there)" >&2
    exit 2
  fi
fi
if [ -n "$skill" ] && ! is_checkout "$src"; then
  echo "install.sh: --skill copies the skill from a checkout; $src is not one" >&2
  exit 2
fi

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
"$venv/bin/pip" install -q --disable-pip-version-check "$src"
mkdir -p "$bin"
ln -sf "$venv/bin/model-sync" "$bin/model-sync"
ln -sf "$venv/bin/model-sync-mcp" "$bin/model-sync-mcp"
echo "installed: $bin/model-sync ($("$venv/bin/model-sync" --version))" >&2

if [ -n "$skill" ]; then
  mkdir -p "$skill/scripts"
  if [ "$skill" -ef "$src" ]; then
    echo "skill: $skill is the checkout itself; nothing to copy" >&2
  else
    cp -- "$src/SKILL.md" "$skill/SKILL.md"
    cp -- "$src/scripts/model-sync.sh" "$src/scripts/install.sh" "$skill/scripts/"
    # the copy's way back to its source: this checkout, and where it was cloned from
    url=$(git -C "$src" remote get-url origin 2>/dev/null || true)
    case $url in  # as pip takes it
      *://*) url=git+$url ;;
      ?*@*:*) url=git+ssh://${url%%:*}/${url#*:} ;;
      *) url= ;;  # none, or a path on this machine: the checkout's line says more
    esac
    printf '%s\n%s\n' "$src" "$url" > "$skill/scripts/source"
    echo "skill: copied to $skill (run $skill/scripts/model-sync.sh)" >&2
  fi
fi
