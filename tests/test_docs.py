"""The README's option table lists exactly the schema's options (posinfo.schema: GROUPS, TOP_LEVEL)."""

from __future__ import annotations

import re
from pathlib import Path

from posinfo import schema

README = Path(__file__).resolve().parents[1] / "README.md"
CODE = re.compile(r"`([^`]+)`")


def _option_table(text: str) -> list[tuple[str, str]]:
    """(first cell, second cell) of each row of the table under "Config groups"."""
    lines = text[text.index("Config groups (`conf/`)"):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| group / field"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows.append((cells[0], cells[1]))
    return rows


def _items(cell: str) -> list[str]:
    """``cell`` split at its commas outside parentheses: ``a` 1, `b` (x, y)`` -> two items."""
    items, depth, cur = [], 0, ""
    for ch in cell:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    return [*items, cur]


def _mentioned(rows: list[tuple[str, str]]) -> set[str]:
    """Every key the table names: ``group.key`` (or ``group.key=VALUE``) anywhere; ``.key`` after
    a ``group.key`` in the first cell; the fields that open each item of a ``group.*`` row; a
    group's own row (``backbone``) names its option key (``backbone.name``); bare top-level names."""
    keys: set[str] = set()
    for first, second in rows:
        group = None
        for code in CODE.findall(first):
            if code.endswith(".*"):
                group = code[:-2]
                keys.update(f"{group}.{CODE.findall(item)[0]}" for item in _items(second) if CODE.search(item))
            elif code.startswith(".") and group:
                keys.add(f"{group}{code}")
            elif code in schema.GROUPS:
                keys.add(f"{code}.name")
            else:
                group = code.split(".")[0]
                keys.add(code)
        keys.update(c.split("=")[0] for c in CODE.findall(second) if re.fullmatch(r"[a-z_]+(\.[a-z_]+)+(=.*)?", c))
    return keys


def test_the_readme_option_table_lists_exactly_the_schemas_options():
    mentioned = _mentioned(_option_table(README.read_text()))
    known = set(schema.rules())
    missing = sorted(known - mentioned)
    assert not missing, f"README's Config groups table does not mention {missing}"
    groups = {*schema.GROUPS, *(k.split(".")[0] for k in schema.TOP_LEVEL)}
    unknown = sorted(k for k in mentioned - known if k.split(".")[0] in groups or "." not in k)
    assert not unknown, f"README's Config groups table names {unknown}, which posinfo/schema.py does not have"


def test_the_readme_gives_per_image_csv_columns_of_every_target_kind():
    from posinfo.kinds import KINDS

    row = next(line for line in README.read_text().splitlines() if line.startswith("| `per_image.csv` |"))
    for kind in KINDS.values():
        assert f"`{','.join(('input', 'image', *kind.columns))}`" in row, kind.name
