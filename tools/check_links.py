#!/usr/bin/env python3
"""Check that every relative link and #anchor in the project's Markdown resolves.

    python3 tools/check_links.py [--root DIR] [FILE.md ...]

Without files: README.md, CONTRIBUTING.md and docs/*.md under the root. A link is relative when
it has no scheme (`https:`, `mailto:` ... are not fetched: the check runs offline). A path must
exist (relative to the file that links it); an anchor (`#name`, `file.md#name`) must be the
GitHub slug of a heading of that Markdown file. Links inside code blocks and inline code are not
links. Exit status 1 with one line per broken link, 0 when all resolve. Standard library only.
"""

import argparse
import re
import sys
import urllib.parse
from pathlib import Path

DEFAULT_FILES = ["README.md", "CONTRIBUTING.md", "docs/*.md"]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); target optionally <...> and followed by a "title".
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_LINK = re.compile(r"""<(?:a|img)\s[^>]*?(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text):
    """(line number, line) outside fenced code blocks."""
    fenced = None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            if fenced is None:
                fenced = m.group(1)
            elif m.group(1) == fenced:
                fenced = None
            continue
        if fenced is None:
            yield n, line


def slug(heading):
    """GitHub's anchor for a heading: the rendered text, lower case, without punctuation other
    than `-` and `_`, spaces to `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path, cache={}):  # noqa: B006 (a cache shared by every call)
    if path not in cache:
        seen, out = {}, set()
        for _, line in prose_lines(path.read_text(encoding="utf-8")):
            m = HEADING.match(line)
            if not m:
                continue
            base = slug(m.group(2))
            k = seen.get(base, 0)
            seen[base] = k + 1
            out.add(base if k == 0 else f"{base}-{k}")
        cache[path] = out
    return cache[path]


def links(text):
    """(line number, target) of every link outside code."""
    for n, line in prose_lines(text):
        bare = INLINE_CODE.sub("", line)
        for m in INLINE_LINK.finditer(bare):
            yield n, m.group(1)
        for m in HTML_LINK.finditer(bare):
            yield n, m.group(1)
        m = REFERENCE_DEF.match(bare)
        if m:
            yield n, m.group(1)


def check_file(md, root):
    """The broken links of one Markdown file, as messages."""
    errors = []
    for n, target in links(md.read_text(encoding="utf-8")):
        target = target.strip("<>")
        if SCHEME.match(target) or target.startswith("//"):
            continue
        path_part, _, anchor = target.partition("#")
        path_part = urllib.parse.unquote(path_part.split("?", 1)[0])
        dest = (md.parent / path_part).resolve() if path_part else md.resolve()
        where = f"{md.relative_to(root)}:{n}: ({target})"
        if path_part.startswith("/"):
            errors.append(f"{where} absolute path: use a path relative to the file")
            continue
        if not dest.exists():
            errors.append(f"{where} {path_part} does not exist")
            continue
        if anchor:
            if dest.suffix.lower() != ".md" or dest.is_dir():
                errors.append(f"{where} anchor into a file that is not Markdown")
            elif urllib.parse.unquote(anchor).lower() not in anchors(dest):
                errors.append(f"{where} no heading with anchor #{anchor} in {dest.name}")
    return errors


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    p.add_argument("files", nargs="*", help=f"Markdown files (default: {', '.join(DEFAULT_FILES)})")
    o = p.parse_args(argv)
    root = o.root.resolve()
    if o.files:
        files = [Path(f).resolve() for f in o.files]
    else:
        files = sorted({f.resolve() for pat in DEFAULT_FILES for f in root.glob(pat)})
        files += [root / f for f in DEFAULT_FILES if "*" not in f and not (root / f).exists()]
    errors, count = [], 0
    for md in files:
        if not md.exists():
            errors.append(f"{md}: no such file")
            continue
        count += sum(1 for _ in links(md.read_text(encoding="utf-8")))
        errors += check_file(md, root)
    for e in errors:
        print(e, file=sys.stderr)
    print(f"check_links: {len(files)} files, {count} links, {len(errors)} broken")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
