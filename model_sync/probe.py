"""What a host can do, learnt in one round trip: rsync and hashing tools,
and free space where the models live."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .hosts import remote_path_expr

# Each line is `key=value`; values are read as data, never run.
_PROBE = r"""
base={base}
printf 'rsync=%s\n' "$(rsync --version 2>/dev/null | head -n 1)"
if command -v xxhsum >/dev/null 2>&1; then printf 'xxhsum=%s\n' "$(xxhsum -V 2>&1 | head -n 1)"; fi
printf 'pyxxhash=%s\n' "$(python3 -c 'import xxhash; print(xxhash.VERSION)' 2>/dev/null)"
if [ -d "$base" ]; then echo base_exists=1; else echo base_exists=0; fi
printf 'base_abs=%s\n' "$base"
printf 'flock=%s\n' "$(command -v flock)"
p=$base
while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done
printf 'df=%s\n' "$(df -Pk -- "$p" 2>/dev/null | tail -n 1)"
"""


@dataclass
class HostFacts:
    rsync_version: str | None  # "3.2.7", None when rsync is missing
    xxhsum: str | None  # version line of xxhsum, None when missing
    python_xxhash: str | None  # version of python3's xxhash module
    free_bytes: int | None
    base_exists: bool
    base_abs: str = ""  # model_base with ~ expanded on that host
    has_flock: bool = False

    @property
    def rsync_ok(self) -> bool:
        return self.rsync_version is not None and _version_tuple(self.rsync_version) >= (3, 2)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def probe_script(model_base: str) -> str:
    return _PROBE.format(base=remote_path_expr(model_base))


def parse_probe(output: str) -> HostFacts:
    values: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value.strip()
    rsync = None
    m = re.search(r"version\s+(\d+\.\d+(?:\.\d+)?)", values.get("rsync", ""))
    if m:
        rsync = m.group(1)
    free = None
    fields = values.get("df", "").split()
    if len(fields) >= 4 and fields[3].isdigit():
        free = int(fields[3]) * 1024
    xxh = values.get("xxhsum") or None
    if xxh:
        m = re.search(r"\d+\.\d+\.\d+", xxh)
        xxh = m.group(0) if m else xxh
    return HostFacts(
        rsync_version=rsync,
        xxhsum=xxh,
        python_xxhash=values.get("pyxxhash") or None,
        free_bytes=free,
        base_exists=values.get("base_exists") == "1",
        base_abs=values.get("base_abs", ""),
        has_flock=bool(values.get("flock")),
    )


def probe(host) -> HostFacts:
    """Run the probe on a host (local or remote)."""
    res = host.script(probe_script(host.server.model_base), timeout=60)
    return parse_probe(res.stdout)
