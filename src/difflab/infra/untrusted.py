"""Values from files someone else may have written: shown short, walked only when bounded.

A checkpoint or a config is a tree of dicts and lists, but a pickle (or YAML's anchors and
aliases) may point many branches at one shared node: a 9 KB file can stand for a tree of
2^40 nodes. Anything that walks every node (a digest, `repr()` in an error message, a
validation pass) would then run for hours or fill the memory. So:

- `check_structure` counts nodes the way a walk would visit them (a shared node once per
  path to it) and stops at a bound, before any real walk starts;
- `shown` is the `repr` an error message may print: a few items a level, a few levels,
  and never more than a line.
"""

from __future__ import annotations

import reprlib
from typing import Any

# A real checkpoint is a few thousand nodes (weights, optimizer state, config) and about 6
# levels deep; a config a few hundred nodes and 3 levels. These bounds are far above both.
MAX_NODES = 1_000_000
MAX_DEPTH = 64

_short = reprlib.Repr()
_short.maxlevel = 3
_short.maxdict = _short.maxlist = _short.maxtuple = _short.maxset = 6
_short.maxstring = _short.maxother = 60
_short.maxlong = 40


class StructureError(ValueError):
    """A nested value past the bounds: the message says which bound, in one line."""


def shown(value: Any, width: int = 80) -> str:
    """`repr(value)`, bounded: at most `width` characters on one line, whatever the value holds."""
    text = _short.repr(value).replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 3] + "..."


def check_structure(value: Any, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> int:
    """Count the nodes of nested dicts, lists and tuples as a walk visits them; raise StructureError
    past `max_nodes` or `max_depth`. Iterative, so depth alone never raises RecursionError."""
    count = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > max_nodes:
            raise StructureError(f"more than {max_nodes:,} nested values (shared references repeated?)")
        if depth > max_depth:
            raise StructureError(f"nested more than {max_depth} levels deep")
        if isinstance(node, (dict, list, tuple, set, frozenset)):
            if count + len(stack) + 2 * len(node) > max_nodes:  # before copying a huge container's items
                raise StructureError(f"more than {max_nodes:,} nested values (shared references repeated?)")
            items = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            stack.extend((v, depth + 1) for v in items)
    return count
