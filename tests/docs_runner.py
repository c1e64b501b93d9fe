"""Fenced blocks of the user docs (README.md, docs/*.md) and how each one is run.

A *command block* is a fenced block a user is meant to type: language ``bash``/``sh``/``shell``
or ``python``, or a ``text`` block whose lines start with ``$ `` (a transcript: each ``$ `` line is
a command, the lines below it its printed output). Other blocks (YAML configs, output excerpts,
the layout tree) are not commands.

Every command block is run by ``tests/test_readme_executable.py`` as written, unless the HTML
comment on the line before its fence says otherwise::

    <!-- docs: not-run (needs a GPU cluster and an S3 bucket) -->
    <!-- docs: full-only (about 90 s: the full demo) -->      run only with MEDFM_DOCS_FULL=1

The reason in parentheses is required.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
COMMAND_LANGS = {"bash", "sh", "shell", "python"}
MARK = re.compile(r"<!--\s*docs:\s*(?P<kind>[a-z-]+)\s*(?:\((?P<reason>.*)\))?\s*-->")
KINDS = {"not-run", "full-only"}


@dataclass
class Block:
    """One fenced block: ``path`` and 1-based ``line`` of its opening fence."""

    path: Path
    line: int
    lang: str
    text: str
    mark: Optional[str] = None        # None (run), "not-run", "full-only"
    reason: Optional[str] = None
    mark_error: Optional[str] = None  # a malformed marker

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def is_command(self) -> bool:
        if self.lang in COMMAND_LANGS:
            return True
        return self.lang in ("text", "console") and any(l.startswith("$ ") for l in self.text.splitlines())

    def transcript(self) -> List[Tuple[str, List[str]]]:
        """``[(command, printed lines)]`` of a ``$ `` transcript."""
        out: List[Tuple[str, List[str]]] = []
        for line in self.text.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif out:
                out[-1][1].append(line)
        return out


def blocks(path: Path) -> List[Block]:
    """The fenced blocks of one Markdown file, with the marker of the line before each fence."""
    lines = path.read_text().splitlines()
    found: List[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        b = Block(path, start + 1, lang, "\n".join(lines[start + 1:j]) + "\n")
        prev = lines[start - 1].strip() if start else ""
        if prev.startswith("<!-- docs:"):
            mm = MARK.fullmatch(prev)
            if not mm or mm.group("kind") not in KINDS or not (mm.group("reason") or "").strip():
                b.mark_error = f"malformed marker {prev!r}: use <!-- docs: not-run (reason) --> or full-only (reason)"
            else:
                b.mark, b.reason = mm.group("kind"), mm.group("reason").strip()
        found.append(b)
        i = j + 1
    return found


def command_blocks() -> List[Block]:
    return [b for p in DOCS for b in blocks(p) if b.is_command]


def shell_commands(text: str) -> List[str]:
    """A bash block's commands: continuation lines joined, comments and blank lines dropped, a
    heredoc (``<<'TAG'`` … ``TAG``) kept with its body as one command."""
    cmds: List[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.rstrip().endswith("\\") and i < len(lines):
            line = line.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
        here = re.search(r"<<-?\s*'?(\w+)'?", line)
        if here:
            body = []
            while i < len(lines) and lines[i].strip() != here.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            line = "\n".join([line] + body + [here.group(1)])
        cmds.append(line)
    return cmds


def medfm_argv(command: str) -> Optional[List[str]]:
    """``medfm ARGS  # comment`` → ``[ARGS]``; None for any other command."""
    if not command.startswith("medfm ") or "\n" in command:
        return None
    lex = shlex.shlex(command, posix=True)
    lex.whitespace_split, lex.commenters = True, ""
    argv = []
    for token in lex:  # as in bash, '#' starts a comment only at the start of a word (FILE#RECORD is one word)
        if token.startswith("#"):
            break
        argv.append(token)
    return argv[1:]


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def shape(line: str) -> str:
    """A printed line with every number replaced by ``#`` (numbers that vary with the data) and runs
    of spaces made one (table columns widen with their numbers)."""
    return re.sub(r" +", " ", NUMBER.sub("#", line.rstrip()))
