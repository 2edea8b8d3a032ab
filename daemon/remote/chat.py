"""OpenAI-compatible chat completions for the evaluate step: one aiohttp session per provider, a bound on in-flight
requests, an adaptive per-provider limit that honours rate-limit headers, and retries through daemon/backoff.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
import structlog
from yarl import URL

from daemon import fastjson, metrics
from daemon.errors import FinetunedError, TransientError, Unavailable
from daemon.logs import Redactor
from daemon.remote.backoff import Clock, RetryPolicy, Sleep, retry
from daemon.remote.budget import Window, shared_budget
from daemon.remote.classify import classify, is_quota, retry_after_s, seconds
from daemon.remote.limit import ConcurrencyLimit, LimitTuning, Send

log = structlog.get_logger()

# Responses from the project's sandbox carry this header: their answers are simulated.
SIMULATED_HEADER = "x-finetuned-simulated"
# The sandbox's admin API (never faulted): answering it with its counters identifies the sandbox.
SANDBOX_PROBE_PATH = "/_sandbox/stats"
SANDBOX_PROBE_TIMEOUT_S = 5.0
JSON_CONTENT = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class ChatEndpoint:
    """Where to send chat requests: the full `/chat/completions` URL and the key (never printed)."""

    url: str
    api_key: str | None = field(default=None, repr=False)


def chat_url(base_url: str) -> str:
    """The chat-completions URL of a base URL: `.../chat/completions` kept, `.../v1` + `/chat/completions`,
    anything else + `/v1/chat/completions` (Together-style base URLs have no `/v1`)."""
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return f"{base}/chat/completions"
    return f"{base}/v1/chat/completions"


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask; `temperature`/`stop` are left out of the body when None."""

    model: str
    messages: Sequence[Mapping[str, str]]
    max_tokens: int
    temperature: float | None = None
    stop: Sequence[str] | None = None

    def body(self) -> dict[str, Any]:
        """The JSON body, with only the parameters given."""
        body: dict[str, Any] = {"model": self.model, "messages": list(self.messages), "max_tokens": self.max_tokens}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.stop:
            body["stop"] = list(self.stop)
        return body

    def encoded(self) -> bytes:
        """The JSON body as sent: compact UTF-8, the same document as `json.dumps(body())`."""
        return fastjson.dumps(self.body())


@dataclass(frozen=True)
class ChatReply:
    """The first choice's text (None when the response had none), its usage and how many attempts it took."""

    content: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    simulated: bool
    attempts: int = 1


@dataclass(frozen=True)
class RateHints:
    """What a response's headers say about rate limits: when to retry, and how much of each window is left."""

    retry_after_s: float | None
    remaining: int | None
    reset_s: float | None
    limit_per_min: int | None = None
    tokens: Window | None = None

    @classmethod
    def parse(cls, headers: Mapping[str, str], *, now_epoch_s: float | None = None) -> RateHints:
        """Read the wait the server asks for (see daemon.remote.classify.retry_after_s),
        `x-ratelimit-remaining[-requests]` / `x-ratelimit-limit[-requests]` / `x-ratelimit-reset[-requests]`
        (Together: seconds; OpenAI: `6m0s`), and the token window: Together's `x-tokenlimit-remaining/limit`,
        OpenAI's `x-ratelimit-remaining/limit-tokens`."""
        reset = seconds(headers.get("x-ratelimit-reset") or headers.get("x-ratelimit-reset-requests"))
        remaining = _count(headers, "x-ratelimit-remaining", "x-ratelimit-remaining-requests")
        limit = _count(headers, "x-ratelimit-limit", "x-ratelimit-limit-requests")
        tokens_left = _count(headers, "x-tokenlimit-remaining", "x-ratelimit-remaining-tokens")
        tokens_limit = _count(headers, "x-tokenlimit-limit", "x-ratelimit-limit-tokens")
        asked = None
        if "retry-after-ms" in headers or "retry-after" in headers:
            asked = retry_after_s(headers, now_epoch_s=now_epoch_s)
        tokens = Window(tokens_left, tokens_limit or None) if tokens_left is not None and tokens_limit else None
        return cls(asked, remaining, reset, limit or None, tokens)

    @property
    def wait_s(self) -> float | None:
        """How long the provider asks us to wait before the next request, if it says."""
        return self.retry_after_s if self.retry_after_s is not None else self.reset_s


@dataclass
class _Provider:
    session: aiohttp.ClientSession
    limit: ConcurrencyLimit
    meter: metrics.ChatMeter


class ChatClient:
    """Sends chat requests to any number of OpenAI-compatible providers with at most `concurrency` in flight.

    Slots are held only while a request is on the wire, never during a backoff sleep, so waiting work always
    fills the bound. Use as `async with ChatClient(...) as client: await client.complete(endpoint, request)`.
    """

    def __init__(
        self,
        *,
        concurrency: int,
        request_timeout_s: float,
        retry_policy: RetryPolicy,
        tuning: LimitTuning | None = None,
        secrets: Sequence[str] = (),
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        self.concurrency = concurrency
        self.tuning = tuning
        # Every key it sends, and the daemon's other secrets, are scrubbed from what it returns or raises (an
        # error body or an answer echoing the Authorization header), so no caller can write them anywhere.
        self._redactor = Redactor(secrets)
        self.request_timeout_s = request_timeout_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self.retry_policy = retry_policy
        self._sleep = sleep
        self._clock = clock
        self._bound = asyncio.Semaphore(concurrency)
        self._providers: dict[str, _Provider] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self.requests_sent = 0

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every provider's session."""
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.session.close()

    async def is_sandbox(self, url: str) -> bool:
        """True if `url` is served by the finetuned sandbox (its admin API answers): its answers are simulated.

        The probe carries no credentials; any failure means "not the sandbox".
        """
        probe = str(URL(url).origin() / SANDBOX_PROBE_PATH.lstrip("/"))
        timeout = aiohttp.ClientTimeout(total=min(self.request_timeout_s, SANDBOX_PROBE_TIMEOUT_S))
        try:
            async with self._provider(url).session.get(probe, timeout=timeout) as resp:
                body = await resp.json(content_type=None) if resp.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return False
        return isinstance(body, dict) and "requests" in body

    def scrub(self, text: str) -> str:
        """`text` without any key this client sends or knows (for what comes back by another way, e.g. a batch)."""
        scrubbed: str = self._redactor.scrub(text)
        return scrubbed

    def limits(self) -> dict[str, dict[str, object]]:
        """Each provider's limit story (see ConcurrencyLimit.summary), by provider origin."""
        return {provider.limit.name: provider.limit.summary() for provider in self._providers.values()}

    def limit_of(self, url: str) -> ConcurrencyLimit | None:
        """The adaptive limit of the provider at `url`, once a request has gone there."""
        provider = self._providers.get(url)
        return provider.limit if provider is not None else None

    async def complete(self, endpoint: ChatEndpoint, request: ChatRequest) -> ChatReply:
        """Ask once, retrying 429/5xx/timeouts with backoff; raises Paused, RemoteRejected or the last TransientError.

        The retry time cap counts time on the wire and in backoff, not time spent queueing for a slot.
        """
        provider = self._provider(endpoint.url, endpoint.api_key)
        self._redactor.add(endpoint.api_key)
        queued_s = 0.0
        attempts = 0

        async def attempt() -> ChatReply:
            nonlocal queued_s, attempts
            attempts += 1
            reply, waited_s = await self._send(provider, endpoint, request)
            queued_s += waited_s
            return reply

        try:
            reply = await retry(
                attempt,
                policy=self.retry_policy,
                sleep=self._sleep,
                clock=lambda: self._clock() - queued_s,
                what="chat_completion",
            )
        except FinetunedError as exc:
            provider.meter.failed(exc)
            raise
        provider.meter.finished(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens)
        return dataclasses.replace(reply, attempts=attempts) if attempts != reply.attempts else reply

    def _provider(self, url: str, api_key: str | None = None) -> _Provider:
        """The session and limit of `url` (made on first use); its rate budget is the one every client of this
        process shares for that origin and key."""
        provider = self._providers.get(url)
        if provider is None:
            connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency)
            session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
            budget = shared_budget(url, api_key, clock=self._clock, sleep=self._sleep)
            limit = ConcurrencyLimit(
                self.concurrency,
                name=_origin(url),
                tuning=self.tuning,
                budget=budget,
                clock=self._clock,
                sleep=self._sleep,
            )
            provider = _Provider(session, limit, metrics.ChatMeter(url))
            self._providers[url] = provider
        return provider

    async def _send(self, provider: _Provider, endpoint: ChatEndpoint, request: ChatRequest) -> tuple[ChatReply, float]:
        queued_at = self._clock()
        async with provider.limit.slot() as send, self._bound:
            waited_s = self._clock() - queued_at
            try:
                status, headers, raw = await self._post(provider, endpoint, request)
            except Unavailable as exc:
                provider.limit.unavailable(send.generation)
                raise self._scrubbed(exc) from None
            except TransientError as exc:  # timed out: the server is slow, or its queue is long
                provider.limit.dropped(send.generation)
                raise self._scrubbed(exc) from None
            rtt_s = self._clock() - queued_at - waited_s
        try:
            reply = self._answer(provider, send, (status, headers, raw), rtt_s)
        except FinetunedError as exc:
            raise self._scrubbed(exc) from None
        content = self._redactor.scrub(reply.content)
        return (reply if content is reply.content else dataclasses.replace(reply, content=content)), waited_s

    def _scrubbed(self, error: FinetunedError) -> FinetunedError:
        error.args = tuple(self._redactor.scrub(list(error.args)))
        return error

    def _answer(
        self, provider: _Provider, send: Send, answer: tuple[int, Mapping[str, str], bytes], rtt_s: float
    ) -> ChatReply:
        """The reply of a 200, else the classified error; the limit learns from either."""
        status, headers, raw = answer
        hints = RateHints.parse(headers)
        if status == 200:
            provider.limit.succeeded(rtt_s)
            reply = _reply(raw, headers)
            if hints.remaining == 0:
                provider.limit.cool_down(hints.reset_s)
            spent = reply.prompt_tokens + reply.completion_tokens
            provider.limit.pace(
                hints.remaining, hints.limit_per_min, tokens=hints.tokens, spent_tokens=spent, sent_as=send.order
            )
            return reply
        error = classify("chat request", status, raw, headers)
        if isinstance(error, TransientError) and error.retry_after_s is None:
            error.retry_after_s = hints.wait_s
        if isinstance(error, Unavailable):
            provider.limit.unavailable(send.generation, error.retry_after_s)
        elif status == 429 and not is_quota(status, raw):
            provider.limit.answered()
            provider.limit.throttled(send.generation, hints.wait_s)
        else:
            provider.limit.answered()
        raise error

    async def _post(
        self, provider: _Provider, endpoint: ChatEndpoint, request: ChatRequest
    ) -> tuple[int, Mapping[str, str], bytes]:
        headers = {**JSON_CONTENT, "Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else JSON_CONTENT
        self.in_flight += 1
        self.requests_sent += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        provider.meter.started()
        try:
            async with provider.session.post(
                endpoint.url, data=request.encoded(), headers=headers, timeout=self._timeout
            ) as resp:
                return resp.status, resp.headers, await resp.read()
        except TimeoutError as exc:
            raise TransientError(f"chat request timed out after {self.request_timeout_s} s") from exc
        except aiohttp.ClientConnectionError as exc:  # refused, reset or dropped: down, or vLLM/TGI still loading
            raise Unavailable(f"chat request failed: {type(exc).__name__}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise TransientError(f"chat request failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self.in_flight -= 1
            provider.meter.returned()


def parse_reply(raw: bytes, *, simulated: bool = False) -> ChatReply:
    """A chat completion's JSON body as a reply (as a Batch API output line carries it)."""
    return _reply(raw, {SIMULATED_HEADER: "true"} if simulated else {})


def _reply(raw: bytes, headers: Mapping[str, str]) -> ChatReply:
    try:
        data = fastjson.loads(raw)
        choice = data["choices"][0]
        message = choice.get("message") or {}
        usage = data.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise TransientError(f"malformed chat response body ({type(exc).__name__})", http_status=200) from exc
    content = message.get("content")
    return ChatReply(
        content=content if isinstance(content, str) else None,
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        simulated=SIMULATED_HEADER in headers,
    )


def _count(headers: Mapping[str, str], *names: str) -> int | None:
    """The first of `names` present, as a whole count (None when absent or unreadable)."""
    for name in names:
        if (value := seconds(headers.get(name))) is not None:
            return int(value)
    return None


def _origin(url: str) -> str:
    """scheme://host:port of a URL, for naming a provider in the log (no path, no credentials)."""
    return str(URL(url).origin())
