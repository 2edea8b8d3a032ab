"""The sandbox: a Together-compatible API on loopback for the offline quickstart, the tests and the benchmarks.

Everything it answers is SIMULATED; reports made against it must say so. What it does:

* Files: the SDK's three-call upload. `POST /v1/files` (multipart metadata with a sha256 `checksum`) answers 302
  with `Location` (a presigned-looking `PUT /_s3/upload/{id}` URL, no auth) and `X-Together-File-Id`;
  `POST /v1/files/{id}/preprocess` validates the content (every line a JSON object with a non-empty `messages`
  list) and answers the FileResponse. A second upload of the same bytes gets `409 {"file_id": ...}` with
  `x-should-retry: false` (so the SDK adopts it at once). Get, list, delete and content are served too.
* Fine-tunes: `GET /v1/fine-tunes/models/limits` (any `org/name` model, complete `lora_training`), estimate-price,
  create (the SDK's nested `training_type`/`training_method`/`lr_scheduler`, `wandb_key`, `validation_file: ""`),
  list, retrieve (with events), events, cancel. Ids look like Together's: `file-<uuid>`, `ft-<uuid>`.
* Job clock: pending 20 s, queued 40 s, running (10 s setup + 3 s per step), compressing 30 s, uploading 30 s,
  completed, in simulated seconds; real time is simulated time / `speed`. Steps per epoch are
  ceil(lines / batch size) with at least 10 (batch "max" = 128), at most 2000 steps in all. `training_progress`
  events carry a falling loss `0.35 + 1.55 exp(-4 step/total_steps)` (+-0.03 deterministic noise) in the fields
  `step`/`loss` and in the message ("Step 12/40: train loss 1.0123"); `eval_complete` events carry `eval_loss`.
  `model_output_name` is `sandbox/<base model>-<suffix>-<8 hex of the job id>`. A cancel goes
  cancel_requested -> cancelled (5 simulated s). A job whose training file failed validation ends `user_error`.
* Price: tokens = ceil(file bytes / 4); train tokens = tokens x n_epochs, eval tokens = validation tokens x
  n_evals; price = (train + eval tokens) / 1e6 x $0.48 (LoRA) or $0.54 (full); `allowed_to_proceed` is
  price <= `user_limit_usd` (100 by default). A job's `total_price` is that price in nano-dollars.
* Chat: `POST /v1/chat/completions` after `latency_ms` ("50" fixed, "20-80" uniform, seeded). For CoQA-style
  prompts (a message containing "Story:", then user questions) the answer to the last user question is
  extractive: the base model (any model name) says "According to the story, <the story sentence sharing most
  content words with the question>"; the output model of a completed sandbox job answers a few words of that
  sentence (or yes/no), so a fine-tuned model scores visibly better, deterministically. A sandbox output model
  whose job has not completed gets 404 `model_not_available`. Other prompts get a deterministic placeholder.
  `usage` counts 4 characters per token; `max_tokens` truncates (finish_reason "length"). No streaming.
* Errors use Together's shape `{"id", "error": {"message", "type", "param", "code"}}`. `/v1/` routes want
  `Authorization: Bearer <any key>` (or exactly `api_key` when one is configured).
* Faults. `fault_rate` answers that share of `/v1/` requests with a random 429 (Retry-After, retry-after-ms,
  x-ratelimit-reset = `retry_after_s`) or 500/502/503 before the endpoint runs. Scripted faults:
  `POST /_sandbox/faults` with `{"kind", "route", "count", "retry_after_s", "delay_s", "message"}` (or
  `{"faults": [...]}`); `route` is `METHOD /pattern` as in the stats (e.g. `POST /v1/fine-tunes`) or `*`;
  kinds `429`, `insufficient_quota` (429), `401`, `402`, `403`, `500`, `502`, `503` answer instead of the
  endpoint; `timeout` runs the endpoint and holds the answer back `delay_s` (the side effect happened, the
  client times out); `slow` trickles the body out over `delay_s`. `GET`/`DELETE /_sandbox/faults` list/clear.
  `POST /_sandbox/job-outcomes` `{"outcome": "error"|"user_error"|"cancelled", "message", "at": 0.5,
  "count": 1, "job_id": null}` makes the next job(s) (or one job) end that way.
* Admin (never faulted): `GET /_sandbox/stats` -> `{"requests": {"POST /v1/files": 1, ...}, "faults": {...},
  "files": n, "jobs": n}` where `requests` counts what the endpoints answered themselves and `faults` what was
  injected instead; `POST /_sandbox/reset`; `GET`/`POST /_sandbox/config` (speed, latency_ms, fault_rate,
  retry_after_s, user_limit_usd).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog
from aiohttp import web

from daemon.sandbox.app import make_app
from daemon.sandbox.faults import FaultPlan
from daemon.sandbox.state import Sandbox, parse_latency_ms

DEFAULT_SPEED = 60.0
log = structlog.get_logger()

__all__ = ["DEFAULT_SPEED", "Sandbox", "SandboxHandle", "serve_sandbox", "start_sandbox"]


@dataclass
class SandboxHandle:
    """A running sandbox: `base_url` (no /v1) for the SDK's `base_url`, `sandbox` for in-process inspection."""

    base_url: str
    host: str
    port: int
    sandbox: Sandbox
    _runner: web.AppRunner

    async def close(self) -> None:
        """Stop serving; responses held back by `timeout`/`slow` faults are released first."""
        self.sandbox.closing.set()
        await self._runner.cleanup()
        log.info("sandbox_stopped", port=self.port)


async def start_sandbox(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    speed: float = DEFAULT_SPEED,
    latency_ms: str = "0",
    fault_rate: float = 0.0,
    seed: int = 0,
    retry_after_s: float = 1.0,
    api_key: str | None = None,
    user_limit_usd: float = 100.0,
) -> SandboxHandle:
    """Start serving on `host:port` (0 = a free port) and return once it accepts connections."""
    if speed <= 0:
        raise ValueError("speed must be > 0")
    if not 0.0 <= fault_rate <= 1.0:
        raise ValueError("fault_rate must be between 0 and 1")
    sandbox = Sandbox(
        speed=speed,
        latency_ms=parse_latency_ms(latency_ms),
        faults=FaultPlan(fault_rate=fault_rate, seed=seed, retry_after_s=retry_after_s),
        seed=seed,
        api_key=api_key,
        user_limit_usd=user_limit_usd,
    )
    runner = web.AppRunner(make_app(sandbox), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = int(runner.addresses[0][1])
    url_host = f"[{host}]" if ":" in host else host
    handle = SandboxHandle(f"http://{url_host}:{bound_port}", host, bound_port, sandbox, runner)
    log.info("sandbox_started", base_url=handle.base_url, speed=speed, latency_ms=latency_ms, fault_rate=fault_rate)
    return handle


async def serve_sandbox(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    speed: float = DEFAULT_SPEED,
    latency_ms: str = "0",
    fault_rate: float = 0.0,
    seed: int = 0,
    retry_after_s: float = 1.0,
    api_key: str | None = None,
    user_limit_usd: float = 100.0,
) -> None:
    """Serve until cancelled (Ctrl-C / SIGTERM in the caller), then shut down cleanly."""
    handle = await start_sandbox(
        host,
        port,
        speed=speed,
        latency_ms=latency_ms,
        fault_rate=fault_rate,
        seed=seed,
        retry_after_s=retry_after_s,
        api_key=api_key,
        user_limit_usd=user_limit_usd,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(handle.close())
