"""What a host can do, learnt in one round trip: rsync and hashing tools,
free space where the models live, and (for a transfer) the state of one
model directory there: its files, its manifest, any staging copy."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from .destination import Names
from .hosts import remote_path_expr

# Each line is `key=value`; values are read as data, never run. First lines
# and last lines are cut by the shell, not by head/tail: every process costs
# a fork on the server, and a transfer starts with this script.
_NL = "nl='\n'\n"
_PROBE = _NL + r"""base={base}
v=$(rsync --version 2>/dev/null); printf 'rsync=%s\n' "${{v%%$nl*}}"
if command -v xxhsum >/dev/null 2>&1; then v=$(xxhsum -V 2>&1); printf 'xxhsum=%s\n' "${{v%%$nl*}}"; fi
v=$(tar --version 2>/dev/null); printf 'tar=%s\n' "${{v%%$nl*}}"
{pycheck}printf 'pyxxhash=%s\n' "$(python3 -c 'import xxhash; print(xxhash.VERSION)' 2>/dev/null)"
if [ -d "$base" ]; then echo base_exists=1; else echo base_exists=0; fi
printf 'base_abs=%s\n' "$base"
p=$base
while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done
v=$(df -Pk -- "$p" 2>/dev/null); printf 'df=%s\n' "${{v##*$nl}}"
"""

# The state of one model directory (a transfer's target) and of its staging
# copy. Text first (key=value lines, then the manifest), then NUL-separated
# listings, each opened by an "@@LIST name" record and closed by "@@END":
# no file name can fake either, as no name is empty or contains NUL.
# A target that is a link we published (into .NAME.model-sync-versions/, see
# destination.py) is read through the link; any other link is reported (and
# a source, what is read, is read through it too: {source}=1). A
# real directory with entries and no manifest of ours is "foreign": a
# publish would replace something model-sync did not make.
_STATE = _NL + r"""target={target}; stage={stage}; versions={versions}
tdir=$target
if [ -L "$target" ]; then  # ours: it resolves to a directory right inside our versions directory (no fork to test)
  if [ -d "$target" ] && [ ! -L "$versions" ] && [ "$target/.." -ef "$versions" ]; then
    echo target_version=1; tdir="$target/"
  else echo target_link=1; if [ {source} = 1 ] && [ -d "$target" ]; then tdir="$target/"; fi; fi
fi
if [ -d "$target" ]; then echo target_dir=1; elif [ -e "$target" ] || [ -L "$target" ]; then echo target_other=1; fi
if [ -d "$tdir" ] && [ ! -L "$tdir" ] && [ ! -f "$tdir/{manifest}" ]; then
  for e in "$tdir"/* "$tdir"/.[!.]* "$tdir"/..?*; do
    if [ -e "$e" ] || [ -L "$e" ]; then echo target_foreign=1; break; fi
  done
fi
if [ -d "$stage" ] && [ ! -L "$stage" ]; then echo stage_dir=1; fi
p=$(dirname -- "$target")
while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done
v=$(df -Pk -- "$p" 2>/dev/null); printf 'target_df=%s\n' "${{v##*$nl}}"
look="$tdir"
if [ {use_stage} = 1 ] && [ -d "$stage" ]; then
  look="$stage"
  # rsync's partial files: not in the listing, yet they take space (the free-space check says so)
  pb=0; for sz in $(cd -- "$stage" && find . -path '*/{partial}/*' -type f -printf '%s\n'); do pb=$((pb + sz)); done
  echo stage_partial=$pb
fi
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
if [ {both} = 1 ]; then ms_list target "$tdir"; fi
"""


def state_script(target: str, stage: str, versions: str, use_stage: bool, both: bool, source: bool = False) -> str:
    """Shell that reports the state of `target` (and its staging copy); the
    paths (target, its stage and versions directory) are already-quoted shell
    words. `source`: the target is read from (a pull's source): listed
    through a symlink, as rsync reads it (manifest.FIND_SOURCE)."""
    from .manifest import FIND_FILES, FIND_SOURCE, MANIFEST_NAME, PARTIAL_DIR

    return _STATE.format(target=target, stage=stage, versions=versions, use_stage=1 if use_stage else 0,
                         both=1 if both else 0, manifest=MANIFEST_NAME, find=FIND_SOURCE if source else FIND_FILES,
                         partial=PARTIAL_DIR, source=1 if source else 0)


@dataclass
class HostFacts:
    rsync_version: str | None  # "3.2.7", None when rsync is missing
    xxhsum: str | None  # version line of xxhsum, None when missing
    python_xxhash: str | None  # version of python3's xxhash module
    free_bytes: int | None
    base_exists: bool
    base_abs: str = ""  # model_base with ~ expanded on that host
    tar: str | None = None  # first line of `tar --version`

    @property
    def rsync_ok(self) -> bool:
        return self.rsync_version is not None and _version_tuple(self.rsync_version) >= (3, 2)

    @property
    def gnu_tar(self) -> bool:
        return bool(self.tar) and "GNU tar" in self.tar

    @property
    def xxhsum_checks(self) -> bool:
        """xxhsum can check xxh3-128 manifests (`-c`; 0.8 or later)."""
        from .manifest import xxh128_capable

        return xxh128_capable(self.xxhsum)


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
    is_link: bool = False  # a symlink model-sync did not publish
    is_other: bool = False  # exists but is not a directory
    published: bool = False  # a link model-sync published (to one of its versions)
    foreign: bool = False  # a real directory with entries and no manifest: not published by model-sync
    target_files: dict | None = None  # the target's own listing, when asked for both
    dirs: dict = field(default_factory=dict)  # directories of the listed copy -> mode
    stage_partial_bytes: int = 0  # in rsync's partial files of the staging copy (when listed)
    followed: list = field(default_factory=list)  # a source's symlinks listed as what they point to
    dangling: list = field(default_factory=list)  # a source's symlinks that point at nothing


def parse_state(out: str, path: str, both: bool = False) -> TargetState:
    """TargetState from the whole output of state_script."""
    reader = state_reader()
    reader.feed_text(out)
    return state_from(reader, path, both)


def state_reader():
    """A SectionReader for state_script's output that reads the head (facts
    and manifest) as soon as it is complete, while the listing still comes."""
    from .manifest import SectionReader

    return SectionReader(on_head=_read_head)


def _read_head(head: str) -> tuple[dict[str, str], dict[str, str], str]:
    """(key=value lines, manifest, the text before the manifest)."""
    from .manifest import parse_manifest

    text, _, rest = head.partition("\nMANIFEST-BEGIN\n")
    manifest_text, _, _ = rest.partition("\nMANIFEST-END")
    values = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
    return values, parse_manifest(manifest_text), text


def state_from(reader, path: str, both: bool = False) -> TargetState:
    """TargetState from a state_reader() that read state_script's output
    (`both`: it was asked for the target's own listing too)."""
    head, lists, dirs, _ = reader.finish()
    if head is None or "look" not in lists or (both and "target" not in lists):
        raise ValueError("the listing was cut short")
    values, manifest, _ = reader.head_value
    fields = values.get("target_df", "").split()
    return TargetState(
        path=path,
        is_dir=values.get("target_dir") == "1",
        stage_is_dir=values.get("stage_dir") == "1",
        free_bytes=int(fields[3]) * 1024 if len(fields) >= 4 and fields[3].isdigit() else None,
        manifest=manifest,
        files=lists["look"],
        is_link=values.get("target_link") == "1",
        is_other=values.get("target_other") == "1" and values.get("target_dir") != "1",
        published=values.get("target_version") == "1",
        foreign=values.get("target_foreign") == "1",
        target_files=lists.get("target"),
        dirs=dirs["look"],
        stage_partial_bytes=int(values.get("stage_partial", "0")) if values.get("stage_partial", "").isdigit() else 0,
    )


def target_expr(path: str) -> str:
    """An absolute path, or one relative to $base (the probe's model_base)."""
    return remote_path_expr(path) if path.startswith(("/", "~")) else '"$base"/' + remote_path_expr(path)


def absolute(facts: "HostFacts", path: str) -> str:
    """A server path as absolute, built here (not parsed from output, so any
    character in a name is safe): relative ones are under model_base."""
    if path.startswith("/"):
        return posixpath.normpath(path)
    if not facts.base_abs.startswith("/"):
        raise ValueError("model_base did not resolve to an absolute path")
    return posixpath.normpath(posixpath.join(facts.base_abs, path))


def inspect_script(host, path: str, use_stage: bool, source: bool = False) -> str:
    """The script inspect runs: the probe, then the state of `path` (its
    shell variables $base, $target and $stage stay set for anything appended).
    A relative path that leads out of model_base through a symlink stops it
    there (paths.INSIDE_SH), before anything appended runs."""
    from .paths import INSIDE_SH

    names = Names(path)
    relative = not path.startswith(("/", "~"))
    return (probe_script(host.server.model_base, full=False)
            + (INSIDE_SH.format(base='"$base"', target=target_expr(path), parent=0 if source else 1)
               if relative else "")
            + state_script(target_expr(path), target_expr(names.stage), target_expr(names.versions), use_stage,
                           both=False, source=source))


def inspection(host, path: str, reader, exit_code: int, stderr: str) -> tuple[HostFacts, TargetState]:
    """(facts, state) from a state_reader() that read inspect_script's output."""
    from .errors import RemoteError

    try:
        reader.finish()
        if reader.head_value and "outside" in reader.head_value[0]:
            from .paths import outside_base

            raise outside_base(host.alias, path, host.server.model_base, reader.head_value[0]["outside"])
        facts = parse_probe(reader.head_value[2] if reader.head_value else "")
        state = state_from(reader, absolute(facts, path))
    except ValueError:
        why = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {exit_code}"
        raise RemoteError(host.alias, f"cannot inspect {path} on the server: {why}", exit_code, stderr) from None
    return facts, state


def inspect(host, path: str, use_stage: bool, source: bool = False) -> tuple[HostFacts, TargetState]:
    """Probe a host and look at one model directory on it, in one round trip.
    `path` is absolute or relative to the host's model_base (already checked
    not to climb out of it with '..'; here, not through a symlink either).
    `source`: it is read from: listed as rsync sends it (manifest.follow_links)."""
    reader = state_reader()  # parses while the output arrives
    res = host.script(inspect_script(host, path, use_stage, source), timeout=600, on_output=reader.feed)
    facts, state = inspection(host, path, reader, res.exit_code, res.stderr)
    if source and state.is_dir:
        from .manifest import follow_links

        state.followed, state.dangling = follow_links(host, state.path, state.files, state.dirs)
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
        tar=values.get("tar") or None,
    )


def probe(host) -> HostFacts:
    """Run the probe on a host (local or remote)."""
    res = host.script(probe_script(host.server.model_base), timeout=60)
    return parse_probe(res.stdout)
