"""The destination protocol: every name model-sync keeps next to a model
directory, and the shell that stages and publishes it. Every writer (the
rsync path, the tar stream, pull into a local folder) and prune use these.

A published model NAME is a symlink to an immutable version directory:

    NAME -> .NAME.model-sync-versions/<id>

A writer takes the lock (.NAME.model-sync-lock), builds the next version in
.NAME.model-sync-staging (a hard-link clone of the current one, so unchanged
files cost nothing), verifies it, flushes it to disk, renames it into the
versions directory and swaps the link in one rename. A reader that resolves
NAME once (realpath, or an open directory handle) reads exactly one whole
version; the version it resolved stays readable for `grace` minutes after a
newer one is published (git-sync's design). A model directory published by
an older model-sync (a real directory) becomes a version at its next publish.

Every name here is refused when it is something we did not leave there (a
symlink where a directory or a lock file belongs, a directory where a link
belongs): we never write through a planted link."""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass

from .fence import FENCE_SH

STAGING_SUFFIX = ".model-sync-staging"
LOCK_SUFFIX = ".model-sync-lock"
VERSIONS_SUFFIX = ".model-sync-versions"
LINK_SUFFIX = ".model-sync-link"  # the next link, made beside NAME and renamed over it
MANIFEST_NAME = ".model-sync.xxh128"
PARTIAL_DIR = ".rsync-partial"  # rsync --partial-dir: kept for resume, never listed
DEFAULT_GRACE_MINUTES = 15
NOT_OURS_EXIT = 8  # a name of ours is taken by something else


def sibling(path: str, suffix: str) -> str:
    """`.NAME<suffix>` next to path: built here, not with $(basename ...),
    which would drop a trailing newline of a name."""
    parent, name = posixpath.split(path.rstrip("/"))
    return posixpath.join(parent, f".{name}{suffix}")


@dataclass(frozen=True)
class Names:
    """A destination and the entries of ours beside it (absolute or ~ paths)."""

    dest: str

    @property
    def name(self) -> str:
        return posixpath.basename(self.dest.rstrip("/"))

    @property
    def parent(self) -> str:
        return posixpath.dirname(self.dest.rstrip("/")) or "/"

    @property
    def stage(self) -> str:
        return sibling(self.dest, STAGING_SUFFIX)

    @property
    def lock(self) -> str:
        return sibling(self.dest, LOCK_SUFFIX)

    @property
    def versions(self) -> str:
        return sibling(self.dest, VERSIONS_SUFFIX)

    @property
    def link(self) -> str:
        return sibling(self.dest, LINK_SUFFIX)

    @property
    def versions_name(self) -> str:
        """What a published link points into (relative: the volume may be mounted elsewhere)."""
        return f".{self.name}{VERSIONS_SUFFIX}"


def lock_name(model_name: str) -> str:
    return f".{model_name}{LOCK_SUFFIX}"


# -- shell ---------------------------------------------------------------------------
def shell_vars(names: Names, quote) -> str:
    """The variables every script below reads, each value quoted by `quote`
    (hosts.remote_path_expr: ~ stays the server's $HOME)."""
    return (f"dest={quote(names.dest)}; stage={quote(names.stage)}; versions={quote(names.versions)}; "
            f"link={quote(names.link)}; vname={shlex.quote(names.versions_name)}; "
            f"manifest_name={shlex.quote(MANIFEST_NAME)}; partial_dir={shlex.quote(PARTIAL_DIR)}\n")


# ms_ours_link: NAME is a link we published (into our versions directory, one level down;
# `NAME/..` resolves the link first).
# ms_not_ours: refuse a name of ours that holds something else; nothing was changed.
FUNCTIONS = r"""
ms_not_ours() {
  if [ "${ms_report:-}" = stdout ]; then echo "not-ours: $1"; exit 0; fi  # (prepare: the caller reads stdout)
  echo "not-ours: $1" >&2; exit 8
}
ms_ours_link() {  # it resolves to a directory right inside our versions directory
  [ -L "$1" ] && [ -d "$1" ] && [ ! -L "$versions" ] && [ "$1/.." -ef "$versions" ]
}
ms_dest_kind() {  # ok, symlink (not ours) or not-dir
  if [ -L "$dest" ] && ! ms_ours_link "$dest"; then echo symlink
  elif [ -e "$dest" ] && [ ! -d "$dest" ]; then echo not-dir
  else echo ok; fi
}
ms_check_names() {
  for p in "$stage" "$stage.tmp" "$versions"; do
    if [ -L "$p" ] || { [ -e "$p" ] && [ ! -d "$p" ]; }; then ms_not_ours "$p"; fi
  done
  if [ -L "$link" ] || [ ! -e "$link" ]; then :; else ms_not_ours "$link"; fi
}
ms_flush() {  # files and directories to disk: fsync each (coreutils sync FILE...), or with
  # many files one syncfs of their filesystem (sync -f), far fewer calls for the same guarantee
  if [ "${flush:-files}" = fs ] && sync -f -- "$1" 2>/dev/null; then return 0; fi
  find "$@" \( -type f -o -type d \) -exec sync -- {} + 2>/dev/null || sync
}
"""

# Runs under the lock. A fresh clone is built under a temporary name and
# renamed once complete, so a half-made clone is never taken for a stage. A
# stage left by an interrupted run is resumed; whatever the destination has
# gained since is linked in (rsync --ignore-existing --link-dest: cp -n exits 1
# on coreutils 9.2-9.4), so nothing of the destination is lost.
PREPARE = r"""
ms_report=stdout
# first, whatever an older run left writing into the stage (or into a version) is stopped
ms_fence "$stage" "$stage.tmp" '' "$versions" "$dest" 2>&1 || [ $? = 1 ] || exit 3
k=$(ms_dest_kind); if [ "$k" != ok ]; then echo "dest-$k"; exit 0; fi
ms_check_names
if [ -d "$stage" ]; then
  if [ -d "$dest" ]; then rsync -a --ignore-existing --link-dest="$dest/" -- "$dest/" "$stage/" || exit 3; fi
  echo resume
elif [ -d "$dest" ]; then
  rm -rf -- "$stage.tmp"
  mkdir -- "$stage.tmp" && cp -al -- "$dest/." "$stage.tmp/" && mv -T -- "$stage.tmp" "$stage" || { rm -rf -- "$stage.tmp"; exit 3; }
  echo linked
else
  mkdir -- "$stage" || exit 3
  echo new
fi
"""

# ms_publish: the stage becomes the next version and NAME points at it.
# Before the rename everything in the stage is on disk (fsync=1), after it
# the directories that changed, so a power cut never leaves a published
# version whose files are short. NAME itself changes in one rename (a real
# directory from an older model-sync: exchanged with the link in one step
# where renameat2 is there, else two renames a moment apart). Versions
# replaced more than $grace minutes ago go.
PUBLISH_FN = r"""
ms_publish() {
  [ "$(ms_dest_kind)" = ok ] || ms_not_ours "$dest"
  ms_check_names
  find "$stage" -name "$partial_dir" -type d -prune -exec rm -rf -- {} + || exit 3
  if [ "$fsync" = 1 ]; then ms_flush "$stage"; fi
  [ -d "$versions" ] || mkdir -- "$versions" || exit 3
  id=$(date -u +%Y%m%dT%H%M%SZ)-$$
  prev=; if ms_ours_link "$dest"; then prev=$(readlink -- "$dest"); prev=${prev#"$vname"/}; fi
  mv -T -- "$stage" "$versions/$id" || exit 3
  rm -f -- "$link"; ln -s -- "$vname/$id" "$link" || exit 3
  if [ -L "$dest" ] || [ ! -e "$dest" ]; then
    mv -T -f -- "$link" "$dest" || exit 3
  elif command -v python3 >/dev/null 2>&1 && python3 -c '
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
f = getattr(libc, "renameat2", None)
sys.exit(1 if f is None or f(-100, sys.argv[1].encode(), -100, sys.argv[2].encode(), 2) != 0 else 0)
' "$link" "$dest"; then
    mv -T -- "$link" "$versions/$id.was" && prev=$id.was
  else
    mv -T -- "$dest" "$versions/$id.was" && mv -T -- "$link" "$dest" || exit 3
    prev=$id.was
  fi
  if [ "$fsync" = 1 ]; then sync -- "$versions" "$(dirname -- "$dest")" 2>/dev/null || sync; fi
  if [ -n "$prev" ] && [ -d "$versions/$prev" ]; then : > "$versions/$prev.retired"; fi
  ms_retire
}
ms_retire() {  # versions replaced more than $grace minutes ago (0: at once), and stray ones
  for v in "$versions"/*; do
    [ -d "$v" ] && [ ! -L "$v" ] || continue
    case $v in "$versions/$id") continue ;; esac
    [ -e "$v.retired" ] || : > "$v.retired"
  done
  if [ "$grace" = 0 ]; then old=$(find "$versions" -maxdepth 1 -name '*.retired')
  else old=$(find "$versions" -maxdepth 1 -name '*.retired' -mmin +"$grace"); fi
  printf '%s\n' "$old" | while IFS= read -r m; do
    [ -n "$m" ] && rm -rf -- "${m%.retired}" && rm -f -- "$m"
  done
  return 0
}
"""

# Write the manifest (from stdin) into the stage, then publish it (or, when
# nothing changed, drop the stage). The lock must still be ours, and our own
# rsyncs have ended: anything the fence finds in the stage is a writer
# without the lock, and what it touched was never verified.
PUBLISH = r"""
if [ -n "$owner" ] && [ ! -e "$owner" ]; then echo "the lock lapsed" >&2; exit 9; fi
ms_fence "$stage" || { echo "another process wrote into the staging copy; nothing was published: run again" >&2; exit 3; }
if [ "$write_manifest" = 1 ]; then
  m="$stage/$manifest_name"
  cat > "$m.tmp" && mv -f -- "$m.tmp" "$m" || exit 3
fi
if [ "$swap" = 0 ]; then rm -rf -- "$stage"; echo unchanged; exit 0; fi
ms_publish
echo published
"""


def prepare_script(names: Names, quote) -> str:
    return shell_vars(names, quote) + FENCE_SH + FUNCTIONS + PREPARE


FLUSH_FS_FILES = 256  # from this many files on, one syncfs flushes the stage (see ms_flush)


def flush_settings(fsync: bool, files: int, grace: int) -> str:
    """The shell variables ms_publish reads for flushing and for old versions."""
    return f"fsync={int(fsync)}; flush={'fs' if files >= FLUSH_FS_FILES else 'files'}; grace={int(grace)}\n"


def publish_script(names: Names, quote, owner: str | None, write_manifest: bool, swap: bool, fsync: bool,
                   grace: int, files: int = 0) -> str:
    return (shell_vars(names, quote)
            + f"owner={quote(owner) if owner else chr(39) * 2}; write_manifest={int(write_manifest)}; "
              f"swap={int(swap)}\n" + flush_settings(fsync, files, grace)
            + FENCE_SH + FUNCTIONS + PUBLISH_FN + PUBLISH)


def not_ours(alias: str, output: str = "", path: str | None = None):
    """The error for a name of ours holding something else: `path`, or the
    one a script named in its output ("not-ours: PATH" lines)."""
    from .errors import UsageError

    if path is None:
        path = next((ln[len("not-ours: "):] for ln in output.splitlines() if ln.startswith("not-ours: ")), "")
    return UsageError(f"{alias}: {path or 'a name model-sync keeps next to the model'} is not what model-sync "
                      "left there (a symlink, or another kind of file); nothing was written through it. "
                      "Remove it if it is stale, then run again")
