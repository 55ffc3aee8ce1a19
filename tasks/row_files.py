"""Rows of JSONL, CSV and TSV files, read streaming, with every unreadable line reported as `PATH:LINE: what`.

One reader serves every file of the project: the data folder of the paper's tasks (`tasks.sources`, JSONL) and
the folders of file-backed tasks (`tasks.files`, any of the three). A file is read line by line as bytes and
each line decoded on its own, so a file of any size takes the memory of one line, and a byte that is not UTF-8
is reported with its line and column. A UTF-8 byte order mark at the start of a file (spreadsheets write one) is
dropped.

- JSONL: one JSON object per line; blank lines are skipped.
- CSV / TSV: the first line is the header (the field names), then one row per record; fields are separated by
  commas or tabs and may be quoted with `"` (as Python's csv module and spreadsheets write them), so a quoted
  field can span lines; a row is reported by the line where it starts. Values are strings.
A file without any row (empty, blank, or a header alone) is an error too: `PATH: no rows (an empty file)`.
"""

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from sharpt_jax import storage

# The formats, by file suffix: the field separator of CSV and TSV, None for JSONL.
FORMATS = {".jsonl": None, ".csv": ",", ".tsv": "\t"}
_JSON_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false",
    list: "a list",
    dict: "an object",
}


class DataError(ValueError):
    """A task's rows that cannot be read: a missing file or TFDS builder, or a malformed row (one line that names
    the file and line, or what to run)."""


def json_type(value) -> str:
    """What a parsed JSON value is, in words ("a string", "null")."""
    return _JSON_TYPES.get(type(value), "null")


def text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, the line's text with its line ending) of a UTF-8 file; DataError at a line that is not
    UTF-8."""
    with storage.path(path).open("rb") as f:
        for number, line in enumerate(f, 1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}:{number}: not UTF-8 text (byte {line[err.start]:#04x} at column {err.start + 1})"
                ) from err
            yield number, text.removeprefix("\ufeff") if number == 1 else text


def _no_rows(path: str | Path) -> DataError:
    return DataError(f"{path}: no rows (an empty file)")


def json_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of every row of a JSONL file; DataError at the first line that is not a JSON object, or
    for a file without rows."""
    rows = 0
    for number, text in text_lines(path):
        if not text.strip():
            continue
        try:
            row = json.loads(text.rstrip("\r\n"))  # Positions then count within the line.
        except json.JSONDecodeError as err:
            reason = err.msg.removesuffix(" at")  # json's "Invalid control character at" already ends in "at".
            raise DataError(f"{path}:{number}: not valid JSON ({reason} at column {err.pos + 1})") from err
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: {json_type(row)}, expected a JSON object (one row per line)")
        rows += 1
        yield number, row
    if not rows:
        raise _no_rows(path)


def delimited_rows(path: str | Path, delimiter: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number where the row starts, {header field: value}) of every row of a CSV (`delimiter` ",") or TSV
    ("\\t") file; DataError at a header with empty or repeated names, a row with another number of values than
    the header, a broken quote, or a file without rows."""
    line = [0]  # The last line handed to the csv reader.

    def lines() -> Iterator[str]:
        for number, text in text_lines(path):
            line[0] = number
            yield text

    reader = csv.reader(lines(), delimiter=delimiter, strict=True)
    start, header, rows = 1, None, 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise DataError(f"{path}:{start}: not valid {_kind(delimiter)} ({err})") from err
        if values and header is None:
            header = values
            if problem := _header_problem(header):
                raise DataError(f"{path}:{start}: {problem}")
        elif values:
            if len(values) != len(header):
                raise DataError(
                    f"{path}:{start}: {len(values)} values, the header has {len(header)} ({', '.join(header)})"
                )
            rows += 1
            yield start, dict(zip(header, values, strict=True))
        start = line[0] + 1
    if not rows:
        raise _no_rows(path)


def _kind(delimiter: str) -> str:
    return "CSV" if delimiter == "," else "TSV"


def _header_problem(header: list[str]) -> str | None:
    if any(not name.strip() for name in header):
        return f"the header ({', '.join(header)}) has an empty column name"
    if repeated := sorted({name for name in header if header.count(name) > 1}):
        return f"the header repeats the column name(s) {', '.join(repeated)}"
    return None


def file_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """The rows of a .jsonl, .csv or .tsv file (its suffix says which), as `json_rows` or `delimited_rows`."""
    delimiter = FORMATS[Path(path).suffix]
    return json_rows(path) if delimiter is None else delimited_rows(path, delimiter)
