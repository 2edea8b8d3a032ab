"""Step 1, `prepare`: load the dataset, map it to chat JSONL (train/validation) and evaluation items, count it.

Streams row by row into the outbox (train.jsonl, validation.jsonl, eval.jsonl, dataset.json); memory stays flat.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import os
import random
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import structlog

from daemon.errors import DatasetError, JobCancelled
from daemon.jobs.context import JobContext, StepInputs, StepOutput
from daemon.spec import DatasetSpec
from daemon.spool.files import atomic_write_json, fsync_dir
from handlers.dataset.jsonio import MAX_ROW_BYTES
from handlers.dataset.loading import Location, SplitSource, open_split
from handlers.dataset.mapping import Example, Mapper, Projection, RowProblem, check_columns, make_mapper
from handlers.dataset.stats import TOKEN_ESTIMATE, FileStats, file_identity

log = structlog.get_logger()

SHUFFLE_BUCKETS = 64
PROGRESS_EVERY_ROWS = 2000
PROGRESS_WAIT_S = 5.0
_WRITE_LINES = 256

ProgressFn = Callable[[int], None]


async def run(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Prepare the job's dataset into its outbox folder, off the event loop."""
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def progress(done: int) -> None:
        future = asyncio.run_coroutine_threadsafe(ctx.progress(done=done, unit="rows"), loop)
        try:
            future.result(timeout=PROGRESS_WAIT_S)
        except (TimeoutError, concurrent.futures.CancelledError):
            log.debug("progress_not_published", done=done)

    with_eval = ctx.spec.evaluate is not None
    try:
        result = await asyncio.to_thread(
            prepare_dataset,
            ctx.spec.dataset,
            ctx.out_dir,
            ctx.work_dir,
            with_eval=with_eval,
            on_progress=progress,
            stop=stop,
        )
    except asyncio.CancelledError:
        stop.set()  # the worker thread notices within a few rows and removes its temporary files
        raise
    train = result["counts"]["train"]
    log.info("dataset_prepared", examples=train["examples"], estimated_tokens=train["estimated_tokens"])
    return result


def prepare_dataset(
    spec: DatasetSpec,
    out_dir: Path,
    work_dir: Path,
    *,
    with_eval: bool,
    on_progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Write train.jsonl (+ validation.jsonl, eval.jsonl) and dataset.json into `out_dir`; return the step output."""
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    mapper = make_mapper(spec)
    reader = _Reader(mapper, on_progress, stop)
    train_source = open_split(spec.source, spec.train_split, is_train=True, hub_config=spec.config)
    eval_source = None
    if with_eval and spec.eval_split is not None:
        eval_source = open_split(spec.source, spec.eval_split, is_train=False, hub_config=spec.config)
    counts: dict[str, Any] = {}
    train_file, validation_file = _write_train(
        spec, reader, train_source, out_dir=out_dir, work_dir=work_dir, counts=counts
    )
    eval_file = None
    if eval_source is not None:
        eval_file = _write_eval(reader, eval_source, out_dir / "eval.jsonl", counts)
    checked_as_written = counts.pop("checked_as_written")
    result = {
        "checked_as_written": checked_as_written,
        "train_file": str(train_file),
        "validation_file": None if validation_file is None else str(validation_file),
        "eval_file": None if eval_file is None else str(eval_file),
        "counts": counts,
    }
    summary = {"source": spec.source, "format": spec.format, "config": spec.config, "train_split": spec.train_split}
    atomic_write_json(out_dir / "dataset.json", {**summary, "token_estimate": TOKEN_ESTIMATE, **result})
    return result


class _Reader:
    """Maps the rows of a split, with locations in errors, progress reports and cancellation checks."""

    def __init__(self, mapper: Mapper, on_progress: ProgressFn | None, stop: threading.Event | None) -> None:
        self.mapper = mapper
        self.on_progress = on_progress
        self.stop = stop
        self.done = 0

    def rows(self, source: SplitSource, projection: Projection | None = None) -> Iterator[tuple[Location, Any]]:
        """The split's rows after a column check on the first one; DatasetError when there is none."""
        empty = True
        for location, row in source.rows(projection):
            if empty:
                problem = check_columns(self.mapper, row.keys())
                if problem:
                    raise DatasetError(f"{source.describe()}: {problem} (first row, {_where(location)})")
                empty = False
            self._tick()
            yield location, row
        if empty:
            raise DatasetError(f"{source.describe()} is empty: it has no rows")

    def examples(self, source: SplitSource, max_turns: int | None) -> Iterator[Example]:
        """Training examples as JSONL lines with their sizes."""
        for location, row in self.rows(source, self.mapper.projection):
            try:
                example = self.mapper.example(row, max_turns)
            except RowProblem as exc:
                raise DatasetError(f"{_where(location)}: {exc}") from exc
            if len(example[0]) > MAX_ROW_BYTES:
                size_mib = len(example[0]) / 2**20
                raise DatasetError(f"{_where(location)}: the example is {size_mib:.1f} MiB, over the 16 MiB limit")
            yield example

    def _tick(self) -> None:
        self.done += 1
        if self.done % 256 == 0 and self.stop is not None and self.stop.is_set():
            raise JobCancelled("prepare was cancelled")
        if self.on_progress is not None and self.done % PROGRESS_EVERY_ROWS == 0:
            self.on_progress(self.done)


def _write_train(
    spec: DatasetSpec, reader: _Reader, source: SplitSource, *, out_dir: Path, work_dir: Path, counts: dict[str, Any]
) -> tuple[Path, Path | None]:
    """train.jsonl (and validation.jsonl): shuffle if asked, hold out `validation_size`, then keep up to `limit`."""
    held_out = spec.validation_size or 0
    counts.update(train=None, validation=None, checked_as_written={})
    wanted = None if spec.limit is None else held_out + spec.limit
    examples = reader.examples(source, spec.max_turns)
    with _Shuffle(work_dir, spec.seed, enabled=spec.shuffle) as shuffle:
        ordered = shuffle.apply(examples)
        selected = itertools.islice(ordered, wanted)  # without shuffle, reading stops as soon as enough are in
        validation_file = None
        if held_out:
            with _Sink(out_dir / "validation.jsonl") as sink:
                sink.write_all(itertools.islice(selected, held_out))
            if sink.stats.examples < held_out:
                raise DatasetError(
                    f"dataset.validation_size is {held_out} but {source.describe()} has only "
                    f"{sink.stats.examples} rows: nothing would be left to train on"
                )
            counts["validation"], validation_file = sink.stats.as_dict(), sink.path
            counts["checked_as_written"]["validation"] = sink.proof()
        with _Sink(out_dir / "train.jsonl") as sink:
            sink.write_all(selected)
    if sink.stats.examples == 0:
        raise DatasetError(f"{source.describe()}: no training examples are left after holding out validation_size")
    counts["train"] = sink.stats.as_dict()
    counts["checked_as_written"]["train"] = sink.proof()
    return sink.path, validation_file


def _write_eval(reader: _Reader, source: SplitSource, path: Path, counts: dict[str, Any]) -> Path:
    """eval.jsonl: one evaluation item per row (a CoQA story with all its gold answers)."""
    items = turns = 0
    with _Sink(path) as sink:
        for index, (location, row) in enumerate(reader.rows(source)):
            try:
                item = reader.mapper.eval_item(row, f"{source.split}-{index}")
            except RowProblem as exc:
                raise DatasetError(f"{_where(location)}: {exc}") from exc
            sink.fh.write(json.dumps(item) + "\n")  # ASCII: no U+2028 etc. for line splitters to trip on
            items += 1
            turns += len(item["turns"])
    counts["eval"] = {"split": source.split, "items": items, "turns": turns}
    return sink.path


class _Sink:
    """A JSONL file written under a dot-prefixed temporary name and renamed into place only when complete."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.stats = FileStats()
        self.checked = True  # every line written was checked by its mapper (see `Example`)
        self.fh: IO[str] = open(self.tmp, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed in __exit__

    def write_all(self, examples: Iterator[Example]) -> None:
        """Write every example and count it (lines are joined into ~256-line writes: fewer, larger syscalls)."""
        add = self.stats.add
        pending: list[str] = []
        checked = True
        for line, characters, messages, turns, line_checked in examples:
            pending.append(line)
            add(characters, messages, turns)
            checked = checked and line_checked
            if len(pending) == _WRITE_LINES:
                self.fh.write("".join(pending))
                pending.clear()
        self.fh.write("".join(pending))
        self.checked = self.checked and checked

    def proof(self) -> dict[str, Any] | None:
        """When every line was checked as written: the file's identity, which `validate` compares before trusting."""
        return file_identity(self.path) if self.checked and self.stats.examples else None

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.fh.flush()
            os.fsync(self.fh.fileno())
        self.fh.close()
        if kind is None:
            os.replace(self.tmp, self.path)
            fsync_dir(self.path.parent)
        else:
            self.tmp.unlink(missing_ok=True)


class _Shuffle:
    """A seeded uniform shuffle in bounded memory: scatter lines over bucket files, then shuffle each bucket."""

    def __init__(self, work_dir: Path, seed: int, *, enabled: bool) -> None:
        self.enabled = enabled
        self.folder = work_dir / ".prepare-shuffle"
        self.rng = random.Random(seed)

    def apply(self, examples: Iterator[Example]) -> Iterator[Example]:
        """The examples in a seeded random order (unchanged when shuffling is off)."""
        if not self.enabled:
            return examples
        return self._shuffled(examples)

    def _shuffled(self, examples: Iterator[Example]) -> Iterator[Example]:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        paths = [self.folder / f"{i:02d}.jsonl" for i in range(SHUFFLE_BUCKETS)]
        handles = [open(p, "w", encoding="utf-8") for p in paths]  # noqa: SIM115 - closed just below
        try:
            pick = self.rng.randrange
            for line, characters, messages, turns, checked in examples:
                handles[pick(SHUFFLE_BUCKETS)].write(f"{characters}\t{messages}\t{turns}\t{int(checked)}\t{line}")
        finally:
            for handle in handles:
                handle.close()
        for path in paths:
            with open(path, encoding="utf-8") as fh:
                bucket = fh.readlines()
            path.unlink()
            self.rng.shuffle(bucket)
            for entry in bucket:
                sizes = entry.split("\t", 4)
                yield sizes[4], int(sizes[0]), int(sizes[1]), int(sizes[2]), sizes[3] == "1"

    def __enter__(self) -> _Shuffle:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _where(location: Location) -> str:
    return f"{location[0]} {location[1]}"
