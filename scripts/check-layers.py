#!/usr/bin/env python3
"""Fails when the core's top-level modules import each other in a cycle.

Follows every `crate::X` path in core/src (in `use` lines and inline alike), maps it to the
top-level module X it reaches (names re-exported by lib.rs count as their home module), and
reports every strongly connected group of more than one module. `super::` paths stay inside a
module and do not count. Usage: scripts/check-layers.py [core/src]
"""
import re
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "core/src")
lib = (root / "lib.rs").read_text()

# Top-level modules: `mod x;` / `pub mod x;` in lib.rs.
modules = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", lib, re.M))
# Names lib.rs re-exports: `pub use x::{A, B}` / `pub use x::y::A` -> home module x.
reexport = {}
for m in re.finditer(r"pub use (\w+)((?:::\w+)*)(?:::\{([^}]*)\}|::(\w+))?\s*;", lib):
    home, brace, single = m.group(1), m.group(3), m.group(4)
    names = [n.strip().split(" as ")[-1] for n in (brace.split(",") if brace else [])] if brace else []
    if single:
        names.append(single)
    if not brace and not single:
        names.append(m.group(2).split("::")[-1] if m.group(2) else home)
    for n in names:
        if n:
            reexport[n] = home


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def uses(text):
    """Every first segment after `crate::`, including those inside `use crate::{a, b::c}`."""
    found = set(re.findall(r"\bcrate::(\w+)", text))
    for group in re.findall(r"\bcrate::\{([^;]*)\}", text):
        found.update(re.findall(r"(?:^|[{,])\s*(\w+)", group))
    return found


edges = {m: set() for m in modules}
for path in root.rglob("*.rs"):
    rel = path.relative_to(root)
    top = rel.parts[0].removesuffix(".rs")
    if top == "lib" or top not in modules:
        continue
    for first in uses(strip_comments(path.read_text())):
        target = first if first in modules else reexport.get(first)
        if target and target != top:
            edges[top].add(target)

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in sorted(edges[v]):
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        sccs.append(sorted(comp))


for v in sorted(modules):
    if v not in index:
        visit(v)

cycles = [c for c in sccs if len(c) > 1]
for v in sorted(edges):
    print(f"{v:10} -> {', '.join(sorted(edges[v])) or '-'}", flush=True)
if cycles:
    for c in cycles:
        print(f"import cycle between core modules: {' <-> '.join(c)}", file=sys.stderr)
    sys.exit(1)
print("core modules: no import cycle")
