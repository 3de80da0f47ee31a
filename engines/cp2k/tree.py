"""CP2K's parsed input tree (cp2k-input-tools): reading, writing, and keys by path.

A tree is nested dicts: ``"+section"`` keys hold sections (a list when repeatable), plain keys hold
keywords, ``"_"`` a section's own value. Paths such as ``"DFT/SCF/MAX_SCF"`` name a keyword or a
section below a node, case-insensitively.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from cp2k_input_tools.generator import CP2KInputGenerator
from cp2k_input_tools.parser import CP2KInputParser

# The parser and generator keep state while they work: one at a time per process.
PARSER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def parser() -> CP2KInputParser:
    # Building a parser loads CP2K's 20 MB input schema (~3 s); one per process is enough.
    return CP2KInputParser()


class _Generator(CP2KInputGenerator):
    """The generator on the parser's already loaded schema (saves a second ~3 s XML load)."""

    def __init__(self, schema: Any) -> None:
        self._parse_tree = schema
        self._shift = 3


@functools.lru_cache(maxsize=1)
def generator() -> CP2KInputGenerator:
    schema = getattr(parser(), "_spec", None)  # cp2k-input-tools 0.9 keeps it there
    return _Generator(schema) if schema is not None else CP2KInputGenerator()


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _key(part: str) -> tuple[str, str]:
    low = part.lower()
    return f"+{low}", low


def get_path(node: dict[str, Any], path: str) -> Any:
    """Value at ``"DFT/SCF/MAX_SCF"`` (sections then a keyword or section) in a parsed tree."""
    current: Any = node
    for part in path.split("/"):
        if isinstance(current, list):  # repeatable section: the first one
            current = current[0] if current else None
        if not isinstance(current, dict):
            return None
        section, keyword = _key(part)
        current = current.get(section, current.get(keyword))
    return current


def set_path(node: dict[str, Any], path: str, value: Any) -> None:
    *sections, last = path.split("/")
    current = node
    for part in sections:
        key = _key(part)[0]
        nxt = current.setdefault(key, {})
        current = nxt[0] if isinstance(nxt, list) else nxt
    section, keyword = _key(last)
    if isinstance(value, dict):
        current[section] = value
    else:
        current[keyword] = value


def remove_path(node: dict[str, Any], path: str) -> bool:
    *sections, last = path.split("/")
    current: Any = node
    for part in sections:
        current = current.get(_key(part)[0]) if isinstance(current, dict) else None
        if isinstance(current, list):
            current = current[0] if current else None
    if not isinstance(current, dict):
        return False
    section, keyword = _key(last)
    found = False
    for k in (section, keyword):
        if k in current:
            del current[k]
            found = True
    return found
