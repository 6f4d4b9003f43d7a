"""What a host can do, learnt in one round trip: rsync and hashing tools,
free space where the models live, and (for a transfer) the state of one
model directory there: its files, its manifest, any staging copy."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from .hosts import remote_path_expr

# Each line is `key=value`; values are read as data, never run.
_PROBE = r"""
base={base}
printf 'rsync=%s\n' "$(rsync --version 2>/dev/null | head -n 1)"
if command -v xxhsum >/dev/null 2>&1; then printf 'xxhsum=%s\n' "$(xxhsum -V 2>&1 | head -n 1)"; fi
{pycheck}printf 'pyxxhash=%s\n' "$(python3 -c 'import xxhash; print(xxhash.VERSION)' 2>/dev/null)"
if [ -d "$base" ]; then echo base_exists=1; else echo base_exists=0; fi
printf 'base_abs=%s\n' "$base"
p=$base
while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done
printf 'df=%s\n' "$(df -Pk -- "$p" 2>/dev/null | tail -n 1)"
"""

# The state of one model directory (a transfer's target) and of its staging
# copy. Text first (key=value lines, then the manifest), then NUL-separated
# listings, each opened by an "@@LIST name" record and closed by "@@END":
# no file name can fake either, as no name is empty or contains NUL.
_STATE = r"""
target={target}; stage={stage}
if [ -L "$target" ]; then echo target_link=1; fi
if [ -d "$target" ]; then echo target_dir=1; elif [ -e "$target" ]; then echo target_other=1; fi
if [ -d "$stage" ]; then echo stage_dir=1; fi
p=$(dirname -- "$target")
while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done
printf 'target_df=%s\n' "$(df -Pk -- "$p" 2>/dev/null | tail -n 1)"
look="$target"
if [ {use_stage} = 1 ] && [ -d "$stage" ]; then look="$stage"; fi
if [ -f "$look/{manifest}" ]; then echo MANIFEST-BEGIN; cat -- "$look/{manifest}"; echo; echo MANIFEST-END; fi
echo @@DATA
ms_list() {{
  printf '@@LIST %s\0\0' "$1"
  if [ -d "$2" ] && [ ! -L "$2" ]; then
    (cd -- "$2" && {find})
  fi
  printf '@@END\0\0'
}}
ms_list look "$look"
if [ {both} = 1 ]; then ms_list target "$target"; fi
"""


def state_script(target: str, stage: str, use_stage: bool, both: bool) -> str:
    """Shell that reports the state of `target` (and its staging copy); both
    arguments are already-quoted shell words."""
    from .manifest import FIND_FILES, MANIFEST_NAME

    return _STATE.format(target=target, stage=stage, use_stage=1 if use_stage else 0, both=1 if both else 0,
                         manifest=MANIFEST_NAME, find=FIND_FILES)


@dataclass
class HostFacts:
    rsync_version: str | None  # "3.2.7", None when rsync is missing
    xxhsum: str | None  # version line of xxhsum, None when missing
    python_xxhash: str | None  # version of python3's xxhash module
    free_bytes: int | None
    base_exists: bool
    base_abs: str = ""  # model_base with ~ expanded on that host

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
    files: dict  # path -> manifest.FileEntry, of the staging copy (if used) or the target
    is_link: bool = False
    is_other: bool = False  # exists but is not a directory
    target_files: dict | None = None  # the target's own listing, when asked for both
    dirs: dict = field(default_factory=dict)  # directories of the listed copy -> mode


def parse_state(out: str, path: str) -> TargetState:
    from .manifest import parse_manifest

    head, sep, data = out.partition("\n@@DATA\n")
    if not sep:
        raise ValueError("no @@DATA section")
    head, _, rest = head.partition("\nMANIFEST-BEGIN\n")
    manifest_text, _, _ = rest.partition("\nMANIFEST-END")
    values = dict(line.partition("=")[::2] for line in head.splitlines() if "=" in line)
    fields = values.get("target_df", "").split()
    dirs: dict[str, dict] = {}
    lists = parse_sections(data, dirs)
    return TargetState(
        path=path,
        is_dir=values.get("target_dir") == "1",
        stage_is_dir=values.get("stage_dir") == "1",
        free_bytes=int(fields[3]) * 1024 if len(fields) >= 4 and fields[3].isdigit() else None,
        manifest=parse_manifest(manifest_text),
        files=lists.get("look", {}),
        is_link=values.get("target_link") == "1",
        is_other=values.get("target_other") == "1",
        target_files=lists.get("target"),
        dirs=dirs.get("look", {}),
    )


def parse_sections(data: str, dirs: dict[str, dict] | None = None) -> dict[str, dict]:
    """Listings, each opened by an "@@LIST name" record and closed by "@@END";
    each listing's directories go into dirs[name] when `dirs` is given."""
    from .manifest import parse_listing

    out: dict[str, dict] = {}
    rest = data
    while rest.startswith("@@LIST "):
        name, _, rest = rest[7:].partition("\0\0")
        out[name], rest = parse_listing(rest, None if dirs is None else dirs.setdefault(name, {}))
        rest = rest.removeprefix("@@END\0\0")
    return out


def target_expr(path: str) -> str:
    """An absolute path, or one relative to $base (the probe's model_base)."""
    return remote_path_expr(path) if path.startswith(("/", "~")) else '"$base"/' + remote_path_expr(path)


def sibling(path: str, suffix: str) -> str:
    """`.NAME<suffix>` next to path (staging copy, lock file): built here, not
    with $(basename ...), which would drop a trailing newline of a name."""
    parent, name = posixpath.split(path.rstrip("/"))
    return posixpath.join(parent, f".{name}{suffix}")


def absolute(facts: "HostFacts", path: str) -> str:
    """A server path as absolute, built here (not parsed from output, so any
    character in a name is safe): relative ones are under model_base."""
    if path.startswith("/"):
        return posixpath.normpath(path)
    if not facts.base_abs.startswith("/"):
        raise ValueError("model_base did not resolve to an absolute path")
    return posixpath.normpath(posixpath.join(facts.base_abs, path))


def inspect(host, path: str, use_stage: bool) -> tuple[HostFacts, TargetState]:
    """Probe a host and look at one model directory on it, in one round trip.
    `path` is absolute or relative to the host's model_base (already checked
    not to climb out of it)."""
    from .errors import RemoteError
    from .transfer import STAGING_SUFFIX

    target = target_expr(path)
    stage = target_expr(sibling(path, STAGING_SUFFIX))
    script = probe_script(host.server.model_base, full=False) + state_script(target, stage, use_stage, both=False)
    res = host.script(script, timeout=600)
    facts = parse_probe(res.stdout.partition("\n@@DATA\n")[0])
    try:
        abs_path = absolute(facts, path)
        state = parse_state(res.stdout, abs_path)
    except ValueError:
        why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.exit_code}"
        raise RemoteError(host.alias, f"cannot inspect {path} on the server: {why}", res.exit_code, res.stderr) \
            from None
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
    )


def probe(host) -> HostFacts:
    """Run the probe on a host (local or remote)."""
    res = host.script(probe_script(host.server.model_base), timeout=60)
    return parse_probe(res.stdout)
