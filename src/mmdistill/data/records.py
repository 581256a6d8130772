"""What every data source produces: records that remember where they came from, held by column.

A record keeps its `origin` ("metadata_train.csv line 12") so every later error about it
(unreadable image, unknown label) can name the file and row the user has to fix.

A split's records are a `RecordTable`: one flat numpy buffer per column (`StringColumn` for
paths, texts and origins, `VectorColumn` for embeddings, `CategoryColumn` for labels), not one
Python object per record. At a million records that is a few arrays instead of millions of
dicts and strings; DataLoader workers forked from the main process share the buffers instead of
copying them (reading a Python object writes its reference count, which copies its memory page
into every worker over an epoch); and a cache key hashes a column in one call (`digest`)
instead of record by record. Each image path also carries its file's size and content digest
(`FileStats`), which every key reuses; the one `stat` of that file in a run decides whether the
digest must be computed again.
`table[i]` still gives a `Record`, built on demand, to code that reads one record at a time.
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np


@dataclass
class Record:
    origin: str
    values: dict[str, Any]
    labels: dict[str, Any]


class StringColumn:
    """Strings packed as UTF-8 in one byte buffer with int64 offsets."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data, self.offsets = data, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        text, offsets = self.data.tobytes(), self.offsets.tolist()
        for start, end in zip(offsets, offsets[1:]):
            yield text[start:end].decode("utf-8", "surrogatepass")

    def digest(self, h: "hashlib._Hash") -> None:
        h.update(self.offsets.tobytes())
        h.update(self.data.tobytes())


class OriginColumn:
    """Origins of one file's rows, `<file> line N`: the file's part once and N per record, since
    a million origins as text would mostly repeat the same file name (~50 bytes a record)."""

    def __init__(self, head: str, numbers: np.ndarray):
        self.head, self.numbers = head, numbers

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, i: int) -> str:
        return f"{self.head} {self.numbers[i]}"

    def __iter__(self) -> Iterator[str]:
        return (f"{self.head} {n}" for n in self.numbers.tolist())

    def digest(self, h: "hashlib._Hash") -> None:
        h.update(self.head.encode())
        h.update(self.numbers.tobytes())


class TakenStrings:
    """Some strings of several string columns, by (column, row): a selection that shares the
    columns' buffers instead of copying the strings (`cache/text.distinct_texts`)."""

    def __init__(self, columns: Sequence["StringColumn"], owner: np.ndarray, rows: np.ndarray):
        self.columns, self.owner, self.rows = list(columns), owner, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> str:
        return self.columns[int(self.owner[i])][int(self.rows[i])]

    def __iter__(self) -> Iterator[str]:
        return (self.columns[c][r] for c, r in zip(self.owner.tolist(), self.rows.tolist()))


class VectorColumn:
    """Float32 vectors (embeddings) packed in one buffer; a record without one has length 0."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data, self.offsets = data, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray | None:
        start, end = self.offsets[i], self.offsets[i + 1]
        return None if start == end else self.data[start:end]

    def __iter__(self) -> Iterator[np.ndarray | None]:
        return (self[i] for i in range(len(self)))

    def digest(self, h: "hashlib._Hash") -> None:
        h.update(self.offsets.tobytes())
        h.update(self.data.tobytes())


class CategoryColumn:
    """Values with few distinct members (labels): an int32 code per record and the distinct
    values once, in order of first appearance."""

    def __init__(self, codes: np.ndarray, categories: list[Any]):
        self.codes, self.categories = codes, categories

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> Any:
        return self.categories[self.codes[i]]

    def __iter__(self) -> Iterator[Any]:
        categories = self.categories
        return (categories[c] for c in self.codes.tolist())

    def digest(self, h: "hashlib._Hash") -> None:
        h.update(self.codes.tobytes())
        h.update(repr([(type(c).__name__, c) for c in self.categories]).encode())


@dataclass
class FileStats:
    """Size and content digest (`cache/file_digests`) of each file of an image column when the
    data was read. Not the mtime: a copy of the same bytes with new times is the same data; the
    mtime only decides, while the table is built, whether a file must be hashed again."""

    size: np.ndarray
    content: np.ndarray

    def digest(self, h: "hashlib._Hash") -> None:
        h.update(self.size.tobytes())
        h.update(self.content.tobytes())


Column = StringColumn | VectorColumn | CategoryColumn


class RecordTable(Sequence[Record]):
    """One split's records, column by column.

    `values[modality]` is one column, or a tuple of columns for a stacked image (one per file);
    `stats[modality]` holds the matching `FileStats` of image modalities. `digest(name)` hashes a
    column (with its file stats) once and remembers it: every cache key of a run reuses it."""

    def __init__(self, origins: "StringColumn | OriginColumn", values: dict[str, Column | tuple[StringColumn, ...]],
                 labels: dict[str, CategoryColumn], stats: dict[str, tuple[FileStats, ...]] | None = None):
        self.origins, self.values, self.labels = origins, values, labels
        self.stats = stats or {}
        self._digests: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.origins)

    def value(self, name: str, i: int) -> Any:
        column = self.values[name]
        return tuple(c[i] for c in column) if isinstance(column, tuple) else column[i]

    def __getitem__(self, i: int) -> Record:  # type: ignore[override]
        if isinstance(i, slice):
            raise TypeError("RecordTable takes one index")
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return Record(origin=self.origins[i], values={name: self.value(name, i) for name in self.values},
                      labels={task: column[i] for task, column in self.labels.items()})

    def __iter__(self) -> Iterator[Record]:
        return (self[i] for i in range(len(self)))

    def column(self, name: str) -> Any:
        return self.values[name]

    def digest(self, name: str) -> str:
        """A hash of column `name` (a modality, its files' sizes and contents included, or
        `label:<task>`), computed once per table."""
        found = self._digests.get(name)
        if found is None:
            h = hashlib.sha256(f"{name} {len(self)}".encode())
            if name.startswith("label:"):
                self.labels[name[len("label:"):]].digest(h)
            else:
                column = self.values[name]
                for part in column if isinstance(column, tuple) else (column,):
                    part.digest(h)
                for part in self.stats.get(name, ()):
                    part.digest(h)
            found = self._digests[name] = h.hexdigest()
        return found


class _PackedBuilder:
    """Bytes appended one value at a time into one growing buffer, with the end offset of each:
    a record read from a file costs its bytes and 8 more, never a Python object kept."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.ends = array("q")

    def append(self, data: bytes) -> None:
        self.buffer += data
        self.ends.append(len(self.buffer))

    def offsets(self) -> np.ndarray:
        return np.concatenate([np.zeros(1, np.int64), np.frombuffer(self.ends, dtype=np.int64)])

    def strings(self) -> StringColumn:
        return StringColumn(np.frombuffer(self.buffer, dtype=np.uint8), self.offsets())


class _OriginBuilder:
    """Origins as `OriginColumn` while every one is `<the same head> <N>` (every source's rows
    are), as packed strings from the first one that is not."""

    def __init__(self) -> None:
        self.head: str | None = None
        self.numbers = array("q")
        self.strings: _PackedBuilder | None = None

    def append(self, origin: str) -> None:
        if self.strings is None:
            head, _, tail = origin.rpartition(" ")
            if tail.isdigit() and str(int(tail)) == tail and head and self.head in (None, head):
                self.head = head
                self.numbers.append(int(tail))
                return
            self.strings = _PackedBuilder()
            for n in self.numbers:
                self.strings.append(f"{self.head} {n}".encode("utf-8", "surrogatepass"))
        self.strings.append(origin.encode("utf-8", "surrogatepass"))

    def __len__(self) -> int:
        return len(self.strings.ends) if self.strings is not None else len(self.numbers)

    def build(self) -> "OriginColumn | StringColumn":
        if self.strings is not None:
            return self.strings.strings()
        return OriginColumn(self.head or "", np.frombuffer(self.numbers, dtype=np.int64))


class _CategoryBuilder:
    def __init__(self) -> None:
        self.index: dict[Any, int] = {}
        self.categories: list[Any] = []
        self.codes = array("i")

    def append(self, value: Any) -> None:
        key = (type(value), value) if value is None or isinstance(value, (str, int, float, bool)) else repr(value)
        code = self.index.get(key)
        if code is None:
            code = self.index[key] = len(self.categories)
            self.categories.append(value)
        self.codes.append(code)

    def build(self) -> CategoryColumn:
        return CategoryColumn(np.frombuffer(self.codes, dtype=np.int32).copy(), self.categories)


class TableBuilder:
    """Packs one split's records into columns as they are read, row by row: a split never
    exists as Python objects, not even while its file is read (at a million records those
    would take more memory than everything the run keeps of them)."""

    def __init__(self, modalities: dict[str, str], parts: dict[str, int], tasks: Iterable[str]):
        self.kinds = dict(modalities)
        self.parts = {n: (parts.get(n, 1) if k == "stacked_image" else 1) for n, k in self.kinds.items()}
        self.origins = _OriginBuilder()
        self.values = {n: [_PackedBuilder() for _ in range(self.parts[n])] for n in self.kinds}
        self.images = [n for n, k in self.kinds.items() if k in ("image", "stacked_image")]
        self.stats = {n: [(array("q"), array("q")) for _ in range(self.parts[n])] for n in self.images}
        self.labels = {t: _CategoryBuilder() for t in tasks}

    def add(self, origin: str, values: dict[str, Any], labels: dict[str, Any],
            stats: dict[str, Sequence[tuple[int, int]]]) -> None:
        self.origins.append(origin)
        for name, kind in self.kinds.items():
            value = values[name]
            if kind == "embedding":
                self.values[name][0].append(b"" if value is None else np.asarray(value, np.float32).tobytes())
            elif kind == "stacked_image":
                for part, builder in zip(value, self.values[name]):
                    builder.append(str(part).encode("utf-8", "surrogatepass"))
            else:
                self.values[name][0].append(str(value).encode("utf-8", "surrogatepass"))
        for name, files in stats.items():
            for (size, mtime), (sizes, mtimes) in zip(files, self.stats[name]):
                sizes.append(size)
                mtimes.append(mtime)
        for task, value in labels.items():
            self.labels[task].append(value)

    def __len__(self) -> int:
        return len(self.origins)

    def build(self, content: "Callable[[Sequence[str], np.ndarray, np.ndarray], np.ndarray] | None" = None) -> RecordTable:
        """The table; `content(paths, sizes, mtimes)` gives the content digests of one column of
        image files (`cache.file_digests.FileDigests` with the run's memo; None reads every
        file, remembering nothing)."""
        if content is None:
            from mmdistill.data.file_content import digests_without_memo as content
        values: dict[str, Any] = {}
        for name, kind in self.kinds.items():
            builders = self.values[name]
            if kind == "embedding":
                b = builders[0]
                values[name] = VectorColumn(np.frombuffer(b.buffer, dtype=np.float32), b.offsets() // 4)
            else:
                columns = tuple(b.strings() for b in builders)
                values[name] = columns if kind == "stacked_image" else columns[0]
        stats: dict[str, tuple[FileStats, ...]] = {}
        for name in self.images:
            columns = values[name] if isinstance(values[name], tuple) else (values[name],)
            parts = []
            for column, (sizes, mtimes) in zip(columns, self.stats[name]):
                size, mtime = np.frombuffer(sizes, dtype=np.int64), np.frombuffer(mtimes, dtype=np.int64)
                parts.append(FileStats(size, content(column, size, mtime)))
            stats[name] = tuple(parts)
        return RecordTable(self.origins.build(), values, {t: b.build() for t, b in self.labels.items()}, stats)


@dataclass
class SplitRecords:
    """The records of the three splits, plus the file each split came from."""

    splits: dict[str, RecordTable] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    # column -> embedding size, from a source that knows it even when no record has one
    embedding_sizes: dict[str, int] = field(default_factory=dict)
    # the image files' content digests as computed while reading (`cache.file_digests.FileDigests`),
    # recorded in the cache only once the data has been checked (`DataBundle.file_digests`)
    file_digests: Any = None
