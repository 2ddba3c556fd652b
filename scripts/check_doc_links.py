#!/usr/bin/env python3
"""Checks the relative links of Broadcaster's markdown: the book's chapters (docs/src), the
README, CONTRIBUTING.md and ARCHITECTURE.md.

A relative link's target must exist (a file or a folder, relative to the file that links to
it), and a `#anchor` into a markdown file must name one of its headings, made into an id the
way GitHub and mdBook both do it: lower case, spaces to `-`, punctuation other than `-` and
`_` dropped, `-1`, `-2`, ... after a repeated heading. Links to other sites (`https:`,
`mailto:`, ...) are not followed. Code blocks and code spans are skipped.

Prints `file:line: broken link `target`: why` for each broken link and exits 1 if there is
one; stdlib only. Run from anywhere: `python3 scripts/check_doc_links.py [FILE.md ...]`.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILES = ["README.md", "CONTRIBUTING.md", "ARCHITECTURE.md"]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
# [text](target) and ![alt](target); the text may hold one level of brackets.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text):
    """(line number, line) of the lines outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.split("\n"), start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            yield number, line
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            fence = None


def slug(heading):
    """The id GitHub and mdBook give a heading: its text, lower case, spaces to `-`,
    only letters, digits, `-` and `_` kept."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    text = text.replace("`", "").replace("*", "")
    out = []
    for ch in text.strip().lower():
        if ch.isalnum() or ch in "-_":
            out.append(ch)
        elif ch.isspace():
            out.append("-")
    return "".join(out)


def rel(path):
    """`path` as the repository names it, when it is inside the repository."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


_anchors = {}


def anchors(path):
    """Every id a link may name in the markdown file at `path`."""
    if path not in _anchors:
        found, seen = set(), {}
        for _, line in prose_lines(path.read_text(encoding="utf-8")):
            found.update(HTML_ANCHOR.findall(line))
            match = HEADING.match(line)
            if not match:
                continue
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        _anchors[path] = found
    return _anchors[path]


def links(path):
    """(line number, target) of every link in the markdown file at `path`."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        match = REFERENCE_DEF.match(line)
        if match:
            yield number, match.group(1)
            continue
        for match in INLINE_LINK.finditer(CODE_SPAN.sub("", line)):
            yield number, match.group(1)


def problem(source, target):
    """Why `target`, linked from `source`, is broken; None when it is not."""
    target = target.strip()
    if target.startswith("<") and target.endswith(">"):
        target = target[1:-1]
    if not target or SCHEME.match(target) or target.startswith("//"):
        return None
    location, _, anchor = target.partition("#")
    location = location.split("?", 1)[0]
    if location.startswith("/"):
        resolved = (ROOT / location.lstrip("/")).resolve()
    elif location:
        resolved = (source.parent / location).resolve()
    else:
        resolved = source
    if not resolved.exists():
        return f"no such file: {rel(resolved)}"
    if anchor and resolved.is_file() and resolved.suffix == ".md":
        if anchor not in anchors(resolved):
            return f"no heading #{anchor} in {rel(resolved)}"
    return None


def main(argv):
    if argv:
        files = [Path(name).resolve() for name in argv]
    else:
        files = [ROOT / name for name in DEFAULT_FILES]
        files += sorted((ROOT / "docs" / "src").rglob("*.md"))
    broken = checked = 0
    for path in files:
        if not path.exists():
            print(f"{rel(path)}: missing (expected to check its links)")
            broken += 1
            continue
        for number, target in links(path):
            checked += 1
            why = problem(path, target)
            if why:
                broken += 1
                print(f"{rel(path)}:{number}: broken link `{target}`: {why}")
    print(f"check_doc_links: {len(files)} files, {checked} links, {broken} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
