"""docs/commands.md documents every action, and its command examples are valid. Pure: no I/O
besides reading the doc.

In the doc, a ```json block whose nearest non-blank line above is `Command:` is a command
example that must pass validation; one after `Command (invalid):` must be refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ocpp2mqtt import commands
from ocpp2mqtt.ocpp import protocol

DOC = Path(__file__).resolve().parent.parent / "docs" / "commands.md"
VALID = "Command:"
INVALID = "Command (invalid):"
VALID_201 = "Command (OCPP 2.0.1):"


def _facts() -> commands.StationFacts:
    return commands.StationFacts(open_transactions={1: 42})


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _json_blocks() -> list[tuple[str, str, int]]:
    """(marker, body, line number) of every ```json block; marker = nearest non-blank line above."""
    lines = _text().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```json":
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        above = i - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        marker = lines[above].strip() if above >= 0 else ""
        blocks.append((marker, "\n".join(lines[i + 1:end]), i + 1))
        i = end + 1
    return blocks


def _examples(marker: str) -> list:
    return [pytest.param(body, id=f"line{line}") for m, body, line in _json_blocks()
            if m == marker]


def _sections() -> dict[str, str]:
    """`### <name>` heading → the text up to the next heading of any level."""
    parts = re.split(r"^(#{1,6} .*)$", _text(), flags=re.MULTILINE)
    out = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        match = re.fullmatch(r"### (\S+)\s*", heading)
        if match:
            out[match.group(1)] = body
    return out


def test_doc_exists_with_examples():
    assert DOC.is_file()
    assert _examples(VALID), "no Command: examples found"
    assert _examples(INVALID), "no Command (invalid): examples found"


def test_every_action_has_a_heading():
    headings = set(_sections())
    missing = [a for a in commands.ALL_ACTIONS if a not in headings]
    assert not missing, f"docs/commands.md lacks '### <action>' for {missing}"


def test_no_heading_for_an_action_that_does_not_exist():
    stale = [h for h in _sections() if re.fullmatch(r"[a-z]+(_[a-z]+)+", h)
             and h not in commands.ALL_ACTIONS]
    assert not stale, f"headings for unknown actions: {stale}"


@pytest.mark.parametrize("body", _examples(VALID))
def test_command_example_is_valid(body):
    commands.plan(body.encode(), _facts())


@pytest.mark.parametrize("body", _examples(VALID_201))
def test_201_example_is_planned_for_a_201_station(body):
    """The 2.0.1 examples: valid (or, where the doc shows an error, refused) for 2.0.1."""
    facts = commands.StationFacts(open_transactions={1: "f3b2c1d0"},
                                  version=protocol.V201)
    try:
        planned = commands.plan(body.encode(), facts)
    except commands.CommandError as exc:
        assert "2.0.1" in str(exc), exc
        return
    assert planned.ocpp_action and planned.version is protocol.V201


def test_there_are_201_examples():
    assert len(_examples(VALID_201)) >= 8


@pytest.mark.parametrize("body", _examples(INVALID))
def test_invalid_example_is_refused(body):
    with pytest.raises(commands.CommandError):
        commands.plan(body.encode(), _facts())


def test_every_action_section_has_a_command_example_for_it():
    sections = _sections()
    lacking = []
    for action in commands.ALL_ACTIONS:
        expected = commands.ALIASES.get(action, action)
        section = sections.get(action, "")
        bodies = re.findall(rf"^{re.escape(VALID)}\s*\n```json\n(.*?)\n```", section,
                            flags=re.MULTILINE | re.DOTALL)
        if not any(commands.plan(b.encode(), _facts()).action == expected for b in bodies):
            lacking.append(action)
    assert not lacking, f"no Command: example in the section of {lacking}"


def test_unmarked_json_blocks_are_not_commands():
    """A JSON object with "action" but no "status" looks like a command: it must be marked."""
    unmarked = []
    for marker, body, line in _json_blocks():
        if marker in (VALID, INVALID, VALID_201):
            continue
        try:
            doc = json.loads(body)
        except ValueError:
            continue
        if isinstance(doc, dict) and "action" in doc and "status" not in doc:
            unmarked.append(line)
    assert not unmarked, f"command-like JSON without a Command: marker at lines {unmarked}"
