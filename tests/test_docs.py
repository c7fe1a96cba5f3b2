"""The docs stay true: every relative link reaches a file and heading that exist, every
``python -m storyteller`` command in a code block parses with the CLI's own parser, and every
flag written beside a command in the text is one that command has. Nothing is run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from storyteller.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
IDS = [str(page.relative_to(ROOT)) for page in PAGES]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SPAN = re.compile(r"`([^`]+)`")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
STORYTELLER = re.compile(r"-m\s+storyteller\b")
SEPARATORS = {"&&", "||", "|", ";"}


def _lines(page: Path) -> list[tuple[int, str, str | None]]:
    """Each line with its number and the info string of the code block it is in (None in
    prose); the fence lines themselves are left out."""
    out, block = [], None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            block = line.strip()[3:] if block is None else None
        else:
            out.append((number, line, block))
    return out


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    for _, line, block in _lines(page):
        match = re.match(r"#{1,6} (.+)", line)
        if block is None and match:
            slug = base = _slug(match.group(1))
            count = 0
            while slug in anchors:  # GitHub numbers repeated headings: x, x-1, x-2
                count += 1
                slug = f"{base}-{count}"
            anchors.add(slug)
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_relative_links_reach_files_and_headings(page):
    broken = []
    for number, line, block in _lines(page):
        if block is not None:
            continue
        for target in LINK.findall(SPAN.sub("", line)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}:{number}: {target}: no such file")
            elif fragment and fragment not in _anchors(dest):
                broken.append(f"{page.name}:{number}: {target}: no heading #{fragment}")
    assert not broken, "\n".join(broken)


def _commands(page: Path) -> list[tuple[int, str, list[str]]]:
    """Every ``-m storyteller`` command in the page's shell blocks: its line, its text and
    its arguments, with line continuations joined, comments, prefixes (``python3``,
    ``torchrun ...``, ``VAR=value``, ``!``) and chained commands left out, and a shell loop's
    ``$variable`` replaced by the loop's first value."""
    found, pending, start, loops = [], "", 0, {}
    for number, line, block in _lines(page):
        if block is None or block.startswith("python"):
            continue
        start = start if pending else number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text, pending = pending + line, ""
        loop = re.match(r"\s*for (\w+) in (\w[\w.-]*)", text)
        if loop:
            loops[loop.group(1)] = loop.group(2)
        if not STORYTELLER.search(text):
            continue
        for name, value in loops.items():
            text = re.sub(rf"\$\{{?{name}\b\}}?", value, text)
        tokens = shlex.split(text, comments=True)
        for i in range(len(tokens) - 1):
            if tokens[i] == "-m" and tokens[i + 1] == "storyteller":
                rest = tokens[i + 2 :]
                end = next((j for j, t in enumerate(rest) if t in SEPARATORS), len(rest))
                found.append((start, text.strip(), rest[:end]))
    return found


def test_the_docs_show_commands():
    assert sum(len(_commands(page)) for page in PAGES) > 20


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_commands_in_code_blocks_parse(page, capsys):
    parser, failed = build_parser(), []
    for number, command, args in _commands(page):
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            if exc.code:
                error = capsys.readouterr().err.strip().splitlines()[-1:]
                failed.append(f"{page.name}:{number}: {command}\n    {' '.join(error)}")
    assert not failed, "\n".join(failed)


def _flags_by_command() -> dict[str, set[str]]:
    choices = build_parser()._subparsers._group_actions[0].choices
    return {
        name: {f for a in sub._actions for f in a.option_strings} for name, sub in choices.items()
    }


def _named_flags(line: str, commands: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(command, flag) pairs the line writes: a code span that starts with a command (after an
    optional ``python -m storyteller``) and names flags, and, in a table row whose first cell
    starts with a command, every code span of the row that is a flag."""
    spans = [re.sub(r"^python3? -m storyteller ", "", span) for span in SPAN.findall(line)]
    pairs = [
        (span.split()[0], flag)
        for span in spans
        if span.split()[0] in commands
        for flag in FLAG.findall(span)
    ]
    first_cell = line.strip().strip("|").split("|")[0] if line.lstrip().startswith("|") else ""
    first = SPAN.findall(first_cell)
    if first and first[0].split()[0] in commands:
        row_flags = [span.split()[0] for span in spans if span.startswith("--")]
        pairs += [(first[0].split()[0], flag) for flag in row_flags]
    return pairs


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_flags_named_beside_a_command_exist(page):
    commands, unknown = _flags_by_command(), []
    for number, line, block in _lines(page):
        if block is None:
            for command, flag in _named_flags(line, commands):
                if flag not in commands[command]:
                    unknown.append(f"{page.name}:{number}: `{command}` has no {flag}")
    assert not unknown, "\n".join(unknown)


def test_the_readme_shows_the_test_command_ci_runs():
    command = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert f"\n{command}\n" in (ROOT / "README.md").read_text(encoding="utf-8")
