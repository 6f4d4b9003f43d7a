#!/usr/bin/env bash
# Install what the tests need (sshd, ssh, rsync, xxhsum, iproute2, procps, nftables, and zsh for
# tests/serverbed.py's zsh login shell) and run the whole suite against real peers. Used as-is by .ci/run.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

need=()
for pair in sshd:openssh-server ssh:openssh-client rsync:rsync xxhsum:xxhash ip:iproute2 tc:iproute2 pgrep:procps nft:nftables zsh:zsh; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# editable through a plain path entry (compat mode): the default import hook
# costs every model-sync start ~13 ms that a user's regular install does not
# pay, and bench/ runs this venv's model-sync
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
exec .venv/bin/python -m pytest "$@"
