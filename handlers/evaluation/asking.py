"""Asking the evaluated models: one record per item (answer, permanent error or transient failure), models
interleaved item by item, and rounds that ask the transiently failed items again until the step's deadline.

A record with `retryable` set failed for a transient reason (connection refused, timeout, 429, 5xx, loading): it
is missing, not an error, and is asked again in the next round (and by `finetuned retry`). Only permanent errors
(context length, refusals naming the request, empty answers) are final records scored 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from daemon.errors import ContentFiltered, ContextLengthExceeded, FinetunedError, Paused, RemoteRejected, TransientError
from daemon.jobs.context import JobContext
from daemon.remote.backoff import Backoff, Clock
from daemon.remote.chat import ChatClient, ChatEndpoint, ChatReply, ChatRequest
from daemon.spec import EvaluateSpec
from handlers.evaluation.stories import EvalStory, Prompts, item_id

log = structlog.get_logger()

PROGRESS_INTERVAL_S = 1.0
# A round's tasks are started this many at a time, the event loop serving I/O in between: starting thousands at once
# kept the first requests' connections waiting (50 ms for 3,000 items on 2 cores).
START_BATCH = 64
Records = dict[str, dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class Target:
    """One evaluated model: its alias in the spec, the real model name and where to ask it."""

    alias: str
    model: str
    endpoint: ChatEndpoint


class Tracker:
    """Per-model done/total/error/missing counts, published through ctx.progress at most once per interval."""

    def __init__(self, ctx: JobContext, totals: Mapping[str, int], interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self._ctx = ctx
        self.models = {alias: {"done": 0, "total": n, "errors": 0, "missing": n} for alias, n in totals.items()}
        self.round = 1
        self._interval_s = interval_s
        self._published_at = 0.0

    def recount(self, records: Records) -> None:
        """Counts from the records: done = answered or permanently failed; missing = the rest."""
        for alias, counts in self.models.items():
            final = [r for r in records.get(alias, {}).values() if not needs_asking(r)]
            done = len(final)
            errors = sum(1 for r in final if r.get("error"))
            counts |= {"done": done, "errors": errors, "missing": counts["total"] - done}

    def count(self, alias: str, record: Mapping[str, Any]) -> None:
        """One more item of `alias` asked: final (answered or permanent error) or still missing."""
        if needs_asking(record):
            return
        counts = self.models[alias]
        counts["done"] += 1
        counts["missing"] -= 1
        counts["errors"] += int(record.get("error") is not None)

    async def publish(self, *, force: bool = False) -> None:
        """Send the counts to ctx.progress unless that was done less than an interval ago."""
        now = time.monotonic()
        if not force and now - self._published_at < self._interval_s:
            return
        self._published_at = now
        total = {k: sum(m[k] for m in self.models.values()) for k in ("done", "total", "errors", "missing")}
        models = {alias: dict(m) for alias, m in self.models.items()}
        await self._ctx.progress(**total, round=self.round, models=models)


def needs_asking(record: Mapping[str, Any] | None) -> bool:
    """True for an item never asked or last failed for a transient reason."""
    return record is None or bool(record.get("retryable"))


class Session:
    """One evaluation run: the client, the spec's generation settings, the saved records and the first error."""

    def __init__(self, ctx: JobContext, evaluate: EvaluateSpec, client: ChatClient, tracker: Tracker) -> None:
        self.ctx = ctx
        self.evaluate = evaluate
        self.client = client
        self.tracker = tracker
        self.prompts = Prompts(evaluate.protocol)
        self.records: Records = {}
        self.first_error: FinetunedError | None = None
        self.last_transient: TransientError | None = None

    async def ask(self, target: Target, story: EvalStory, index: int, own: Mapping[int, str | None]) -> dict[str, Any]:
        """Ask one turn, save its record (answer, error or transient failure) and count it."""
        turn = story.turns[index]
        request = ChatRequest(
            model=target.model,
            messages=self.prompts.messages(story, index, own),
            max_tokens=self.evaluate.max_tokens,
            temperature=self.evaluate.temperature,
            stop=self.evaluate.stop,
        )
        try:
            record = answer_record(await self.client.complete(target.endpoint, request))
        except (TransientError, RemoteRejected) as exc:
            record = error_record(exc)
            self.first_error = self.first_error or exc
            if isinstance(exc, TransientError):
                self.last_transient = exc
        record |= {"story_id": story.id, "turn_id": turn.turn_id, "model": target.model}
        key = item_id(story.id, turn.turn_id)
        if record["error"] is not None:
            log.warning(
                "eval_item_failed", model=target.alias, item=key, error=record["error"], kind=record["error_kind"]
            )
        await self.ctx.items.save(target.alias, key, record)
        self.records[target.alias][key] = record
        self.tracker.count(target.alias, record)
        await self.tracker.publish()
        return record

    async def conversation(self, target: Target, story: EvalStory) -> None:
        """own-history: the turns of one story in order, each seeing the model's earlier answers (saved or new);
        a turn that failed transiently ends the conversation for this round (later turns need its answer)."""
        saved = self.records[target.alias]
        own: dict[int, str | None] = {}
        for index, turn in enumerate(story.turns):
            record = saved.get(item_id(story.id, turn.turn_id))
            if needs_asking(record):
                record = await self.ask(target, story, index, own)
                if needs_asking(record):
                    return
            assert record is not None
            own[turn.turn_id] = record.get("prediction")


def answer_record(reply: ChatReply) -> dict[str, Any]:
    """The saved record of an answer (an empty one is a permanent `empty` error)."""
    record: dict[str, Any] = {
        "prediction": reply.content,
        "error": None,
        "error_kind": None,
        "retryable": False,
        "finish_reason": reply.finish_reason,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "attempts": reply.attempts,
        "simulated": reply.simulated,
    }
    if reply.finish_reason == "content_filter":
        record |= {"prediction": None, "error": "the provider's content filter withheld the answer"}
        record["error_kind"] = "content_filter"
    elif not reply.content or not reply.content.strip():
        record |= {"prediction": None, "error": "the response has no message content", "error_kind": "empty"}
    return record


def error_record(exc: FinetunedError) -> dict[str, Any]:
    """The saved record of a failure: transient ones are `retryable` (missing, asked again), others final."""
    kind = "context_length" if isinstance(exc, ContextLengthExceeded) else "rejected"
    if isinstance(exc, ContentFiltered):
        kind = "content_filter"
    if isinstance(exc, TransientError):
        kind = "transient"
    return {
        "prediction": None,
        "error": str(exc),
        "error_kind": kind,
        "retryable": kind == "transient",
        "finish_reason": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "simulated": False,
    }


def missing_items(records: Records, targets: list[Target], stories: list[EvalStory]) -> dict[str, int]:
    """Per model alias, how many items still need asking."""
    keys = [item_id(s.id, t.turn_id) for s in stories for t in s.turns]
    return {t.alias: sum(1 for k in keys if needs_asking(records[t.alias].get(k))) for t in targets}


Job = Callable[[], Coroutine[Any, Any, Any]]


def _round_jobs(session: Session, targets: list[Target], stories: list[EvalStory]) -> list[Job]:
    """The round's work in fair order: per story and turn, every model in turn (round-robin over the models), so
    a slowdown or an outage falls on all of them alike. own-history: per story, every model's conversation."""
    jobs: list[Job] = []
    for story in stories:
        if session.evaluate.protocol == "own-history":
            jobs += [functools.partial(session.conversation, t, story) for t in targets]
            continue
        for index, turn in enumerate(story.turns):
            key = item_id(story.id, turn.turn_id)
            jobs += [
                functools.partial(session.ask, t, story, index, {})
                for t in targets
                if needs_asking(session.records[t.alias].get(key))
            ]
    return jobs


async def _one_round(session: Session, targets: list[Target], stories: list[EvalStory]) -> None:
    jobs = _round_jobs(session, targets, stories)
    try:
        with heap_frozen():
            async with asyncio.TaskGroup() as group:
                for n, job in enumerate(jobs, start=1):
                    group.create_task(job())
                    if n % START_BATCH == 0:
                        await asyncio.sleep(0)  # the requests already started reach the wire while the rest queue
    except* Paused as paused:  # auth/quota: stop everything and let the runner pause remote work
        raise paused.exceptions[0] from None


_rounds_frozen = 0  # rounds running under heap_frozen (jobs evaluate at once): the last one out thaws


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """The garbage collector leaves the objects that exist before a round alone while it runs (`gc.freeze`), and
    collects them as usual after it (`gc.unfreeze`). The daemon's modules and state are tens of thousands of objects
    that each full collection would walk in the middle of a wave of answers (two per 3,000 answers, 27 ms each on the
    2-core machine); what the round allocates is collected as usual. Another job's round running meanwhile keeps
    the heap frozen until it ends too. (The thaw also returns what `finetuned run` froze at start-up to the
    collector: the freeze is an optimisation, never needed to keep anything alive.)"""
    global _rounds_frozen  # noqa: PLW0603 - one count for the process, as the collector is one
    _rounds_frozen += 1
    gc.freeze()
    try:
        yield
    finally:
        _rounds_frozen -= 1
        if not _rounds_frozen:
            gc.unfreeze()


@dataclass(frozen=True)
class Rounds:
    """How the rounds are paced: the step's deadline (monotonic clock) and the delay between rounds."""

    deadline_s: float
    base_s: float
    cap_s: float
    clock: Clock = time.monotonic


async def ask_until_complete(
    session: Session, targets: list[Target], stories: list[EvalStory], rounds: Rounds
) -> dict[str, int]:
    """Ask every missing item; ask the transiently failed ones again in later rounds, with backoff, until none is
    missing or the deadline passes (a round still running then is cut short). Returns what is missing per model."""
    delays = Backoff(base_s=rounds.base_s, cap_s=rounds.cap_s)
    while True:
        session.tracker.recount(session.records)
        await session.tracker.publish(force=True)
        missing = missing_items(session.records, targets, stories)
        left_s = rounds.deadline_s - rounds.clock()
        if not any(missing.values()) or left_s <= 0:
            return missing
        if session.tracker.round > 1:
            delay_s = min(delays.next_delay(), left_s)
            log.info("eval_round_waiting", round=session.tracker.round, missing=missing, delay_s=round(delay_s, 2))
            await asyncio.sleep(delay_s)
            left_s = rounds.deadline_s - rounds.clock()
        try:
            async with asyncio.timeout(max(0.0, left_s)):
                await _one_round(session, targets, stories)
        except TimeoutError:
            log.warning("eval_deadline_reached", round=session.tracker.round)
        session.tracker.round += 1
