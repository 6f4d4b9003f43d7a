"""Where a server path points: one rule for "inside model_base".

An absolute path is taken as given (the user meant it); a relative one is
under the server's model_base and may not climb out of it with '..'."""

from __future__ import annotations

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
