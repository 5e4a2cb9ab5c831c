#!/usr/bin/env python3
"""No import cycles between the crate's modules (`make check`, issue 15).

Reads every `use crate::…` / `use super::…` statement and every inline `crate::a::b` path in
src/ (the library; src/bin is another crate) and fails when a module reaches one that reaches it
back: between top-level modules (`config` -> `engine` -> `config`), and between the children of
one module (`engine::prober` -> `engine::exchange` -> `engine::prober`). A reference into a
child from its own parent is not an edge; a reference up to a parent is one to the child the
parent re-exports the item from (`use super::Mirror` in `config::mirror` is an edge to
`config::types` when config/mod.rs says `pub use types::Mirror`), else none.

Test code is left out (`tests.rs` files and `#[cfg(test)] mod … { … }` blocks): tests reach
into whatever they exercise. `testing.rs` (the FakeHost) is product-side and counts.

Enforced for the crate's top level and the children of `engine` and `config` (`ENFORCED`);
`--all` also lists the cycles among other modules' children, without failing on them.

    python3 tools/check_imports.py [--all] [SRC_DIR]   # default: src
    python3 tools/check_imports.py --self-test  # plants cycles in a temporary tree
"""
import os
import re
import sys
import tempfile

ENFORCED = {(), ("engine",), ("config",)}
COMMENT = re.compile(r"//[^\n]*")
STRING = re.compile(r'"(?:\\.|[^"\\])*"')
TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
USE = re.compile(r"\buse\s+((?:crate|super)\s*::[^;]*);")
PUB_USE = re.compile(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]*);")
INLINE = re.compile(r"\bcrate::((?:\w+::)*\w+)")


def module_of(src, path):
    """Module path of a file: src/engine/metrics.rs -> ("engine", "metrics")."""
    rel = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return ()
    return tuple(rel)


def strip_tests(text):
    """The text without comments, string literals and `#[cfg(test)] mod x { … }` blocks."""
    text = STRING.sub('""', COMMENT.sub("", text))
    while True:
        m = TEST_MOD.search(text)
        if not m:
            return text
        depth, i = 0, m.end() - 1
        while i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        text = text[: m.start()] + text[i + 1 :]


def expand(tree):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"] (each `as` alias dropped)."""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+\w+", "", tree))
    if "{" not in tree:
        return [tree]
    head, rest = tree.split("{", 1)
    body = rest[: rest.rfind("}")]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [p for part in parts if part for p in expand(head + part)]


def references(module, text):
    """Paths (as tuples of names from the crate root) the module's code refers to."""
    refs = []
    for m in USE.finditer(text):
        for path in expand(m.group(1)):
            names = [n for n in path.split("::") if n]
            if names[0] == "crate":
                refs.append(tuple(names[1:]))
            else:  # super:: ... relative to the parent of this module
                base = list(module)
                while names and names[0] == "super":
                    base, names = base[:-1], names[1:]
                refs.append(tuple(base + names))
    for m in INLINE.finditer(text):
        refs.append(tuple(m.group(1).split("::")))
    return refs


def reexports(module, text, modules):
    """{(module, item): source module} for each `pub use path::item;` of the module's file."""
    found = {}
    for m in PUB_USE.finditer(text):
        for path in expand(m.group(1)):
            names = [n for n in path.split("::") if n]
            if names[0] == "crate":
                full = names[1:]
            else:
                base = list(module)
                if names[0] == "self":
                    names = names[1:]
                while names and names[0] == "super":
                    base, names = base[:-1], names[1:]
                full = base + names
            source = next(
                (tuple(full[:n]) for n in range(len(full) - 1, 0, -1) if tuple(full[:n]) in modules),
                None,
            )
            if source is not None and full[-1] != "*":
                found[module + (full[-1],)] = source
    return found


def graph(src):
    """Edges (parent, from_child, to_child) between sibling modules, with one example each."""
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(root, name)
                files[module_of(src, path)] = path
    modules = set(files)
    texts, exported = {}, {}
    for module, path in files.items():
        with open(path, encoding="utf-8") as f:
            texts[module] = strip_tests(f.read())
        exported.update(reexports(module, texts[module], modules))
    edges = {}
    for module, path in files.items():
        if not module or module[-1] == "tests":
            continue
        for ref in references(module, texts[module]):
            # The longest prefix that is a module: `config::DEFAULT_X` -> ("config",).
            target = next(
                (ref[:n] for n in range(len(ref), 0, -1) if ref[:n] in modules), ()
            )
            if target == module[: len(target)] and len(ref) > len(target):
                # Up to an ancestor: the item's home is the module it re-exports it from.
                target = exported.get(target + (ref[len(target)],), target)
            common = 0
            while common < min(len(module), len(target)) and module[common] == target[common]:
                common += 1
            if common == len(module) or common == len(target):
                continue  # a parent and its own descendant
            key = (module[:common], module[common], target[common])
            edges.setdefault(key, f"{path}: {'::'.join(('crate',) + ref)}")
    return edges


def cycles(edges):
    """Each cycle among siblings, as a list of names from one parent (shortest first found)."""
    found = []
    parents = {parent for parent, _, _ in edges}
    for parent in sorted(parents):
        succ = {}
        for (p, a, b) in edges:
            if p == parent:
                succ.setdefault(a, set()).add(b)
        seen_cycles = set()
        for start in sorted(succ):
            # Breadth-first from start back to start: the shortest cycle through it.
            prev, queue = {start: None}, [start]
            while queue:
                node = queue.pop(0)
                for nxt in sorted(succ.get(node, ())):
                    if nxt == start:
                        cycle, n = [start], node
                        while n != start:
                            cycle.insert(1, n)
                            n = prev[n]
                        key = frozenset(cycle)
                        if key not in seen_cycles:
                            seen_cycles.add(key)
                            found.append((parent, cycle))
                        queue = []
                        break
                    if nxt not in prev:
                        prev[nxt] = node
                        queue.append(nxt)
    return found


def report(src, show_all=False):
    edges = graph(src)
    found = [(p, c) for p, c in cycles(edges) if show_all or p in ENFORCED]
    for parent, cycle in found:
        prefix = "::".join(("crate",) + parent)
        note = "" if parent in ENFORCED else " (not enforced)"
        print(f"import cycle under {prefix}{note}: {' -> '.join(cycle + [cycle[0]])}")
        for a, b in zip(cycle, cycle[1:] + cycle[:1]):
            print(f"  {a} -> {b}: {edges[(parent, a, b)]}")
    return [(p, c) for p, c in found if p in ENFORCED]


def self_test():
    """The check must fail on planted cycles (top level, through a parent, among siblings)."""
    with tempfile.TemporaryDirectory() as src:
        def write(path, text):
            full = os.path.join(src, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w", encoding="utf-8") as f:
                f.write(text)

        write("lib.rs", "pub mod config;\npub mod engine;\npub mod host;\n")
        write("host.rs", "// crate::engine::x in a comment is not an edge\npub trait Host {}\n")
        write("config/mod.rs", "pub mod types;\npub mod mirror;\npub use types::Rule;\n"
              "pub use self::mirror::{Mirror, compile as compile_mirror};\n")
        # Through the parent's re-exports only: types -> mirror -> types.
        write("config/types.rs", "use crate::engine::{verdict::Kind, x};\nuse super::Mirror;\n"
              "pub struct Rule;\n")
        write("config/mirror.rs", "use super::{Rule, compile_mirror};\npub struct Mirror;\n")
        write("engine/mod.rs", "pub mod verdict;\npub mod metrics;\npub mod exchange;\n")
        write("engine/verdict.rs", "use crate::config;\nuse crate::host::Host;\n")
        write("engine/metrics.rs", "use super::exchange::Role;\n")
        write("engine/exchange.rs", "pub fn f() { crate::engine::metrics::g(); }\n"
              "#[cfg(test)]\nmod tests { use crate::config::Rule; }\n")
        write("engine/exchange/tests.rs", "use crate::engine::verdict;\n")
        found = {(p, frozenset(c)) for p, c in cycles(graph(src))}
        want = {((), frozenset({"config", "engine"})),
                (("engine",), frozenset({"metrics", "exchange"})),
                (("config",), frozenset({"types", "mirror"}))}
        assert found == want, f"planted cycles not found exactly: {found}"
        # Removed, the check passes.
        write("engine/verdict.rs", "use crate::host::Host;\n")
        write("engine/metrics.rs", "pub fn g() {}\n")
        write("config/types.rs", "use crate::engine::x;\npub struct Rule;\n")
        assert not cycles(graph(src)), cycles(graph(src))
    print("check_imports self-test: planted cycles found, clean tree passes")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return 0
    args = sys.argv[1:]
    show_all = "--all" in args
    args = [a for a in args if a != "--all"]
    src = args[0] if args else "src"
    if report(src, show_all):
        return 1
    print(f"check_imports: no import cycle among the top-level modules of {src}/, "
          "engine's or config's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
