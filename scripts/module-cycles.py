#!/usr/bin/env python3
"""Lists import cycles between the crate's modules (issue 11).

Each file under src/ is a module (`src/a/b.rs` and `src/a/b/mod.rs` are
`a::b`). An edge A -> B is a `crate::B...` path, or a `super::` path resolved
to B, anywhere in A's code outside `#[cfg(test)]` modules, where B is not A
itself, an ancestor of A or a descendant of A. Prints each strongly connected
group of two or more modules and exits 1 when there is one.
"""
import os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return None
    return "::".join(rel)

modules = {}
for dirpath, _, files in os.walk(ROOT):
    for name in files:
        if name.endswith(".rs"):
            path = os.path.join(dirpath, name)
            module = module_of(path)
            if module:
                modules[module] = path

def strip_tests(text):
    # Drop everything from the first `#[cfg(test)]` on: test modules sit last.
    at = text.find("#[cfg(test)]")
    return text if at < 0 else text[:at]

def resolve(module, path):
    """The longest known module a `crate::`/`super::` path names."""
    parts = path.split("::")
    if parts[0] == "crate":
        base, parts = [], parts[1:]
    else:
        base = module.split("::")
        is_mod_rs = modules[module].endswith("mod.rs")
        if not is_mod_rs:
            base = base[:-1]
        while parts and parts[0] == "super":
            parts = parts[1:]
            base = base[:-1] if parts and parts[0] == "super" else base
        if path.startswith("super::") and is_mod_rs:
            base = base[:-1]
    for end in range(len(parts), 0, -1):
        candidate = "::".join(base + parts[:end])
        if candidate in modules:
            return candidate
    return None

edges = {module: set() for module in modules}
for module, path in modules.items():
    text = strip_tests(open(path).read())
    for match in re.finditer(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
        target = resolve(module, match.group(1))
        if not target or target == module:
            continue
        if module.startswith(target + "::") or target.startswith(module + "::"):
            continue
        edges[module].add(target)
    # `use crate::a::{b, c::d}` groups.
    for group in re.finditer(r"use\s+crate::([A-Za-z0-9_:]*)::\{([^;]*)\};", text, re.S):
        prefix = group.group(1)
        for item in re.split(r"[,\s]+", group.group(2)):
            item = item.strip("{} ")
            if not item or item == "self":
                continue
            target = resolve(module, f"crate::{prefix}::{item}")
            if target and target != module and not module.startswith(target + "::") and not target.startswith(module + "::"):
                edges[module].add(target)

# Tarjan's strongly connected components.
index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]
def visit(node):
    index[node] = low[node] = counter[0]; counter[0] += 1
    stack.append(node); on_stack.add(node)
    for nxt in sorted(edges[node]):
        if nxt not in index:
            visit(nxt); low[node] = min(low[node], low[nxt])
        elif nxt in on_stack:
            low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
        group = []
        while True:
            top = stack.pop(); on_stack.discard(top); group.append(top)
            if top == node:
                break
        if len(group) > 1:
            groups.append(sorted(group))
sys.setrecursionlimit(10000)
for node in sorted(edges):
    if node not in index:
        visit(node)
for group in groups:
    print("cycle:", " <-> ".join(group))
    for a in group:
        for b in sorted(edges[a] & set(group)):
            print(f"  {a} -> {b}")
print(f"{len(modules)} modules, {sum(len(v) for v in edges.values())} edges, {len(groups)} cycles")
sys.exit(1 if groups else 0)
