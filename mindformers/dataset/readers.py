"""Reading raw records from .json / .jsonl / .txt files or Python lists, each tagged with where it came from.

Every record carries a location string (``"data.jsonl:3"``: the file and the 1-based line the record starts
on; ``"record 3 of the given list"`` for a list) so that any later error about a record can say where to
look. Supported inputs:

- ``.jsonl``: one JSON object per line; blank lines are skipped (they still count for line numbers).
- ``.json``: one JSON array of objects (the line of each object is the line its ``{`` is on).
- ``.txt``: plain text; documents are blocks separated by one or more blank lines, and each becomes a
  ``{"text": block}`` record (the lines of a block are kept with their newlines). A file without blank
  lines is one document; for plain-text packing this only decides where the EOS separators go.
- a list (or tuple) of dicts.
"""

import json
import os
from dataclasses import dataclass
from typing import Any, List, Sequence, Union

SUFFIXES = (".json", ".jsonl", ".txt")

Source = Union[str, "os.PathLike[str]", Sequence[dict]]


@dataclass(frozen=True)
class Record:
    """One raw record and where it was read from.

    Attributes:
        data: the parsed record (any JSON value; formats check that it is a dict with the right keys).
        where: ``"<file>:<line>"`` (1-based) or ``"record <n> of the given list"``, for error messages.
    """

    data: Any
    where: str


def read_records(source: Source) -> List[Record]:
    """Read every record of ``source``.

    Args:
        source: a path to a ``.json``, ``.jsonl`` or ``.txt`` file, or a list of dicts.

    Returns:
        The records in file order, each with its location.

    Raises:
        FileNotFoundError: the path does not exist; IsADirectoryError: it is a directory.
        ValueError: unsupported suffix, text that is not UTF-8 or invalid JSON (the message names file and
            line), a ``.json`` file that is not an array, or no records at all.
    """
    if isinstance(source, (list, tuple)):
        records = [Record(item, f"record {i + 1} of the given list") for i, item in enumerate(source)]
        if not records:
            raise ValueError("the given list of records is empty; pass at least one record")
        return records
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"source must be a path to a {'/'.join(SUFFIXES)} file or a list of dicts, found {type(source).__name__}"
        )
    path = os.fspath(source)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; pass one {'/'.join(SUFFIXES)} file (the directory holds "
                                f"{sorted(os.listdir(path))[:10]})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no dataset file at {path}; pass an existing {'/'.join(SUFFIXES)} file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"cannot read {path}: unsupported file type {suffix or '(no suffix)'!r}; expected one of {SUFFIXES} "
            "(.jsonl: one JSON object per line, .json: an array of objects, .txt: plain text)"
        )
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")  # -sig: drop the byte-order mark some editors write
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); expected a "
            f"{suffix} file of UTF-8 text, found binary data or another encoding"
        ) from None
    if not text.strip():
        raise ValueError(f"{path} is empty; a dataset file needs at least one record")
    records = {".jsonl": _read_jsonl, ".json": _read_json_array, ".txt": _read_text}[suffix](path, text)
    if not records:
        raise ValueError(f"{path} holds no records (an empty array?); a dataset file needs at least one record")
    return records


def _read_jsonl(path: str, text: str) -> List[Record]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno}); expected one JSON object per "
                f"line, found {_clip(line)}"
            ) from None
        records.append(Record(data, f"{path}:{number}"))
    return records


def _read_json_array(path: str, text: str) -> List[Record]:
    # Decode the array element by element so that each record knows the line it starts on.
    decoder = json.JSONDecoder()
    line_of = lambda offset: text.count("\n", 0, offset) + 1  # noqa: E731

    def skip_space(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def fail(offset: int, what: str) -> ValueError:
        return ValueError(f"{path}:{line_of(offset)}: invalid JSON: {what}; a .json dataset is one array of objects")

    i = skip_space(0)
    if i >= len(text) or text[i] != "[":
        found = "an object (use .jsonl for one object per line)" if text[i : i + 1] == "{" else _clip(text[i:])
        raise fail(i, f"expected '[' to open the array, found {found}")
    i = skip_space(i + 1)
    records = []
    if i < len(text) and text[i] == "]":
        i += 1
    else:
        while True:
            try:
                data, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
            records.append(Record(data, f"{path}:{line_of(i)}"))
            i = skip_space(end)
            if i < len(text) and text[i] == ",":
                i = skip_space(i + 1)
                continue
            if i < len(text) and text[i] == "]":
                i += 1
                break
            raise fail(i, f"expected ',' or ']' after a record, found {_clip(text[i:]) or 'the end of the file'}")
    i = skip_space(i)
    if i < len(text):
        raise fail(i, f"unexpected text after the array: {_clip(text[i:])}")
    return records


def _read_text(path: str, text: str) -> List[Record]:
    records, block, start = [], [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not block:
                start = number
            block.append(line)
        elif block:
            records.append(Record({"text": "\n".join(block)}, f"{path}:{start}"))
            block = []
    if block:
        records.append(Record({"text": "\n".join(block)}, f"{path}:{start}"))
    return records


def _clip(text: str, limit: int = 60) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")
