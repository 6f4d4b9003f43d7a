"""What a host can do, learnt in one round trip: rsync and hashing tools,
free space where the models live, and (for a transfer) the state of one
model directory there: its files, its manifest, any staging copy."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .hosts import remote_path_expr

# Each line is `key=value`; values are read as data, never run.
_PROBE = r"""
base={base}
printf 'rsync=%s\n' "$(rsync --version 2>/dev/null | head -n 1)"
if command -v xxhsum >/dev/null 2>&1; then printf 'xxhsum=%s\n' "$(xxhsum -V 2>&1 | head -n 1)"; fi
{pycheck}printf 'pyxxhash=%s\n' "$(python3 -c 'import xxhash; print(xxhash.VERSION)' 2>/dev/null)"
if [ -d "$base" ]; then echo base_exists=1; else echo base_exists=0; fi
printf 'base_abs=%s\n' "$base"
printf 'flock=%s\n' "$(command -v flock)"
p=$base
while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done
printf 'df=%s\n' "$(df -Pk -- "$p" 2>/dev/null | tail -n 1)"
"""

# The state of one model directory (the transfer's target) on that host.
# The listing comes last: NUL-separated records up to the end of the output.
_TARGET = r"""
target={target}
printf 'target_abs=%s\n' "$target"
parent=$(dirname -- "$target")
stage="$parent/.$(basename -- "$target"){staging}"
if [ -d "$target" ]; then echo target_dir=1; fi
if [ -d "$stage" ]; then echo stage_dir=1; fi
p=$parent
while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done
printf 'target_df=%s\n' "$(df -Pk -- "$p" 2>/dev/null | tail -n 1)"
look="$target"
if [ {use_stage} = 1 ] && [ -d "$stage" ]; then look="$stage"; fi
if [ -f "$look/{manifest}" ]; then echo MANIFEST-BEGIN; cat -- "$look/{manifest}"; echo; echo MANIFEST-END; fi
if [ -d "$look" ]; then
  echo LISTING
  cd -- "$look" && find . -name {partial} -prune -o \( -type f -o -type l \) ! -path ./{manifest} -printf '%y %s %T@ %P\0%l\0'
fi
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


def probe_script(model_base: str, full: bool = True) -> str:
    # a transfer only needs python's xxhash when xxhsum is missing
    pycheck = "" if full else "command -v xxhsum >/dev/null 2>&1 || "
    return _PROBE.format(base=remote_path_expr(model_base), pycheck=pycheck)


@dataclass
class TargetState:
    path: str  # absolute
    is_dir: bool
    stage_is_dir: bool
    free_bytes: int | None  # at the target's parent (or its nearest existing ancestor)
    manifest: dict[str, str]  # from the staging copy when there is one and use_stage
    files: dict  # path -> manifest.FileEntry, of the staging copy or the target


def target_expr(path: str) -> str:
    """An absolute path, or one relative to $base (the probe's model_base)."""
    return remote_path_expr(path) if path.startswith(("/", "~")) else '"$base"/' + remote_path_expr(path)


def inspect(host, path: str, use_stage: bool) -> tuple[HostFacts, TargetState]:
    """Probe a host and look at one model directory on it, in one round trip.
    `path` is absolute or relative to the host's model_base (already checked
    not to climb out of it)."""
    from .manifest import MANIFEST_NAME, PARTIAL_DIR, parse_listing, parse_manifest
    from .transfer import STAGING_SUFFIX

    script = probe_script(host.server.model_base, full=False) + _TARGET.format(
        target=target_expr(path), staging=STAGING_SUFFIX, use_stage=1 if use_stage else 0,
        manifest=MANIFEST_NAME, partial=PARTIAL_DIR)
    res = host.script(script, timeout=600)
    head, sep, listing = res.stdout.partition("\nLISTING\n")
    head, _, rest = head.partition("\nMANIFEST-BEGIN\n")
    manifest_text, _, _ = rest.partition("\nMANIFEST-END")
    facts = parse_probe(head)
    values = dict(line.partition("=")[::2] for line in head.splitlines() if "=" in line)
    fields = values.get("target_df", "").split()
    state = TargetState(
        path=values.get("target_abs", path),
        is_dir=values.get("target_dir") == "1",
        stage_is_dir=values.get("stage_dir") == "1",
        free_bytes=int(fields[3]) * 1024 if len(fields) >= 4 and fields[3].isdigit() else None,
        manifest=parse_manifest(manifest_text),
        files=parse_listing(listing) if sep else {},
    )
    return facts, state


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
