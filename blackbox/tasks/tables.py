"""Read a user's table (JSONL, JSON, CSV or TSV) into rows of named string columns, with errors
that name the file, the row and the column."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from blackbox.errors import InputError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}


def read_table(path: str | os.PathLike, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The ``columns`` of every row of ``path`` as stripped strings (format from the extension:
    ``.jsonl`` one object per line, ``.json`` a list of objects, ``.csv``, ``.tsv``). A missing
    file, an unknown format, a malformed row, a missing column or an empty value is an
    :class:`~blackbox.errors.InputError`; an empty table is one too."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: unknown table format {path.suffix or '(no extension)'!r}; "
                         "use .jsonl, .json, .csv or .tsv")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"expected a file, got a directory: {path}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = _parse(path, kind, text)
    if not rows:
        raise InputError(f"{path} holds no rows")
    out = []
    for number, row in rows:
        missing = [c for c in columns if c not in row]
        if missing:
            have = ", ".join(map(str, row)) or "none"
            raise InputError(f"{path}: row {number} has no column {missing[0]!r} (columns: {have})")
        values = {}
        for c in columns:
            value = row[c]
            if value is None or isinstance(value, (dict, list)) or not str(value).strip():
                raise InputError(f"{path}: row {number} has no usable value in column {c!r}")
            values[c] = str(value).strip()
        out.append(values)
    return out


def _parse(path: Path, kind: str, text: str) -> list[tuple[int, dict]]:
    if kind in ("csv", "tsv"):
        try:
            reader = csv.DictReader(text.splitlines(), delimiter="\t" if kind == "tsv" else ",")
            return [(i + 2, {k: v for k, v in row.items() if k is not None})
                    for i, row in enumerate(reader) if any((v or "").strip() for v in row.values() if isinstance(v, str))]
        except csv.Error as exc:
            raise InputError(f"{path}: not a valid {kind.upper()} file: {exc}") from None
    if kind == "json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of objects")
        lines = list(enumerate(data, 1))
    else:
        lines = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    lines.append((number, json.loads(line)))
                except ValueError as exc:
                    raise InputError(f"{path}: line {number} is not valid JSON: {exc}") from None
    for number, row in lines:
        if not isinstance(row, dict):
            raise InputError(f"{path}: row {number} is not an object with named fields")
    return lines
