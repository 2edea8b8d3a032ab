"""Where `prepare` gets rows from: local files, folders and globs (streamed by hand) or a hub id (via `datasets`).

Local json/jsonl/parquet are read directly (one row or one small batch in memory); csv and hub ids go through
`datasets.load_dataset(..., streaming=True)`, its general and real loader.
"""

from __future__ import annotations

import concurrent.futures
import glob
import itertools
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import structlog

from daemon.errors import DatasetError, TransientError
from handlers.dataset.jsonio import read_json, read_jsonl
from handlers.dataset.mapping import Projection

log = structlog.get_logger()

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
SPLIT_NAMES = ("train", "validation", "valid", "val", "dev", "test", "eval")
HUB_PROBE_TIMEOUT_S = 5.0
_PARQUET_BATCH_ROWS = 1024
_GLOB_CHARS = frozenset("*?[")

T = TypeVar("T")
Row = Mapping[str, Any]
# Where a row came from, e.g. ("examples/data/x.jsonl line", 13); joined with a space only when reporting a problem.
Location = tuple[str, int]


@dataclass(frozen=True)
class SplitSource:
    """One split of the dataset: local files, or a hub id read with `datasets`."""

    split: str
    label: str  # what the user wrote, e.g. "examples/data/coqa-demo" or "stanfordnlp/coqa"
    files: tuple[Path, ...] = ()
    hub_config: str | None = None
    is_hub: bool = False

    def rows(self, projection: Projection | None = None) -> Iterator[tuple[Location, Row]]:
        """Every row of the split, in order, with where it came from (parquet reads only `projection`)."""
        if self.is_hub:
            where = f"{self.label} [{self.split}] row"
            for index, row in read_hub(self.label, self.hub_config, self.split):
                yield (where, index), row
            return
        for path in self.files:
            where = f"{path} {'line' if path.suffix == '.jsonl' else 'row'}"
            for number, row in _read_file(path, projection):
                if type(row) is not dict and not isinstance(row, Mapping):
                    raise DatasetError(f"{where} {number}: a row must be a JSON object, got {type(row).__name__}")
                yield (where, number), row

    def describe(self) -> str:
        """Human words for this split, for error messages."""
        if self.is_hub:
            return f"split {self.split!r} of hub dataset {self.label!r}"
        shown = ", ".join(str(p) for p in self.files[:3]) + (", ..." if len(self.files) > 3 else "")
        return f"split {self.split!r} ({shown})"


def open_split(source: str, split: str, *, is_train: bool, hub_config: str | None = None) -> SplitSource:
    """Resolve `dataset.source` + a split name to the files (or hub split) holding it; DatasetError if none."""
    if not is_local(source):
        return SplitSource(split=split, label=source, hub_config=hub_config, is_hub=True)
    return SplitSource(split=split, label=source, files=tuple(local_files(source, split, is_train=is_train)))


def is_local(source: str) -> bool:
    """True for paths and globs; a hub id is `name` or `owner/name` that does not exist locally."""
    if source.startswith(("/", "./", "../", "~")) or _GLOB_CHARS & set(source):
        return True
    path = Path(source).expanduser()
    return path.exists() or path.suffix.lower() in DATA_SUFFIXES or source.count("/") > 1


def local_files(source: str, split: str, *, is_train: bool) -> list[Path]:
    """The data files of `split`. A file or glob is the train split; a folder is searched by split name."""
    path = Path(source).expanduser()
    if _GLOB_CHARS & set(source) or path.is_file():
        files = _data_files(Path(p) for p in glob.glob(str(path), recursive=True)) if not path.is_file() else [path]
        if not files:
            raise DatasetError(f"dataset.source {source!r}: no .jsonl/.json/.parquet/.csv file matches")
        if not is_train:
            raise DatasetError(
                f"dataset.source {source!r} is a single file or glob, which is the train split only; "
                f"for split {split!r} point source at a folder holding {split}.* files, or set eval_split: null"
            )
        return files
    if not path.is_dir():
        raise DatasetError(
            f"dataset.source {source!r}: no such file or folder (relative paths resolve against "
            f"the daemon's working directory, {Path.cwd()})"
        )
    return _folder_split(path, split, is_train=is_train)


def _folder_split(folder: Path, split: str, *, is_train: bool) -> list[Path]:
    direct = folder / split
    if _GLOB_CHARS & set(split):
        files = _data_files(Path(p) for p in glob.glob(str(direct), recursive=True))
    elif direct.is_file():
        files = [direct]
    elif direct.is_dir():
        files = _data_files(direct.rglob("*"))
    else:
        everything = _data_files(folder.rglob("*"))
        files = [p for p in everything if _names_split(p, split)]
        if not files and is_train and not any(_names_split(p, s) for p in everything for s in SPLIT_NAMES):
            files = everything  # a folder with no split names at all is all train, as `datasets` reads it
        if not files:
            found = ", ".join(str(p.relative_to(folder)) for p in everything[:10]) or "no data files"
            raise DatasetError(
                f"split {split!r} not found in {folder}: no file or folder named {split}, {split}.*, "
                f"{split}-* or {split}_* (found: {found})"
            )
    if not files:
        raise DatasetError(f"split {split!r} of {folder}: no .jsonl/.json/.parquet/.csv files there")
    return files


def _names_split(path: Path, split: str) -> bool:
    name = path.name.lower()
    return any(name.startswith(split.lower() + sep) for sep in (".", "-", "_"))


def _data_files(paths: Iterable[Path]) -> list[Path]:
    return sorted(p for p in paths if p.is_file() and p.suffix.lower() in DATA_SUFFIXES and not p.name.startswith("."))


def _read_file(path: Path, projection: Projection | None) -> Iterator[tuple[int, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        return read_json(path)
    if suffix == ".parquet":
        return read_parquet(path, projection)
    return _read_with_datasets("csv", path)


def read_parquet(path: Path, projection: Projection | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a parquet file, decoded column by column a record batch at a time.

    With a projection only those columns are read, and of a struct column only the named field (CoQA's
    `answers.input_text`, whose values the rows then hold in place of the struct); when a projected column is
    missing, every column is read so errors can list them.
    """
    import pyarrow as pa  # imported where parquet is read: pyarrow costs ~0.3 s at every start-up otherwise
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: not a readable parquet file: {exc}") from exc
    schema = reader.schema_arrow
    if projection is not None and not all(name in schema.names for name in projection):
        projection = None
    fields = {name: field for name, field in (projection or {}).items() if _has_field(schema.field(name).type, field)}
    columns = [f"{name}.{fields[name]}" if name in fields else name for name in projection or schema.names]
    number = 1
    with reader:
        for batch in _read_ahead(reader.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns)):
            keys = batch.schema.names
            values = [_column_values(batch.column(name), fields.get(name)) for name in keys]
            rows = list(map(dict, map(zip, itertools.repeat(keys), zip(*values, strict=True))))
            yield from enumerate(rows, start=number)
            number += len(rows)
            # mimalloc keeps freed pages; handing them back per batch keeps peak memory flat as files go by
            pa.default_memory_pool().release_unused()


def _read_ahead(batches: Iterator[T]) -> Iterator[T]:
    """The same batches, each decoded in a helper thread while the caller maps the one before (pyarrow decodes
    without the GIL: on two cores the decoding hides behind the mapping). One batch ahead, so memory stays flat."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="parquet-read-ahead") as pool:
        ahead = pool.submit(next, batches, None)
        while (batch := ahead.result()) is not None:
            ahead = pool.submit(next, batches, None)
            yield batch


def _has_field(kind: Any, field: str | None) -> bool:
    """Whether `kind` is a struct type with a field named `field`."""
    import pyarrow as pa

    return field is not None and pa.types.is_struct(kind) and kind.get_field_index(field) >= 0


def _column_values(column: Any, field: str | None) -> list[Any]:
    """A column as Python values; of a struct column read for one `field` and without nulls, that field's values."""
    if field is None or column.null_count:
        return list(column.to_pylist())
    return list(column.field(field).to_pylist())


def _read_with_datasets(builder: str, path: Path) -> Iterator[tuple[int, Any]]:
    import datasets

    datasets.disable_progress_bars()
    try:
        stream = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True)
        yield from enumerate(stream, start=1)
    except (ValueError, OSError, datasets.exceptions.DatasetsError) as exc:
        raise DatasetError(f"{path}: cannot be read as {builder}: {exc}") from exc


def read_hub(name: str, config: str | None, split: str) -> Iterator[tuple[int, Row]]:
    """Rows of one split of a hub dataset (any `load_dataset` path), streamed; cache-only when offline mode is on."""
    import datasets

    datasets.disable_progress_bars()
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    if not offline and not Path(name).exists():
        _probe_hub(name)
    try:
        # Streaming keeps memory flat; in offline mode only a cached (non-streaming) copy can exist.
        stream = datasets.load_dataset(name, config, split=split, streaming=not offline)
    except ConnectionError as exc:
        raise DatasetError(_unreachable(name, str(exc))) from exc
    except datasets.exceptions.DatasetNotFoundError as exc:
        raise DatasetError(f"hub dataset {name!r} was not found (or is private/gated): {exc}") from exc
    except (ValueError, datasets.exceptions.DatasetsError) as exc:
        raise DatasetError(f"hub dataset {name!r}: cannot load split {split!r} (config {config!r}): {exc}") from exc
    try:
        yield from enumerate(stream, start=1)
    except (ConnectionError, TimeoutError) as exc:
        raise TransientError(f"hub dataset {name!r}: the connection failed while streaming: {exc}") from exc


def _probe_hub(name: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> None:
    """Fail in seconds, not minutes, when the hub is unreachable (`datasets` retries for a long time)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            pass
    except OSError as exc:
        log.warning("hub_unreachable", endpoint=constants.ENDPOINT, error=str(exc))
        raise DatasetError(_unreachable(name, f"{constants.ENDPOINT}: {exc}")) from exc


def _unreachable(name: str, why: str) -> str:
    return (
        f"cannot reach the Hugging Face hub for dataset {name!r} ({why}). Download the data where the hub is "
        f"reachable and point dataset.source at the local files instead, e.g. a folder holding train.parquet "
        f"and validation.parquet (the hub's data/ folder works as is), or a .jsonl/.json/.csv file"
    )
