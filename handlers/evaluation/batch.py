"""`evaluate.mode: batch`: the same items asked through Together's Batch API (up to half the price, a rate-limit
pool of its own), with the same records in the same item store, so resume, scoring and reports are unchanged.

Each round submits every item that can be asked now (cookbook / gold-history: all missing items; own-history: each
story's next turn, whose prompt needs the model's earlier answers) as batches of at most MAX_LINES lines and
MAX_BYTES. A batch's input file id is journaled before the create call and its id right after, so a crash in
between adopts the batch made from that file instead of submitting a second; a restart waits for the journaled
batches of the round before building new ones. Results are matched back by `custom_id`; an item the batch did not
answer stays missing and is asked again in the next round, until `evaluate.deadline_min`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from daemon.errors import FinetunedError, RemoteRejected, TransientError
from daemon.remote.api import FineTuneAPI, RemoteBatch
from daemon.remote.backoff import Backoff
from daemon.remote.chat import ChatRequest, parse_reply
from daemon.remote.classify import classify
from handlers.evaluation.asking import (
    Rounds,
    Session,
    Target,
    answer_record,
    error_record,
    missing_items,
    needs_asking,
)
from handlers.evaluation.stories import EvalStory, build_messages, item_id

log = structlog.get_logger()

MAX_LINES = 50_000  # Together's per-batch limits
MAX_BYTES = 95 * 1_000_000  # under the 100 MB file limit, with room for the multipart framing
BATCH_FILE = "batch-{round}-{chunk}.jsonl"


@dataclass(frozen=True)
class Pending:
    """One item to ask in this round."""

    target: Target
    story: EvalStory
    index: int

    @property
    def key(self) -> str:
        return item_id(self.story.id, self.story.turns[self.index].turn_id)


def custom_id(alias: str, key: str) -> str:
    """A request's id in the batch (at most 64 characters, unique per model and item)."""
    return hashlib.sha256(f"{alias}\0{key}".encode()).hexdigest()[:40]


def askable(session: Session, targets: list[Target], stories: list[EvalStory]) -> list[Pending]:
    """What can be asked now, models interleaved per story and turn (own-history: each story's next turn only)."""
    found: list[Pending] = []
    for story in stories:
        for index, turn in enumerate(story.turns):
            for target in targets:
                saved = session.records[target.alias]
                if not needs_asking(saved.get(item_id(story.id, turn.turn_id))):
                    continue
                earlier = [saved.get(item_id(story.id, t.turn_id)) for t in story.turns[:index]]
                if session.evaluate.protocol == "own-history" and any(needs_asking(r) for r in earlier):
                    continue
                found.append(Pending(target, story, index))
    return found


def request_line(session: Session, pending: Pending) -> bytes:
    """The batch input line for one item: `{custom_id, body}` with the body real-time chat would send."""
    saved = session.records[pending.target.alias]
    own = {
        t.turn_id: (saved.get(item_id(pending.story.id, t.turn_id)) or {}).get("prediction")
        for t in pending.story.turns[: pending.index]
    }
    evaluate = session.evaluate
    request = ChatRequest(
        model=pending.target.model,
        messages=build_messages(evaluate.protocol, pending.story, pending.index, own),
        max_tokens=evaluate.max_tokens,
        temperature=evaluate.temperature,
        stop=evaluate.stop,
    )
    line = {"custom_id": custom_id(pending.target.alias, pending.key), "body": request.body()}
    return json.dumps(line, ensure_ascii=False).encode() + b"\n"


def chunks(lines: list[bytes]) -> Iterator[list[bytes]]:
    """The lines split at the Batch API's limits (count and size)."""
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        if chunk and (len(chunk) >= MAX_LINES or size + len(line) > MAX_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        yield chunk


class BatchRounds:
    """The rounds of one batch-mode evaluation (see the module docstring)."""

    def __init__(self, session: Session, targets: list[Target], stories: list[EvalStory], *, simulated: bool) -> None:
        self.session, self.targets, self.stories, self.simulated = session, targets, stories, simulated
        self.remote: FineTuneAPI = session.ctx.fine_tuning()
        keys = [item_id(s.id, t.turn_id) for s in stories for t in s.turns]
        self.items = {custom_id(t.alias, k): (t, k) for t in targets for k in keys}
        self.batches_created = 0

    async def run(self, rounds: Rounds) -> dict[str, int]:
        """Rounds until nothing is missing or the deadline passes; returns what is missing per model."""
        number = int(self.session.ctx.journal.get("batch.round") or 1)
        while True:
            self.session.tracker.recount(self.session.records)
            await self.session.tracker.publish(force=True)
            missing = missing_items(self.session.records, self.targets, self.stories)
            if not any(missing.values()) or rounds.clock() >= rounds.deadline_s:
                return missing
            await self.session.ctx.journal.record("batch.round", str(number))
            await self._round(number, rounds.deadline_s)
            number += 1
            self.session.tracker.round = number

    async def _round(self, number: int, deadline_s: float) -> None:
        journal = self.session.ctx.journal
        made = 0
        while journal.get(f"batch.{number}.{made}.file"):  # submitted before a restart: adopt, never resend
            made += 1
        unsettled = [chunk for chunk in range(made) if not journal.get(f"batch.{number}.{chunk}.ended")]
        ended = await self._all(number, [(chunk, None) for chunk in unsettled], deadline_s)
        if not all(ended):
            return  # an adopted batch still runs at the deadline: its items must not go out a second time
        lines = [request_line(self.session, p) for p in askable(self.session, self.targets, self.stories)]
        await self._all(number, [(made + i, part) for i, part in enumerate(chunks(lines))], deadline_s)

    async def _all(self, number: int, parts: list[tuple[int, list[bytes] | None]], deadline_s: float) -> list[bool]:
        """Finish these batches concurrently; the first failure (not a group of them) is the step's."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._finish(number, chunk, lines, deadline_s)) for chunk, lines in parts]
        except* FinetunedError as failed:
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _finish(self, number: int, chunk: int, lines: list[bytes] | None, deadline_s: float) -> bool:
        """Submit (or adopt) one batch, wait for it to end, and save what it answered; False if it still runs."""
        prefix = f"batch.{number}.{chunk}"
        batch = await self._submitted(prefix, BATCH_FILE.format(round=number, chunk=chunk), lines)
        if batch is None:
            return True
        batch = await self._wait(batch, deadline_s)
        if not batch.ended:
            return False
        failure = await self._save_results(batch)
        # Settled: its results are saved, so a restart or `finetuned retry` asks what it left missing anew.
        await self.session.ctx.journal.record(f"{prefix}.ended", batch.status)
        if failure is not None:
            raise RemoteRejected(failure)
        return True

    async def _submitted(self, prefix: str, filename: str, lines: list[bytes] | None) -> RemoteBatch | None:
        journal, remote = self.session.ctx.journal, self.remote
        batch_id = journal.get(f"{prefix}.id")
        if batch_id:
            return await remote.get_batch(batch_id)
        file_id = journal.get(f"{prefix}.file")
        if file_id:
            adopted = await remote.find_batch(file_id)
            if adopted is not None:
                log.warning("batch_adopted", batch_id=adopted.id, input_file_id=file_id)
                await journal.record(f"{prefix}.id", adopted.id)
                return adopted
        if lines is None and not file_id:
            return None
        if not file_id:
            assert lines is not None
            path = self.session.ctx.work_dir / filename
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(path.write_bytes, b"".join(lines))
            file_id = await remote.upload_batch_input(path)
            await journal.record(f"{prefix}.file", file_id)
        batch = await remote.create_batch(file_id)
        await journal.record(f"{prefix}.id", batch.id)
        self.batches_created += 1
        log.info("batch_created", batch_id=batch.id, input_file_id=file_id, requests=len(lines or []))
        return batch

    async def _wait(self, batch: RemoteBatch, deadline_s: float) -> RemoteBatch:
        """Poll the batch with backoff until it ends or the step's deadline passes."""
        settings = self.session.ctx.settings
        backoff = Backoff(base_s=settings.poll_min_s, cap_s=settings.poll_max_s, floor_s=settings.poll_min_s)
        status = batch.status
        while not batch.ended:
            delay_s = min(backoff.next_delay(), max(0.0, deadline_s - time.monotonic()))
            if delay_s <= 0:
                log.warning("batch_still_running_at_deadline", batch_id=batch.id, status=batch.status)
                return batch
            await asyncio.sleep(delay_s)
            try:
                batch = await self.remote.get_batch(batch.id)
            except TransientError as exc:
                log.warning("batch_poll_failed_retrying", batch_id=batch.id, error=str(exc))
                continue
            if batch.status != status:
                status = batch.status
                backoff.reset()
                log.info("batch_status", batch_id=batch.id, status=status, progress=batch.progress)
        return batch

    async def _save_results(self, batch: RemoteBatch) -> str | None:
        """Save every answered and every refused line; for a batch that failed as a whole, say why."""
        answered = await self._lines(batch.output_file_id)
        refused = await self._lines(batch.error_file_id)
        for line in answered:
            await self._save(line.get("custom_id"), self._answer(line))
        for line in refused:
            await self._save(line.get("custom_id"), self._refusal(line))
        log.info("batch_saved", batch_id=batch.id, status=batch.status, answered=len(answered), refused=len(refused))
        if batch.status == "FAILED" and not answered:
            return f"Together batch {batch.id} failed: {self.session.client.scrub(batch.error or '')}"
        return None

    async def _lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        data = await self.remote.file_bytes(file_id)
        return [row for raw in data.splitlines() if raw.strip() and isinstance(row := json.loads(raw), dict)]

    def _answer(self, line: dict[str, Any]) -> dict[str, Any]:
        response = line.get("response") or {}
        status = int(response.get("status_code") or 0)
        body = json.dumps(response.get("body") or {}).encode()
        if status != 200:
            return error_record(classify("batch chat request", status, body, {}))
        try:
            reply = parse_reply(body, simulated=self.simulated)
        except TransientError as exc:
            return error_record(exc)
        record = answer_record(reply)
        if record["prediction"]:
            record["prediction"] = self.session.client.scrub(record["prediction"])
        return record

    def _refusal(self, line: dict[str, Any]) -> dict[str, Any]:
        error = line.get("error") if isinstance(line.get("error"), dict) else {"message": str(line.get("error"))}
        record = error_record(classify("batch chat request", 400, json.dumps({"error": error}).encode(), {}))
        record["error"] = self.session.client.scrub(str(record["error"]))
        return record

    async def _save(self, cid: Any, record: dict[str, Any]) -> None:
        found = self.items.get(str(cid))
        if found is None:
            log.warning("batch_line_unknown", custom_id=str(cid))
            return
        target, key = found
        story_id, _, turn = key.rpartition(":")
        record |= {"story_id": story_id, "turn_id": int(turn), "model": target.model, "attempts": 1, "mode": "batch"}
        await self.session.ctx.items.save(target.alias, key, record)
        self.session.records[target.alias][key] = record
        self.session.tracker.count(target.alias, record)
