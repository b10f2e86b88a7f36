#!/usr/bin/env python3
"""The module graph of a crate, from the paths in its sources, and its cycles.

    .ci/modgraph.py SRC_DIR [--strict] [--print]

A module is a source file (lib.rs/main.rs: the crate root, foo/mod.rs: foo). Every
`crate::a::b`, `super::x` and child-module path (`use child::Item`, `child::f()`) in a
module's code, test modules left out, is an edge to the module it names. Without
--strict an edge between a module and its own parent or child is left out (the usual
`use super::Type` of a child); with --strict it counts, so a parent that uses its child
and a child that uses its parent are a cycle. The graph is checked at every depth:
with modules as they are, and with each subtree collapsed into its top module (so
`config -> sensor::adxl345` and `sensor -> config` are a cycle of `config` and
`sensor`). Exits 1 when there is a cycle.
"""
import os
import re
import sys
from collections import defaultdict

src = sys.argv[1]
strict = "--strict" in sys.argv
show = "--print" in sys.argv
IDENT = re.compile(r"[a-z_][a-z0-9_]*")


def module_of(path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("lib", "main", "mod"):
        rel = rel[:-1]
    if rel and rel[0] == "bin":
        return None
    return tuple(rel)


def without_tests(text):
    m = re.search(r"\n#\[cfg\(test\)\]\s*\n\s*(pub(\([^)]*\))?\s+)?mod \w+ \{", text)
    return text[: m.start()] if m else text


def without_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


modules = set()
paths = defaultdict(list)
for root, _, files in os.walk(src):
    for name in files:
        if not name.endswith(".rs") or name in ("tests.rs", "testing.rs"):
            continue
        file = os.path.join(root, name)
        me = module_of(file)
        if me is None:
            continue
        modules.add(me)
        text = without_comments(without_tests(open(file).read()))
        found = paths[me]
        # `use crate::{a, b::c};`, `use super::{x, y};`
        for m in re.finditer(r"\b(crate|(?:super::)*super)::\{([^;]*?)\};", text, flags=re.S):
            base = [] if m.group(1) == "crate" else list(me[: len(me) - m.group(1).count("super")])
            inner = re.sub(r"\{[^{}]*\}", "", m.group(2))
            found += [base + p.strip().split("::") for p in inner.split(",") if p.strip()]
        for m in re.finditer(r"\bcrate::((?:\w+::)*\w+)", text):
            found.append(m.group(1).split("::"))
        for m in re.finditer(r"\b((?:super::)+)((?:\w+::)*\w+)", text):
            found.append(list(me[: len(me) - m.group(1).count("super")]) + m.group(2).split("::"))
        for child in re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod (\w+);", text, flags=re.M):
            if re.search(r"(?<![:\w])(?:self::)?" + child + r"::", text):
                found.append(list(me) + [child])


def target(path):
    segments = []
    for part in path:
        part = part.split(" as ")[0].strip()
        if part == "self":
            continue
        if not IDENT.fullmatch(part):
            break
        segments.append(part)
    t = tuple(segments)
    while t not in modules:
        if not t:
            return ()
        t = t[:-1]
    return t


edges = set()
for me, found in paths.items():
    for path in found:
        t = target(path)
        if t != me:
            edges.add((me, t))

name = lambda m: "::".join(m) or "crate"


def graph_at(depth):
    graph = defaultdict(set)
    for a, b in edges:
        a, b = a[:depth], b[:depth]
        if a == b:
            continue
        related = a[: len(b)] == b or b[: len(a)] == a
        if strict or not related:
            graph[a].add(b)
    return graph


def cycles_of(graph, nodes):
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return cycles


sys.setrecursionlimit(10_000)
deepest = max(len(m) for m in modules)
if show:
    graph = graph_at(deepest)
    for m in sorted(graph):
        print(f"{name(m)} -> {', '.join(sorted(name(t) for t in graph[m]))}")
found_cycles = set()
for depth in range(1, deepest + 1):
    graph = graph_at(depth)
    nodes = {m[:depth] for m in modules}
    for c in cycles_of(graph, nodes):
        found_cycles.add(" <-> ".join(sorted(name(m) for m in c)))
label = "modules, parents and children included" if strict else "modules"
if found_cycles:
    for c in sorted(found_cycles):
        print(f"{src}: cycle: {c}")
    sys.exit(1)
print(f"{src}: no cycle among {len(modules)} {label}")
