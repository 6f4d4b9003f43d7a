"""Where a server path points: one rule for "inside model_base".

An absolute path is taken as given (the user meant it); a relative one is
under the server's model_base and may not climb out of it, neither with
'..' nor through a symlink (checked on the server: INSIDE_SH). And where a
pulled model lands here (pull_destination), and which snapshot of a Hugging
Face cache folder a push sends (huggingface_snapshot)."""

from __future__ import annotations

import os
import posixpath

from .errors import UsageError


def relative_or_absolute(path: str | None, alias: str, default_name: str | None = None) -> str:
    """The path normalised: absolute, or relative to model_base (refused if it
    leaves it). With no path, `default_name` (e.g. the local directory's name)."""
    if not path:
        if not default_name:
            raise UsageError(f"{alias}: give the model's path, e.g. {alias}:MODEL_NAME")
        path = default_name
    if path.startswith("/"):
        return posixpath.normpath(path)
    if path.startswith("~"):
        raise UsageError(f"{alias}: '{path}': '~' is not expanded in server paths; give an absolute path "
                         "or one relative to the server's model_base")
    rel = posixpath.normpath(path)
    if rel in (".", "..") or rel.startswith("../"):
        raise UsageError(f"{alias}: '{path}' leaves the server's model_base; "
                         "give an absolute path if you mean a place outside it")
    return rel


def under(base: str, path: str | None, alias: str, default_name: str | None = None) -> str:
    """relative_or_absolute(), joined to `base` when relative."""
    p = relative_or_absolute(path, alias, default_name)
    return p if p.startswith("/") else posixpath.join(base.rstrip("/") or "/", p)


# Shell: a path given relative to model_base must stay under it once the
# server follows its symlinks (a link in model_base to a directory elsewhere
# would take a transfer there). What is read (a source: {parent}=0) is
# resolved itself; for a destination ({parent}=1) the directory a publish
# writes in, its parent (the destination itself, if a link, is refused as
# one: see transfer._check_destination). That path, or its nearest existing
# ancestor, resolved with `cd -P`; when that leaves the base's own resolved
# path, the script reports "outside=REAL" as its head and stops. {base} and
# {target} are shell words, already quoted.
INSIDE_SH = r"""ms_b={base}; ms_p={target}; if [ {parent} = 1 ]; then ms_p=${{ms_p%/*}}; fi
while [ ! -e "$ms_p" ] && [ "$ms_p" != "$ms_b" ]; do case $ms_p in */*) ms_p=${{ms_p%/*}} ;; *) break ;; esac; done
ms_out=$(cd -P -- "$ms_b" 2>/dev/null && ms_b=${{PWD%/}} && cd -P -- "$ms_p" 2>/dev/null &&
         case $PWD/ in "$ms_b"/*) ;; *) printf '%s' "$PWD" ;; esac)
if [ -n "$ms_out" ]; then printf 'outside=%s\n@@DATA\n' "$ms_out"; exit 0; fi
"""


def outside_base(alias: str, path: str, base: str | None, real: str) -> UsageError:
    """The error for a relative path that INSIDE_SH found leading out of model_base."""
    shown = real.partition("\n")[0]
    return UsageError(f"{alias}: '{path}' leads outside the server's model_base {base or ''} through a symlink "
                      f"(it resolves to {shown}); paths relative to model_base stay under it. "
                      "Give an absolute path if you mean that place")


# -- here ---------------------------------------------------------------------------
def pull_destination(given: str, name: str) -> str:
    """Where a pulled model called `name` lands for the destination `given`:
    DEST/NAME, so that the same pull run twice lands in the same place and a
    model never lands inside another; DEST itself only when it is spelt as
    the model's own path (its last component is `name`, without a trailing
    slash). A folder that does not exist yet is made."""
    full = os.path.abspath(os.path.expanduser(given))
    last = given.rstrip("/").rpartition("/")[2]
    if given.endswith("/") or last in ("", ".", "..", "~") or os.path.basename(full) != name:
        if os.path.exists(full) and not os.path.isdir(full):
            raise UsageError(f"{given} exists and is not a directory; give a folder to pull into "
                             f"(the model lands in FOLDER/{name})")
        return os.path.join(full, name)
    return full


def huggingface_snapshot(path: str) -> tuple[str, str] | None:
    """For a Hugging Face cache folder (models--ORG--NAME, with refs/ and
    snapshots/): (the snapshot refs/main names, that revision); None for any
    other directory."""
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.basename(full).startswith("models--") or not os.path.isdir(os.path.join(full, "snapshots")):
        return None
    ref = os.path.join(full, "refs", "main")
    try:
        with open(ref, encoding="utf-8") as fh:
            rev = fh.read().strip()
    except OSError:
        raise UsageError(f"{path} is a Hugging Face cache folder without refs/main; push one of its snapshots, "
                         f"e.g. {os.path.join(path, 'snapshots', 'REVISION')}") from None
    snapshot = os.path.join(full, "snapshots", rev)
    if not rev or "/" in rev or rev in (".", "..") or not os.path.isdir(snapshot):
        raise UsageError(f"{path}: refs/main names the revision '{rev[:80]}', and snapshots/ has no such "
                         "snapshot; download it again, or push one of its snapshots")
    return snapshot, rev



# Never a model's destination, whatever the flags: the system's own trees and
# the places that hold a person's or a service's files.
# (/dev and /run are only refused themselves: /dev/shm holds fast model stores)
_SYSTEM = ("/bin", "/boot", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin", "/sys", "/usr")
_HOMES = ("/home", "/Users")  # (/root is caught as a top-level directory)


def system_place(path: str) -> bool:
    """/, a top-level directory, anything inside the system's own trees, or
    a home directory itself: places a publish by rename must never replace."""
    p = posixpath.normpath(path) if path.startswith("/") else None
    if p is None:
        return False
    if p.count("/") <= 1:  # "/" and every "/X"
        return True
    if any(p == s or p.startswith(s + "/") for s in _SYSTEM):
        return True
    return any(p.startswith(h + "/") and p.count("/") == h.count("/") + 1 for h in _HOMES)
