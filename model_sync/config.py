"""Loading and validating ~/.model-sync.yaml.

Validation walks the parsed YAML with the line number of every key kept, so
each error can point at `file:line` and say what to change."""

from __future__ import annotations

import difflib
import os
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, UnknownServerError

DEFAULT_PATTERN = "{GPU}_{DATE}_{MODEL}_{VERSION}"
LOCAL_ALIAS = "local"
LOCAL_MODEL_BASE = "~/workspace/models"
HOST_KEY_POLICIES = ("yes", "accept-new")


def default_config_path() -> Path:
    """`MODEL_SYNC_CONFIG`, else ~/.model-sync.yaml (with ~ from $HOME)."""
    env = os.environ.get("MODEL_SYNC_CONFIG")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".model-sync.yaml"


@dataclass(frozen=True)
class ServerConfig:
    alias: str
    model_base: str
    host: str | None = None  # None: a local server, no SSH
    user: str | None = None
    port: int | None = None
    ssh_key: str | None = None
    ssh_options: tuple[tuple[str, str], ...] = ()
    strict_host_key_checking: str = "yes"

    @property
    def is_local(self) -> bool:
        return self.host is None


@dataclass(frozen=True)
class Defaults:
    verify: bool = True
    compress: bool = False
    delete: bool = False
    connect_timeout: int = 10
    io_timeout: int = 120
    streams: int = 4
    fsync: bool = True
    keep_old_minutes: int = 15


@dataclass(frozen=True)
class Config:
    path: Path
    servers: dict[str, ServerConfig]
    defaults: Defaults = field(default_factory=Defaults)
    naming_pattern: str = DEFAULT_PATTERN
    mcp_allow_exec: bool = False
    exists: bool = True  # False when no file was found and built-ins are used

    def server(self, alias: str) -> ServerConfig:
        try:
            return self.servers[alias]
        except KeyError:
            raise UnknownServerError(alias, list(self.servers)) from None


# -- schema ----------------------------------------------------------------
# key -> (accepted python types, description). The README's configuration
# reference is checked against these tables by tests/test_docs.py.
SERVER_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "host": ((str,), "SSH host name, IP, or a Host alias from ~/.ssh/config; omit for a local server"),
    "user": ((str,), "SSH user (default: from ~/.ssh/config, else the local user)"),
    "port": ((int,), "SSH port (default: from ~/.ssh/config, else 22)"),
    "model_base": ((str,), "directory holding the models on that server (required)"),
    "ssh_key": ((str,), "private key file (default: IdentityFile from ~/.ssh/config)"),
    "ssh_options": ((dict, list), "extra ssh -o options, as a mapping or a list of 'Key=Value'"),
    "strict_host_key_checking": ((str, bool), "'yes' (default) refuses unknown host keys; 'accept-new' trusts a host's first key"),
}
DEFAULT_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "verify": ((bool,), "hash every transferred file on both ends (default true)"),
    "compress": ((bool,), "rsync -z; model weights rarely compress, so the default is false"),
    "delete": ((bool,), "mirror deletions inside the model directory (default false)"),
    "connect_timeout": ((int,), "seconds to wait for an SSH connection (default 10)"),
    "io_timeout": ((int,), "seconds a transfer may stall (no data moving) before it stops, resumable (default 120)"),
    "streams": ((int,), "parallel rsync streams for a model with several large files (default 4; 1 turns it off)"),
    "fsync": ((bool,), "flush every file of a new version to disk before publishing it (default true)"),
    "keep_old_minutes": ((int,), "minutes a replaced version stays readable for readers that resolved it (default 15; 0: none)"),
}
NAMING_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "pattern": ((str,), f"model directory naming convention (default {DEFAULT_PATTERN})"),
}
MCP_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "allow_exec": ((bool,), "let MCP clients run shell commands with the exec tool (default false)"),
}
TOP_KEYS = ("servers", "defaults", "naming", "mcp")


# -- YAML with line numbers -----------------------------------------------
class _LineDict(dict):
    """A mapping that remembers the line of each key."""

    line: int = 0

    def __init__(self):
        super().__init__()
        self.lines: dict[Any, int] = {}


# libyaml's parser when PyYAML has it (several times faster on a big file);
# the constructor, which keeps the lines, is Python either way
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    def flatten_mapping(self, node):
        # remember the keys written in this mapping itself before merge keys
        # (`<<: *base`) add theirs: only those may not repeat
        if not hasattr(node, "own_keys"):
            node.own_keys = [k for k, _ in node.value if k.tag != _MERGE_TAG]
        super().flatten_mapping(node)


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """A document YAML accepts and a config may not be: message and line."""

    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.message, self.line = message, line


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    mapping = _LineDict()
    mapping.line = node.start_mark.line + 1
    first: dict[Any, int] = {}
    for key_node in node.own_keys:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            earlier = first.setdefault(key, line)
        except TypeError:  # a list or mapping as a key
            raise _Refused(f"a key must be a plain name, not {_kind(key)}", line) from None
        if earlier != line:
            # PyYAML would keep the last silently: two servers of one name, one lost
            raise _Refused(f"'{_shown(key)}' is defined twice, on lines {earlier} and {line}; "
                           "YAML would keep only the last, so remove or rename one", line)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.lines[key] = key_node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# How many values aliases (*name) may add to a document. A few anchors for
# shared settings stay far below; "billion laughs" (aliases of lists of
# aliases) expands to billions, which anything walking the values would pay.
ALIAS_EXPANSION_MAX = 100_000


def _check_aliases(root) -> None:
    """Refuse a node graph whose aliases repeat more than ALIAS_EXPANSION_MAX
    values, or refer to a value from inside it. Linear in the distinct nodes:
    each node's expanded size is computed once."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        nid = id(node)
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if finished:
            on_path.discard(nid)
            total = size[nid] = 1 + sum(size[id(c)] for c in children)
            if total - len(size) > ALIAS_EXPANSION_MAX:
                raise _Refused(f"YAML aliases repeat the value that starts here into more than "
                               f"{ALIAS_EXPANSION_MAX:,} values; write the values out instead",
                               node.start_mark.line + 1)
            continue
        if nid in size:
            continue
        if nid in on_path:
            raise _Refused("a YAML alias refers to the value that contains it", node.start_mark.line + 1)
        on_path.add(nid)
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(children) if id(c) not in size)


# Bounded: a value in an error message is shown in at most this many
# characters, however large (or alias-expanded) it is.
SHOWN_MAX = 80
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = SHOWN_MAX
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 4
_REPR.maxlevel = 2


def _shown(value: Any, quote: bool = False) -> str:
    """A value for an error message: repr() when `quote`, else str(), both
    bounded (reprlib never walks more than a few entries) and one line."""
    text = _REPR.repr(value) if quote or not isinstance(value, (str, int, float, bool)) else str(value)
    text = text[:SHOWN_MAX] + "..." if len(text) > SHOWN_MAX else text
    return text.encode("unicode_escape").decode("ascii") if any(c < " " for c in text) else text


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, message: str, line: int | None = None):
        raise ConfigError(self.path, message, line)

    def mapping(self, value: Any, where: str, line: int | None) -> _LineDict:
        if value is None:
            return _LineDict()
        if not isinstance(value, dict):
            self.fail(f"'{where}' must be a mapping of keys to values, not {_kind(value)}", line)
        return value

    def keys(self, mapping: _LineDict, allowed, where: str):
        for key in mapping:
            if key not in allowed:
                hint = difflib.get_close_matches(_shown(key), list(allowed), n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else f" (allowed: {', '.join(allowed)})"
                self.fail(f"unknown key '{_shown(key)}' in {where}{suggestion}", mapping.lines.get(key))

    def typed(self, mapping: _LineDict, schema, where: str) -> dict[str, Any]:
        self.keys(mapping, schema, where)
        out = {}
        for key, value in mapping.items():
            types, _ = schema[key]
            # bool is an int subclass; `port: true` must still be refused.
            ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
            if not ok:
                names = " or ".join(_TYPE_NAMES[t] for t in types)
                self.fail(f"{where}.{key} must be {names}, not {_kind(value)} ({_shown(value, quote=True)})",
                          mapping.lines.get(key))
            out[key] = value
        return out


_TYPE_NAMES = {str: "a string", int: "a whole number", bool: "true or false", dict: "a mapping", list: "a list"}


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    for t, name in ((bool, "true/false"), (int, "a number"), (float, "a number"), (str, "a string"),
                    (dict, "a mapping"), (list, "a list")):
        if isinstance(value, t):
            return name
    return type(value).__name__


# Options model-sync sets itself so both SSH sides agree, and the shared
# connection it opens per server; not overridable here.
_OWN_SSH_OPTIONS = {"hostname", "user", "port", "identityfile", "stricthostkeychecking", "userknownhostsfile",
                    "globalknownhostsfile", "batchmode", "proxycommand", "proxyjump", "controlmaster",
                    "controlpath", "controlpersist"}


def _ssh_options(check: _Checker, value, where: str, line) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = []
        for entry in value:
            if not isinstance(entry, str) or "=" not in entry:
                check.fail(f"{where}: each entry must look like 'Key=Value', got {_shown(entry, quote=True)}", line)
            k, v = entry.split("=", 1)
            items.append((k.strip(), v.strip()))
    for k, v in items:
        if isinstance(v, bool):
            v = "yes" if v else "no"
        if not str(k).replace("-", "").isalnum():
            check.fail(f"{where}: '{_shown(k)}' is not an ssh option name", line)
        if str(k).lower() in _OWN_SSH_OPTIONS:
            check.fail(f"{where}: set {k} with the server's own keys (host, user, port, ssh_key, "
                       "strict_host_key_checking) or in ~/.ssh/config, not in ssh_options", line)
        pairs.append((str(k), str(v)))
    return tuple(pairs)


def _load_yaml(text: str, check: "_Checker") -> Any:
    loader = _Loader(text)  # a SafeLoader: plain data only
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_aliases(node)  # before anything constructs or walks the values
        return loader.construct_document(node)
    except _Refused as exc:
        check.fail(exc.message, exc.line)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        check.fail(f"YAML syntax error: {problem}; fix the file or run 'model-sync init --force' for a fresh one", line)
    except yaml.YAMLError as exc:
        check.fail(f"YAML error: {_shown(exc)}")
    except RecursionError:
        check.fail("YAML nested too deeply to read; a config needs a few levels")
    finally:
        loader.dispose()


def parse_config(text: str, path: Path, empty_ok: bool = False) -> Config:
    """The config in `text`. An empty document (nothing but comments, say)
    is refused unless `empty_ok` (no file at all: the built-in `local`)."""
    check = _Checker(path)
    data = _load_yaml(text, check)
    if data is None and not empty_ok:
        check.fail("the file is empty, so no servers are configured; add them under 'servers:' "
                   "(see examples/model-sync.yaml), or run 'model-sync init --force' for a commented starter")
    top = check.mapping(data, "top level", 1)
    check.keys(top, TOP_KEYS, "the top level")

    servers: dict[str, ServerConfig] = {}
    raw_servers = check.mapping(top.get("servers"), "servers", top.lines.get("servers"))
    for alias, body in raw_servers.items():
        line = raw_servers.lines.get(alias)
        alias = str(alias)
        if not alias or any(c in alias for c in ":/@ \t") or alias.startswith("-"):
            check.fail(f"server name '{_shown(alias)}' may not contain ':', '/', '@' or spaces, nor start with '-'",
                       line)
        where = f"servers.{_shown(alias)}"
        body = check.mapping(body, where, line)
        values = check.typed(body, SERVER_KEYS, where)
        base = values.get("model_base")
        if not base:
            check.fail(f"{where} has no model_base; add 'model_base: /path/to/models' under it", line)
        if not (base.startswith("/") or base == "~" or base.startswith("~/")):
            # relative to what? the ssh login directory there, this process's
            # working directory here: refused now rather than failing later
            check.fail(f"{where}.model_base '{_shown(base)}' is not an absolute path; give one "
                       "(/data/models), or one under the home directory (~/models)", body.lines.get("model_base"))
        policy = values.get("strict_host_key_checking", "yes")
        if policy is True:  # YAML reads a bare `yes` as true
            policy = "yes"
        if policy not in HOST_KEY_POLICIES:
            check.fail(f"{where}.strict_host_key_checking must be 'yes' or 'accept-new' "
                       "(model-sync never skips host key checks)", body.lines.get("strict_host_key_checking"))
        port = values.get("port")
        if port is not None and not 0 < port < 65536:
            check.fail(f"{where}.port must be between 1 and 65535, not {port}", body.lines.get("port"))
        host = values.get("host")
        if host is not None and (not host.strip() or host.startswith("-")):
            check.fail(f"{where}.host {_shown(host, quote=True)} is not a host name", body.lines.get("host"))
        options = ()
        if "ssh_options" in values:
            options = _ssh_options(check, values["ssh_options"], f"{where}.ssh_options", body.lines.get("ssh_options"))
        servers[alias] = ServerConfig(
            alias=alias,
            model_base=values["model_base"],
            host=host,
            user=values.get("user"),
            port=port,
            ssh_key=values.get("ssh_key"),
            ssh_options=options,
            strict_host_key_checking=policy,
        )
    servers.setdefault(LOCAL_ALIAS, ServerConfig(alias=LOCAL_ALIAS, model_base=LOCAL_MODEL_BASE))

    raw_defaults = check.mapping(top.get("defaults"), "defaults", top.lines.get("defaults"))
    dvals = check.typed(raw_defaults, DEFAULT_KEYS, "defaults")
    for key in ("connect_timeout", "io_timeout", "streams"):
        if dvals.get(key, 1) <= 0:
            check.fail(f"defaults.{key} must be a positive number of seconds", raw_defaults.lines.get(key))
    if dvals.get("keep_old_minutes", 0) < 0:
        check.fail("defaults.keep_old_minutes must be 0 or more minutes", raw_defaults.lines.get("keep_old_minutes"))
    defaults = Defaults(**dvals)

    raw_naming = check.mapping(top.get("naming"), "naming", top.lines.get("naming"))
    nvals = check.typed(raw_naming, NAMING_KEYS, "naming")
    pattern = nvals.get("pattern", DEFAULT_PATTERN)
    if "{" not in pattern:
        check.fail("naming.pattern needs {FIELD} placeholders, e.g. " + DEFAULT_PATTERN, raw_naming.lines.get("pattern"))

    raw_mcp = check.mapping(top.get("mcp"), "mcp", top.lines.get("mcp"))
    mvals = check.typed(raw_mcp, MCP_KEYS, "mcp")

    return Config(
        path=path,
        servers=servers,
        defaults=defaults,
        naming_pattern=pattern,
        mcp_allow_exec=mvals.get("allow_exec", False),
    )


def load_config(path: Path | str | None = None) -> Config:
    """Load the config. With no file at the default place, the built-in
    `local` server is all there is; a file named explicitly must exist."""
    explicit = path is not None or bool(os.environ.get("MODEL_SYNC_CONFIG"))
    path = Path(path).expanduser() if path is not None else default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(path, "no such config file; create one with 'model-sync init' "
                                    "or point --config/MODEL_SYNC_CONFIG at an existing file") from None
        cfg = parse_config("", path, empty_ok=True)
        return Config(path=cfg.path, servers=cfg.servers, defaults=cfg.defaults,
                      naming_pattern=cfg.naming_pattern, exists=False)
    except IsADirectoryError:
        raise ConfigError(path, "is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(path, "cannot be read (permission denied)") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "is not UTF-8 text") from None
    return parse_config(text, path)


STARTER_CONFIG = """\
# model-sync configuration. Reference: README.md, "Configuration".
# A server with a `host` is reached over SSH (settings from ~/.ssh/config apply);
# a server without one is this machine.

servers:
  # reaper:
  #   host: reaper.internal          # or a Host alias from ~/.ssh/config
  #   user: june
  #   port: 22
  #   model_base: /nfs/train/langdetector/models
  #   ssh_key: ~/.ssh/id_ed25519
  #   strict_host_key_checking: yes  # or accept-new to trust a first-seen host key
  #   ssh_options:
  #     ServerAliveInterval: 15
  local:
    model_base: ~/workspace/models

defaults:
  verify: true      # hash every transferred file on both ends with xxh3-128
  compress: false   # weights rarely compress; -z mostly costs CPU
  delete: false     # --delete mirrors removals inside the model directory only

naming:
  pattern: "{GPU}_{DATE}_{MODEL}_{VERSION}"   # e.g. RTX3090_N2501_LANGDETECTOR_250715

# mcp:
#   allow_exec: false   # let MCP clients run shell commands on servers
"""


def write_starter(path: Path, force: bool = False) -> Path:
    path = Path(path).expanduser()
    if path.exists() and not force:
        raise ConfigError(path, "already exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(STARTER_CONFIG, encoding="utf-8")
    os.replace(tmp, path)
    return path
