"""The model directory naming convention: parse names, order versions, resolve
`MODEL@latest` / `MODEL@VERSION` selectors. Pure logic, no I/O.

A pattern such as "{GPU}_{DATE}_{MODEL}_{VERSION}" is literal text around
`{FIELD}` placeholders. Any field may contain the separators, so one field is
greedy and takes whatever the others leave: the field named MODEL, else the
last field. Fields left of it take the shortest text from the start, fields
right of it the shortest text from the end, and no field may be empty:
RTX3090_N2501_LANGDETECTOR_MMS_251030 -> MODEL=LANGDETECTOR_MMS, VERSION=251030."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable

LATEST = "latest"
_PLACEHOLDER = re.compile(r"\{([A-Za-z][A-Za-z0-9_]*)\}")
_RUNS = re.compile(r"[0-9]+|[^0-9]+")
_EXAMPLES = {"GPU": "RTX3090", "DATE": "N2501", "MODEL": "LANGDETECTOR", "VERSION": "250715"}


class SelectorError(ValueError):
    """A selector matched no directory, or several; `candidates` are directory names to pick from."""

    def __init__(self, message: str, candidates: list[str]):
        super().__init__(message)
        self.candidates = candidates


SORTS = ("name", "size", "modified", "version")  # orders of `list --sort`


@dataclass(frozen=True)
class NamingPattern:
    text: str
    fields: tuple[str, ...]  # upper-cased names, in order
    literals: tuple[str, ...]  # the text before, between and after the fields
    greedy: int  # index of the field that takes the rest


@dataclass(frozen=True)
class ParsedName:
    name: str
    fields: dict[str, str] = field(hash=False)

    gpu = property(lambda self: self.fields.get("GPU", ""))
    date = property(lambda self: self.fields.get("DATE", ""))
    model = property(lambda self: self.fields.get("MODEL", ""))
    version = property(lambda self: self.fields.get("VERSION", ""))


@dataclass(frozen=True)
class ModelGroup:
    """The versions of one model trained on one GPU, newest first."""
    model: str  # spelled as in the newest version
    gpu: str
    versions: tuple[ParsedName, ...]

    @property
    def latest(self) -> ParsedName:
        return self.versions[0]


@dataclass(frozen=True)
class Selector:
    name: str  # the MODEL field, or a whole directory name when version is None
    version: str | None


@lru_cache(maxsize=32)
def compile_pattern(pattern: str) -> NamingPattern:
    """Validate a pattern; raise ValueError with a one-line message."""
    parts = _PLACEHOLDER.split(pattern)  # literal, field, literal, ..., literal
    literals, fields = parts[0::2], [f.upper() for f in parts[1::2]]
    stray = next((lit for lit in literals if "{" in lit or "}" in lit), None)
    if stray is not None:
        raise ValueError(f"naming pattern {pattern!r}: stray brace in {stray!r}; placeholders look like {{MODEL}}")
    if not fields:
        raise ValueError(f"naming pattern {pattern!r} has no {{FIELD}} placeholder, "
                         "e.g. {GPU}_{DATE}_{MODEL}_{VERSION}")
    for i, lit in enumerate(literals[1:-1]):
        if not lit:  # nothing would tell where one field ends and the next begins
            raise ValueError(f"naming pattern {pattern!r}: {{{fields[i]}}}{{{fields[i + 1]}}} "
                             "need a separator between them, e.g. '_'")
    dup = next((f for i, f in enumerate(fields) if f in fields[:i]), None)
    if dup is not None:
        raise ValueError(f"naming pattern {pattern!r} uses {{{dup}}} twice")
    greedy = fields.index("MODEL") if "MODEL" in fields else len(fields) - 1
    return NamingPattern(pattern, tuple(fields), tuple(literals), greedy)


def parse_name(name: str, pattern: str) -> ParsedName | None:
    """Split a directory name into fields, or None when it does not match.
    A linear scan, not a backtracking regex, so odd names cannot hang it."""
    p = compile_pattern(pattern)
    lits, g = p.literals, p.greedy
    if not (name.startswith(lits[0]) and name.endswith(lits[-1])):
        return None
    values, start, end = [""] * len(p.fields), len(lits[0]), len(name) - len(lits[-1])
    for i in range(g):  # left of the greedy field: shortest from the start
        at = name.find(lits[i + 1], start + 1, end)
        if at < 0:
            return None
        values[i], start = name[start:at], at + len(lits[i + 1])
    for i in range(len(p.fields) - 1, g, -1):  # right of it: shortest from the end
        at = name.rfind(lits[i], start, end - 1)
        if at < 0:
            return None
        values[i], end = name[at + len(lits[i]):end], at
    if start >= end:
        return None
    values[g] = name[start:end]
    return ParsedName(name, dict(zip(p.fields, values)))


def example_name(pattern: str) -> str:
    """A name that follows the pattern, for messages: RTX3090_N2501_LANGDETECTOR_250715."""
    p = compile_pattern(pattern)
    return p.literals[0] + "".join(_EXAMPLES.get(f, f) + lit for f, lit in zip(p.fields, p.literals[1:]))


def version_key(text: str) -> tuple:
    """Sort key: digit runs compare as numbers (250820 > 250715, v10 > v9,
    1.10 > 1.9), text case-insensitively; the raw text breaks ties so the
    order is total. Numbers compare by length then digits, never via int(),
    which refuses very long digit strings."""
    text = "" if text is None else str(text)
    parts = []
    for run in _RUNS.findall(text):
        if "0" <= run[0] <= "9":
            digits = run.lstrip("0")
            parts.append((1, len(digits), digits))
        else:
            parts.append((0, run.casefold()))
    return tuple(parts), text


def group_models(names: Iterable[str], pattern: str) -> list[ModelGroup]:
    """Group the names that match by (MODEL, GPU), both case-insensitive;
    versions newest first by VERSION, then DATE, then name."""
    buckets: dict[tuple[str, str], list[ParsedName]] = {}
    for name in dict.fromkeys(names):
        parsed = parse_name(name, pattern)
        if parsed is not None:
            buckets.setdefault((parsed.model.casefold(), parsed.gpu.casefold()), []).append(parsed)
    def newness(p: ParsedName) -> tuple:
        return version_key(p.version), version_key(p.date), version_key(p.name)

    groups = []
    for key in sorted(buckets):
        versions = tuple(sorted(buckets[key], key=newness, reverse=True))
        groups.append(ModelGroup(versions[0].model, versions[0].gpu, versions))
    return groups


def parse_selector(selector: str) -> Selector:
    """`MODEL@latest`, `MODEL@VERSION`, or a directory name (no '@': version None)."""
    if "@" not in selector:
        return Selector(selector, None)
    model, _, version = (part.strip() for part in selector.rpartition("@"))
    if not model or not version:
        raise SelectorError(f"selector {selector!r} should look like MODEL@latest or MODEL@VERSION", [])
    return Selector(model, version)


def resolve_selector(names: Iterable[str], selector: str, pattern: str, gpu: str | None = None) -> str:
    """The one directory a selector means. An exact directory name wins (even
    with '@' in it) and ignores `gpu`; for MODEL@..., `gpu` narrows the choice
    when the model was trained on several GPUs."""
    names = list(dict.fromkeys(names))
    if selector in names:
        return selector
    sel = parse_selector(selector)
    groups = group_models(names, pattern)
    mine = [g for g in groups if g.model.casefold() == sel.name.casefold()]
    if sel.version is None:  # a directory that is not there; a bare model name gets a hint
        hint = f"; for the newest {mine[0].model} use '{sel.name}@latest'" if mine else ""
        raise SelectorError(f"no directory {selector!r}{hint}", [g.latest.name for g in mine])
    if not mine:
        raise SelectorError(f"no model {sel.name!r}; available models: {_listing([g.model for g in groups])}",
                            [g.latest.name for g in groups])
    if gpu is not None:
        on_gpu = [g for g in mine if g.gpu.casefold() == gpu.casefold()]
        if not on_gpu:
            raise SelectorError(f"model {mine[0].model} has no version on GPU {gpu!r}; "
                                f"its GPUs: {_listing([g.gpu for g in mine])}", [g.latest.name for g in mine])
        mine = on_gpu
    if sel.version.casefold() == LATEST:
        hits = [g.latest for g in mine]
    else:
        hits = [p for g in mine for p in g.versions if p.version.casefold() == sel.version.casefold()]
        if not hits:
            have = [p for g in mine for p in g.versions]
            raise SelectorError(f"model {mine[0].model} has no version {sel.version!r}; "
                                f"available versions: {_listing([p.version for p in have])}", [p.name for p in have])
    if len(hits) == 1:
        return hits[0].name
    # several GPUs, or one version under several DATEs on one GPU
    gpus = {p.gpu.casefold(): p.gpu for p in hits}.values()
    hint = f"pass --gpu {' or '.join(gpus)}" if len(gpus) > 1 else "pass the full directory name"
    raise SelectorError(f"{selector!r} is ambiguous, it matches {_listing([p.name for p in hits])}; {hint}",
                        [p.name for p in hits])


def _listing(items: list[str], limit: int = 10) -> str:
    """Comma-separated without blanks or repeats, cut after `limit` so a message stays one short line."""
    items = list(dict.fromkeys(i for i in items if i))
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more or "none"
