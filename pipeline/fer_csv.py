"""The FER2013 CSV format: one definition of a valid header and a valid row.

ExampleGen, the TFDS builder and the benchmarks all read rows through this
module, so they accept and reject exactly the same rows for the same reasons.
"""
import csv
import dataclasses
import errno
import glob as _glob
import gzip
import hashlib
import io
import os
import stat
import typing
from typing import BinaryIO, Iterator

import numpy as np

from pipeline.config import IngestConfig
from pipeline.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_HEADER_BYTES = 64 * 1024
_PIXEL_CHARS = b"0123456789 \t"


class RowError(ValueError):
    """A row that is not a valid FER example; str(error) is the quarantine reason."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the columns of one file are (files of one dataset may order them differently)."""

    names: tuple[str, ...]
    label: int | None  # None only for files read without labels (read_header(labelled=False))
    pixels: int
    usage: int | None


@dataclasses.dataclass(frozen=True)
class TooLongLine:
    """A physical line longer than any valid row; only its head is kept."""

    head: bytes
    length: int


class NoInput(UserError):
    """Nothing matches the input's paths."""


class Inputs(typing.NamedTuple):
    files: list[str]                  # the files read, sorted
    skipped: list[tuple[str, str]]    # (path, why) of the entries of a folder or glob not read


def input_files(data: str | list[str]) -> list[str]:
    """The files `data` names: CSV paths, folders of shards or globs, local or remote. Hidden
    files are skipped silently; any other entry that is not read (a subfolder, a broken link) is
    said once per process on a line "skipped: ...". Raises NoInput when nothing matches, and
    UserError for a local entry that is not a regular file (a named pipe would block a reader
    forever)."""
    return said(list_inputs(data)).files


def said(found: Inputs) -> Inputs:
    """Print each skipped entry on a line "skipped: <path> (<why>)", once per process (the run
    lists its input more than once)."""
    for entry in found.skipped:
        if entry not in _said:
            _said.add(entry)
            print(f"skipped: {entry[0]} ({entry[1]})", flush=True)
    return found


_said: set[tuple[str, str]] = set()


def list_inputs(data: str | list[str]) -> Inputs:
    """input_files, with the entries it does not read and why, for a caller to record."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline import artifacts

    patterns = [_pattern(d) for d in ([data] if isinstance(data, str) else data)]
    try:
        found = [m for r in FileSystems.match(patterns) for m in r.metadata_list]
    except Exception as e:  # Beam raises BeamIOError with a nested reason
        found, why = [], f" ({e})"
    else:
        why = ""
    paths = sorted({m.path for m in found if not _hidden(m.path)})
    if not paths:
        raise NoInput(
            f"No input file matches {data!r}{why}. Check the path; pass one CSV, a directory of "
            f"CSV shards, or a quoted glob such as 'data/*.csv.gz'.")
    for path in paths:
        _regular(path)
    read = set(paths)
    skipped = sorted({(path, _why_not_read(path)) for pattern in patterns
                      if not artifacts.remote(pattern) for path in _glob.glob(pattern)
                      if path not in read and not _hidden(path)})
    return Inputs(paths, skipped)


def _pattern(data: str) -> str:
    """The glob for one entry of --data: a local file or folder that exists is taken as named,
    even when its name holds glob characters (faces[1].csv); anything else is a pattern."""
    from pipeline import artifacts

    if not artifacts.remote(data) and os.path.exists(data):
        literal = _glob.escape(data)
        return artifacts.join(literal, "*") if os.path.isdir(data) else literal
    if not any(c in data for c in "*?[") and artifacts.is_dir(data):
        return artifacts.join(data, "*")
    return data


def _hidden(path: str) -> bool:
    return os.path.basename(path).startswith(".")


_KINDS = {stat.S_ISFIFO: "a named pipe (FIFO)", stat.S_ISSOCK: "a socket",
          stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
          stat.S_ISDIR: "a folder"}


def _regular(path: str) -> None:
    """Refuse a local input that is not a regular file, by its type, before anything opens it:
    opening a named pipe waits for a writer, reading a device may never end."""
    if "://" in path:
        return  # object storage holds only objects
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # gone since it was listed: the fingerprint and ExampleGen say so
    if not stat.S_ISREG(mode):
        kind = next((k for test, k in _KINDS.items() if test(mode)), "not a regular file")
        raise UserError(
            f"The input {path} is {kind}, not a regular file, and is never read (it could block "
            f"the run forever); pass CSV files, or a folder or glob of them only.")


def _why_not_read(path: str) -> str:
    """Why an entry of a local folder or glob is not an input."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop"
        if os.path.islink(path):
            return f"a broken symbolic link to {os.readlink(path)}"
        return e.strerror or str(e)
    if os.path.isdir(path):
        return "a folder: only the files directly in the input folder are read"
    return "not listed by Beam's file system"


def open_binary(path: str) -> tuple[BinaryIO, bool]:
    """Open a local or remote (gs://, s3://, hdfs://) file; return it and whether it is gzip.

    Gzip is detected by content, not by name, so a compressed shard without
    the .gz suffix is still read correctly.
    """
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    try:
        raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except PermissionError:
        raise UserError(f"{path} cannot be read: permission denied. Give this user read access "
                        f"to it (chmod a+r), or pass a copy it can read.") from None
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(GZIP_MAGIC):
        return io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), buffer_size=1 << 20), True
    if magic == _ZIP_MAGIC:
        raw.close()
        raise UserError(f"{path} is a ZIP archive. Unzip it and pass the CSV inside "
                        f"(gzip-compressed .csv.gz files are read directly).")
    return raw, False


def read_header(f: BinaryIO, path: str, config: IngestConfig, labelled: bool = True
                ) -> tuple[Layout, int]:
    """Parse the header line; return the layout and the header's length in bytes.

    labelled=False (pipeline.predict) needs only the pixels column: the layout's label is then
    None when the file has no label column."""
    expected = f"{config.label_column},{config.pixels_column},{config.usage_column}"
    try:
        line = f.readline(_MAX_HEADER_BYTES)
    except (OSError, EOFError) as e:
        raise UserError(f"{path} cannot be read ({e}). If it is meant to be gzip-compressed it is "
                        f"damaged: compress the CSV again, or pass the uncompressed file.") from None
    if not line:
        raise UserError(f"{path} is empty. A FER CSV starts with the header line '{expected}' "
                        f"followed by one row per image; pass a file that holds data.")
    if len(line) >= _MAX_HEADER_BYTES and not line.endswith(b"\n"):
        raise UserError(f"{path} does not start with a CSV header: its first line is longer than "
                        f"{_MAX_HEADER_BYTES // 1024} KB. A FER CSV starts with the line "
                        f"'{expected}'; check that this is the right file and that it has line breaks.")
    if line.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path} is UTF-16 encoded. Save it as UTF-8 (for example: iconv -f "
                        f"UTF-16 -t UTF-8 {path} > fixed.csv) and pass that file.")
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise UserError(f"{path} is not a text CSV file (its first line holds binary data). "
                        f"Pass the FER CSV itself, plain or gzip-compressed.")
    text = text.rstrip("\r\n")
    if "\r" in text:
        raise UserError(f"{path} ends its lines with a bare carriage return (old Mac style), "
                        f"so it reads as one long line. Convert the line breaks (for example: "
                        f"tr '\\r' '\\n' < {path} > fixed.csv) and pass that file.")
    try:
        names = tuple(n.strip() for n in next(csv.reader([text]), []))
    except csv.Error as e:
        raise UserError(f"{path} has a header line that is not valid CSV ({e}). A FER CSV "
                        f"starts with the line '{expected}'.") from None
    lowered = [n.lower() for n in names]

    def find(column: str) -> int | None:
        return lowered.index(column.lower()) if column.lower() in lowered else None

    label, pixels, usage = (find(c) for c in
                            (config.label_column, config.pixels_column, config.usage_column))
    if (label is None and labelled) or pixels is None:
        missing = [c for c, i in ((config.label_column, label), (config.pixels_column, pixels))
                   if i is None and (labelled or c == config.pixels_column)]
        hint = ""
        if names and names[0].isdigit():
            hint = (" The first line looks like a data row: the file has no header; insert the "
                    f"line '{expected}' at the top.")
        elif "\t" in text or ";" in text:
            hint = (" The file seems to use tabs or semicolons between columns; FER CSVs use "
                    "commas: convert the separators.")
        optional = (f"the {config.usage_column} column is optional" if labelled else
                    f"only the {config.pixels_column} column is needed here")
        raise UserError(f"{path} has the header {text.strip()[:200]!r}, which lacks the column(s) "
                        f"{', '.join(missing)}. A FER CSV starts with '{expected}' ({optional}; "
                        f"any column order works).{hint}")
    return Layout(names, label, pixels, usage), len(line)


def split_fields(body: bytes) -> list[bytes]:
    """CSV fields of one line; the csv module only when quotes make it necessary."""
    if b'"' not in body:
        return body.split(b",")
    text = body.decode("utf-8", errors="replace")
    try:
        return [s.encode("utf-8") for s in next(csv.reader([text]), [])]
    except csv.Error as e:
        raise RowError(f"malformed CSV quoting ({e})") from None


def parse_row(body: bytes, layout: Layout, config: IngestConfig
              ) -> tuple[str, int, np.ndarray]:
    """Return (split, label, pixels as int64[n_pixels]) or raise RowError with the reason."""
    fields = _fields(body, layout)
    raw_label = fields[layout.label].strip()
    if not raw_label:
        raise RowError(f"empty {config.label_column}")
    digits = raw_label.lstrip(b"0") or b"0"  # bounded before int(): any length is a row error
    if not raw_label.isdigit() or len(digits) > 9 or int(digits) >= len(config.classes):
        raise RowError(f"{config.label_column} {_show(raw_label)} is not a class id "
                       f"0-{len(config.classes) - 1}")
    label = int(digits)
    pixels = parse_pixels(fields[layout.pixels], config)

    if layout.usage is None:
        return hash_split(pixels, config), label, pixels
    usage = fields[layout.usage].strip().decode("utf-8", errors="replace")
    split = config.usage_to_split.get(usage)
    if split is None:
        raise RowError(f"{config.usage_column} {usage!r} is not one of "
                       f"{', '.join(config.usage_to_split)}")
    return split, label, pixels


def parse_pixels(field: bytes, config: IngestConfig) -> np.ndarray:
    """One row's pixels field as int64[n_pixels], or RowError with the reason."""
    pixels_text = field.strip()
    if not pixels_text:
        raise RowError(f"empty {config.pixels_column}")
    if pixels_text.translate(None, _PIXEL_CHARS):
        bad = next(t for t in pixels_text.split(b" ") if t.translate(None, _PIXEL_CHARS))
        raise RowError(f"{config.pixels_column} holds the non-integer value {_show(bad)}")
    # Safe: only digits and whitespace remain, so fromstring cannot stop early.
    pixels = np.fromstring(pixels_text, dtype=np.int64, sep=" ")
    if pixels.size != config.n_pixels:
        raise RowError(f"found {pixels.size} pixel values, expected {config.n_pixels} "
                       f"({config.image_size}x{config.image_size})")
    if pixels.max() > 255:
        at = int(np.argmax(pixels > 255))
        raise RowError(f"pixel {at} has the value {pixels[at]}, outside 0-255")
    return pixels


def _fields(body: bytes, layout: Layout) -> list[bytes]:
    fields = split_fields(body)
    if len(fields) != len(layout.names):
        raise RowError(f"expected {len(layout.names)} fields ({','.join(layout.names)}), "
                       f"found {len(fields)}")
    return fields


def hash_split(pixels: np.ndarray, config: IngestConfig) -> str:
    """Deterministic split from the image content: identical images always share a split."""
    digest = hashlib.md5(pixels.astype(np.uint8).tobytes()).digest()
    point = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    edge = 0.0
    for split, share in config.hash_split.items():
        edge += share
        if point < edge:
            return split
    return split


def read_lines(f: BinaryIO, first_line: int, end: int | None, max_line_bytes: int
               ) -> Iterator[tuple[int, bytes | TooLongLine]]:
    """Yield (line number, line without its line break) from f's position up to byte `end`.

    Memory stays bounded by max_line_bytes even for a gigabyte line: the rest of
    an over-long line is read in pieces and only its length is kept.
    """
    pos, number = 0, first_line
    while end is None or pos < end:
        line = f.readline(max_line_bytes + 1)
        if not line:
            return
        pos += len(line)
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            head, length = line, len(line)
            while not line.endswith(b"\n"):
                line = f.readline(1 << 20)
                if not line:
                    break
                length += len(line)
                pos += len(line)
            yield number, TooLongLine(head, length)
        else:
            yield number, line.rstrip(b"\r\n")
        number += 1


def read_rows(f: BinaryIO, first_line: int, end: int | None, layout: Layout,
              config: IngestConfig, parse=None) -> Iterator[tuple[int, bytes, tuple | str | None]]:
    """Yield (line number, raw line, outcome) for each line from f's position up to `end`.

    The outcome is what `parse` (default parse_row: (split, label, pixels)) makes of a valid
    row, the reason string for an invalid one, or None for a blank line.
    """
    parse = parse or parse_row
    for number, line in read_lines(f, first_line, end, config.max_line_bytes):
        if isinstance(line, TooLongLine):
            yield number, line.head, _too_long(line, config)
        elif not line.strip():
            yield number, line, None
        else:
            try:
                yield number, line, parse(line, layout, config)
            except RowError as e:
                yield number, line, str(e)


def read_pixel_rows(path: str, config: IngestConfig
                    ) -> Iterator[tuple[int, np.ndarray | str]]:
    """(line number, pixels as int64[n_pixels] or the reason the row is invalid) for each
    non-blank row of a FER CSV, labelled or not: what pipeline.predict classifies. The file is
    read as ExampleGen reads it (gzip by content, any header case and column order, quoted
    fields, the same row rules); other columns are not checked. The header is read at once:
    a UserError here for a file that is not such a CSV, from the iterator for one that breaks
    off (a damaged gzip stream)."""
    f, compressed = open_binary(path)
    try:
        layout, _ = read_header(f, path, config, labelled=False)
    except BaseException:
        f.close()
        raise
    return _pixel_rows(f, compressed, path, layout, config)


def _pixel_rows(f: BinaryIO, compressed: bool, path: str, layout: Layout, config: IngestConfig
                ) -> Iterator[tuple[int, np.ndarray | str]]:
    with f:
        number = 1  # the header's
        try:
            for number, _, outcome in pixel_rows(f, 2, None, layout, config):
                if outcome is not None:
                    yield number, outcome
        except (OSError, EOFError) as e:
            fix = ("its gzip stream is damaged: compress the CSV again, or pass the uncompressed "
                   "file" if compressed else "pass a copy that reads in full")
            raise UserError(f"{path} cannot be read past line {number} ({e}); {fix}.") from None


def pixel_rows(f: BinaryIO, first_line: int, end: int | None, layout: Layout,
               config: IngestConfig) -> Iterator[tuple[int, bytes, np.ndarray | str | None]]:
    """read_rows for rows read without labels (pipeline.predict, pipeline.infer): (line number,
    raw line, outcome) for each line from f's position up to `end`, the outcome the pixels as
    int64[n_pixels], the reason the row is invalid, or None for a blank line. Only the pixels
    column is checked (and that the row has one field per header column)."""
    return read_rows(f, first_line, end, layout, config, parse=lambda line, layout, config:
                     parse_pixels(_fields(line, layout)[layout.pixels], config))


def _too_long(line: TooLongLine, config: IngestConfig) -> str:
    return (f"line is {line.length:,} bytes long, longer than any valid row "
            f"({config.max_line_bytes:,} bytes at most)")


def _show(value: bytes, limit: int = 40) -> str:
    text = value.decode("utf-8", errors="replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")
