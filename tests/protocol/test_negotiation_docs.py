"""The transition table is written three times: ``TRANSITIONS``/``CROSSING`` in the code, and as text in
protocol/negotiation.py's docstring and in protocol/README.md. The texts are parsed here and must say
exactly what the code does.

Text rows: ``R→P  Msg, Msg | Msg (note)   STATE, STATE → STATE | STATE``; the message alternatives (split
on ``|``) pair with the next states in order, a ``,`` lists several messages or states that share one, a
row whose next states do not fit on its line continues on the next, and a row noted ``crossing`` belongs
to ``CROSSING``. The docstring names messages by class, the README by wire tag.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from protocol import negotiation
from protocol.negotiation import CROSSING, STREAM_MESSAGES, TRANSITIONS, State, TaskRole

README = Path(negotiation.__file__).resolve().parent / "README.md"

Key = tuple[State, TaskRole, str]
Table = dict[Key, State]

NAMES = {cls.__name__: cls.TYPE for cls in STREAM_MESSAGES} | {cls.TYPE: cls.TYPE for cls in STREAM_MESSAGES}
SENDERS = {"R→P": TaskRole.REQUESTER, "P→R": TaskRole.PROVIDER}
STATES = r"[A-Z_]+(?:,\s*[A-Z_]+)*"
ROW = re.compile(rf"^(?P<sender>R→P|P→R)\s+(?P<messages>.+?)\s{{2,}}(?P<sources>{STATES})\s*→\s*(?P<targets>.+)$")
REMARK = re.compile(r"\(([^)]*)\)")


def table_rows(text: str) -> list[str]:
    """The rows of the one block of lines starting with R→P / P→R (up to a blank line or a code fence),
    continuation lines joined."""
    lines = [line.strip() for line in text.splitlines()]
    starts = [n for n, line in enumerate(lines) if line[:3] in SENDERS]
    assert starts, "no transition table found"
    rows: list[str] = []
    for line in lines[starts[0]:]:
        if not line or line.startswith("```"):
            break
        if line[:3] in SENDERS:
            rows.append(line)
        else:
            rows[-1] += "  " + line
    assert len(rows) == len(starts), "the table's rows are not one block"
    return rows


def parse(text: str) -> tuple[Table, Table]:
    """(transitions, crossing) as the text's table states them; AssertionError on a row that does not parse."""
    tables: tuple[Table, Table] = ({}, {})
    for row in table_rows(text):
        match = ROW.match(row)
        assert match, f"cannot read the row {row!r}"
        remarks = REMARK.findall(match["messages"])
        alternatives = [part.strip() for part in REMARK.sub("", match["messages"]).split("|")]
        targets = [State(part.strip()) for part in match["targets"].split("|")]
        assert len(alternatives) == len(targets), f"{row!r}: {len(alternatives)} messages, {len(targets)} states"
        table = tables[1] if any("crossing" in remark for remark in remarks) else tables[0]
        for alternative, target in zip(alternatives, targets, strict=True):
            for name in alternative.split(","):
                for source in match["sources"].split(","):
                    key = (State(source.strip()), SENDERS[match["sender"]], NAMES[name.strip()])
                    assert key not in table, f"{row!r} repeats {key}"
                    table[key] = target
    return tables


DOCS = {"negotiation.py docstring": negotiation.__doc__ or "", "protocol/README.md": README.read_text()}


@pytest.mark.parametrize("where", sorted(DOCS))
def test_the_written_table_is_the_code_s_table(where: str) -> None:
    transitions, crossing = parse(DOCS[where])
    assert transitions == TRANSITIONS
    assert crossing == CROSSING


def test_the_check_notices_a_changed_missing_or_extra_row() -> None:
    text = DOCS["protocol/README.md"]
    wrong_state = text.replace("OFFERED          → ACCEPTED | CANCELLED", "OFFERED          → ACCEPTED | REJECTED")
    missing = text.replace("R→P  resume                          IDLE             → RESUMING\n", "")
    extra = text.replace("P→R  status, log                     LEASED", "P→R  status, log, reject             LEASED")
    not_crossing = text.replace("cancel (crossing)               RESULT", "cancel                          RESULT")
    for changed in (wrong_state, missing, extra, not_crossing):
        assert changed != text
        assert parse(changed) != (TRANSITIONS, CROSSING)


def test_an_unreadable_row_fails_the_check() -> None:
    with pytest.raises(AssertionError, match="cannot read"):
        parse("R→P  request IDLE → REQUESTED\n")
    with pytest.raises(KeyError):
        parse("R→P  Request                 IDLE → REQUESTED\n")  # neither a class name nor a tag
