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
from typing import Any, Callable, Iterable

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


def one_line(text: Any, width: int = 300) -> str:
    """An error's (or a server's) text as one line of at most `width` characters: whitespace runs become
    one space, the rest is cut with '...'."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def python_children(node: Any) -> Iterable:
    """The values nested in a dict (its keys too), list, tuple or set; nothing for anything else."""
    if isinstance(node, dict):
        return [*node.keys(), *node.values()]
    return node if isinstance(node, (list, tuple, set, frozenset)) else ()


def check_structure(value: Any, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH,
                    children: Callable[[Any], Iterable] = python_children, why: str = "shared references") -> int:
    """Count the nodes of a nested value as a walk visits them (a shared node once per path to it); raise
    StructureError past `max_nodes` or `max_depth`. Iterative, so depth alone never raises RecursionError.
    `children`: what a node holds (Python containers by default; config.py passes YAML's node graph)."""
    too_many = f"more than {max_nodes:,} nested values ({why} repeated?)"
    count, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > max_nodes:
            raise StructureError(too_many)
        if depth > max_depth:
            raise StructureError(f"nested more than {max_depth} levels deep")
        inside = children(node)
        if count + len(stack) + len(inside) > max_nodes:  # before copying a huge container's items
            raise StructureError(too_many)
        stack.extend((v, depth + 1) for v in inside)
    return count
