#!/usr/bin/env python3
"""Lists Rust functions longer than a limit (default 120 lines) outside test code.

A function's length runs from the line of its `fn` keyword to the line of its closing
brace, found by brace matching after comments, strings and character literals have been
blanked out. Test code is left out: files under a `tests/` directory, and every item
marked `#[cfg(test)]` or `#[test]` (so `#[cfg(test)] mod tests { ... }` blocks).
Functions nested in another are listed on their own as well as counted in it.

Usage: tools/fn_lengths.py [--max N] [--check] [PATH ...]   (default PATH: .)
With --check the exit status is 1 when anything is listed.
"""

import argparse
import os
import re
import sys

SKIP_DIRS = {"target", "tests", ".git", "node_modules"}
IDENT = re.compile(r"[A-Za-z0-9_]")
RAW_START = re.compile(r"(?:br|cr|r)(#*)\"")
FN = re.compile(r"\bfn\s+(r#)?([A-Za-z_][A-Za-z0-9_]*)")
TEST_ATTR = re.compile(r"#\[\s*(?:cfg\s*\(\s*test\s*\)|(?:\w+::)*test(?:\s*\([^\]]*\))?)\s*\]")


def blank(src):
    """Returns `src` with comments, strings and char literals replaced by spaces
    (newlines kept, so offsets and line numbers stay the same)."""
    out = list(src)
    n = len(src)
    i = 0

    def wipe(a, b):
        for k in range(a, min(b, n)):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = src[i]
        nxt = src[i + 1] if i + 1 < n else ""
        if c == "/" and nxt == "/":
            j = src.find("\n", i)
            j = n if j < 0 else j
            wipe(i, j)
            i = j
        elif c == "/" and nxt == "*":
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            wipe(i, j)
            i = j
        elif c in "rbc" and (i == 0 or not IDENT.match(src[i - 1])) and RAW_START.match(src, i):
            m = RAW_START.match(src, i)
            close = '"' + m.group(1)
            j = src.find(close, m.end())
            j = n if j < 0 else j + len(close)
            wipe(i, j)
            i = j
        elif c in "bc" and nxt == '"' and (i == 0 or not IDENT.match(src[i - 1])):
            i += 1  # the string itself is handled on the next round
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            wipe(i, j + 1)
            i = j + 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{..}') or a lifetime / label ('a).
            if nxt == "\\":
                j = src.find("'", i + 2)
                if src.startswith("'", i + 2):  # '\''
                    j = i + 3
                j = n if j < 0 else j
                wipe(i, j + 1)
                i = j + 1
            elif i + 2 < n and src[i + 2] == "'":
                wipe(i, i + 3)
                i += 3
            else:
                i += 1
        else:
            i += 1
    return "".join(out)


def block_end(code, start):
    """Offset just past the `}` matching the `{` at `start`."""
    depth = 0
    for k in range(start, len(code)):
        if code[k] == "{":
            depth += 1
        elif code[k] == "}":
            depth -= 1
            if depth == 0:
                return k + 1
    return len(code)


def body_start(code, start, ends=";"):
    """Offset of the `{` opening the item whose header starts at `start`, or None when
    the item ends first: at one of `ends` (`;`: a declaration without a body) or at the
    end of the enclosing block."""
    depth = 0
    for k in range(start, len(code)):
        ch = code[k]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0 and ch == "{":
            return k
        elif depth == 0 and (ch in ends or ch == "}"):
            return None
    return None


def test_spans(code):
    """Offsets (start, end) of items marked #[cfg(test)] or #[test]."""
    spans = []
    for m in TEST_ATTR.finditer(code):
        # A marked field or match arm ends at a comma.
        b = body_start(code, m.end(), ends=";,")
        if b is not None:
            spans.append((m.start(), block_end(code, b)))
    return spans


def functions(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        src = f.read()
    code = blank(src)
    skip = test_spans(code)
    line_starts = [0]
    for k, ch in enumerate(code):
        if ch == "\n":
            line_starts.append(k + 1)

    def line_of(off):
        lo, hi = 0, len(line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if line_starts[mid] <= off:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    for m in FN.finditer(code):
        if any(a <= m.start() < b for a, b in skip):
            continue
        b = body_start(code, m.end())
        if b is None:
            continue
        end = block_end(code, b)
        first, last = line_of(m.start()), line_of(end - 1)
        yield m.group(2), first, last - first + 1


def rust_files(roots):
    for root in roots:
        if os.path.isfile(root):
            yield root
            continue
        for d, dirs, files in os.walk(root):
            dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.startswith("."))
            for name in sorted(files):
                if name.endswith(".rs"):
                    yield os.path.join(d, name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="*", default=["."])
    ap.add_argument("--max", type=int, default=120, help="longest allowed (lines)")
    ap.add_argument("--check", action="store_true", help="exit 1 when anything is listed")
    args = ap.parse_args()
    hits = []
    for path in rust_files(args.paths):
        for name, line, length in functions(path):
            if length > args.max:
                hits.append((length, os.path.normpath(path), line, name))
    for length, path, line, name in sorted(hits, key=lambda h: (-h[0], h[1], h[2])):
        print(f"{length:5}  {path}:{line}  {name}")
    if args.check and hits:
        sys.exit(1)


if __name__ == "__main__":
    main()
