"""The sandbox: a Together-compatible API on loopback for the offline quickstart, the tests and the benchmarks.

Everything it answers is SIMULATED; reports made against it must say so. What it does:

* Files: the SDK's three-call upload. `POST /v1/files` (multipart metadata with a sha256 `checksum`) answers 302
  with `Location` (a presigned-looking `PUT /_s3/upload/{id}` URL, no auth) and `X-Together-File-Id`;
  `POST /v1/files/{id}/preprocess` validates the content (every line a JSON object with a non-empty `messages`
  list; for purpose `batch-api` just a JSON object) and answers the FileResponse. A second upload of the same
  bytes gets `409 {"file_id": ...}` with `x-should-retry: false` (so the SDK adopts it at once). Get, list,
  delete and content are served too.
* Fine-tunes: `GET /v1/fine-tunes/models/limits` (any `org/name` model, complete `lora_training`), estimate-price,
  create (the SDK's nested `training_type`/`training_method`/`lr_scheduler`, `wandb_key`, `validation_file: ""`),
  list, retrieve (with events), events, cancel. Ids look like Together's: `file-<uuid>`, `ft-<uuid>`.
* Job clock: pending 20 s, queued 40 s, running (10 s setup + 3 s per step), compressing 30 s, uploading 30 s,
  completed, in simulated seconds; real time is simulated time / `speed`. Steps per epoch are
  ceil(lines / batch size) with at least 10 (batch "max" = 128), at most 2000 steps in all. Events carry every
  field the contract requires, with its type/level enums (no loss field: `epoch_complete` messages say "train loss
  1.0123"); `GET /v1/fine-tunes/{id}/metrics` answers `{"metrics": [{"train/loss", "train/learning_rate",
  "train/global_step"}, {"eval/loss", "eval/global_step"}...]}` (loss `0.35 + 1.55 exp(-4 step/total_steps)`
  +-0.03 deterministic noise, about 40 rows; eval rows at `n_evals` steps), `/checkpoints` the saved ones
  (`n_checkpoints` spread, the last "Final" once completed); `DELETE /v1/fine-tunes/{id}`,
  `GET /v1/fine-tunes/models/supported`.
  `model_output_name` is `sandbox/<base model>-<suffix>-<8 hex of the job id>`. A cancel goes
  cancel_requested -> cancelled (5 simulated s). A job whose training file failed validation ends `user_error`.
* Price: tokens = ceil(file bytes / 4); train tokens = tokens x n_epochs, eval tokens = validation tokens x
  n_evals; price = (train + eval tokens) / 1e6 x $0.48 (LoRA) or $0.54 (full); `allowed_to_proceed` is
  price <= `user_limit_usd` (100 by default). A job's `total_price` is that price in nano-dollars.
* Chat: `POST /v1/chat/completions`. For CoQA-style prompts (a message containing "Story:", then user
  questions) the answer to the last user question is extractive: a base model (any model name) says "According
  to the story, <the story sentence sharing most content words with the question>"; the output model of a
  completed sandbox fine-tune answers a few words of that sentence (or yes/no), so a fine-tuned model scores
  visibly better, deterministically. Other prompts get a deterministic placeholder. `usage` counts 4 characters
  per token; `max_tokens` truncates (finish_reason "length"). No streaming. Answers carry
  `x-finetuned-simulated: true`. The answer is decided first (completion.py, shared with batches), then:
  1. outages and loading (below) answer instead;
  2. rate limits `rate_limit_rpm` / `rate_limit_tpm` (0 = off) meter every chat request, over the whole sandbox
     (every key and model share them), on the real clock. Model: a token bucket per limit holding one minute's
     budget, full at start (and when a limit is changed), refilled continuously at limit/60 per second; a request
     needs one request and its tokens (prompt + answer, known in advance; a request bigger than the bucket needs
     a full one). Every chat answer then carries `x-ratelimit-limit` (rpm), `x-ratelimit-remaining` (whole
     requests left after this one), `x-ratelimit-reset` (seconds until the same request would be admitted
     again, 0 if now) and, with tpm, `x-tokenlimit-limit` / `x-tokenlimit-remaining`. Over a limit: 429
     `{"error": {"type": "dynamic_request_limited" | "dynamic_token_limited", "code": "rate_limit_exceeded"}}`
     with `Retry-After` (seconds, ceil) and `retry-after-ms`. Without limits no rate-limit header is sent;
  3. errors of the model (`resolve_served_model` in models.py, the one hook deciding what a name maps to): a
     sandbox output model whose job has not completed gets 404 `model_not_available`; a completed LoRA fine-tune
     of a `serverless_lora` base model is served serverless; any other fine-tune (another base, or
     `training_type.type == "Full"`) gets Together's 400 "Unable to access non-serverless model <name>. Please
     visit https://api.together.ai/models/<name> to create and start a new dedicated endpoint for the model."
     (code `model_not_available`); any other name is a base model;
  4. the context limit `context_tokens` (0 = none) in the wording of `flavour` (`together`, `llama.cpp`,
     `vllm`, `tgi`, `openai`; sources cited in flavours.py): prompt tokens + `max_tokens` over the limit get
     Together 400 / vLLM 400 / OpenAI 400 `context_length_exceeded` / TGI 422 with the server's own sentence;
     llama.cpp refuses (400 `exceed_context_size_error`) only a prompt that fills its context, and otherwise
     answers up to the context left (finish_reason "length");
  5. serving slots `slots` (0 = unlimited): like llama-server, vLLM or TGI, at most N requests are served at once,
     each taking `latency_ms` ("50" fixed, "20-80" uniform, seeded); the others wait FIFO (never a 429), so queue
     time grows with the queue and counts against the client's timeout. A client that hangs up leaves the queue
     (handlers are cancelled on disconnect).
* Models: `GET /v1/models` answers Together's `ModelInfo` list (`id`, `object: "model"`, `created`, `type:
  "chat"`, `display_name`, `organization`, `context_length` = `context_tokens` or 131072, `pricing: {"hourly": 0,
  "input", "output", "base": 0, "finetune": 0}` in $ per million tokens): a default set, every other `org/name`
  model used in chat or fine-tunes, and the output models served serverless. Prices follow Together's size
  tiers: up to 4B $0.10, 8B $0.20, 21B $0.30, 41B $0.80, 80B $0.90, 110B $1.80, larger $3.50 (unsized: as 8B); a
  LoRA fine-tune costs what its base costs.
* Batches (Together's Batch API, half price, its own pool outside the rate limits): `POST /v1/batches`
  (`{endpoint: "/v1/chat/completions", input_file_id, completion_window?, priority?, model_id?}`, the file
  uploaded with purpose `batch-api`) answers 201 `{"job": BatchJob}`; `GET /v1/batches` (a list),
  `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`. Status VALIDATING (30 simulated s), IN_PROGRESS (60 s +
  1 s per request; `progress` 0-100), COMPLETED (`completed_at`, `output_file_id`, `error_file_id`); a file over
  50,000 lines or 100 MB ends FAILED with the reason in `error`; still running after the 24 h window: EXPIRED.
  Lines that are not JSON, lack `custom_id` (unique, <= 64 chars) or `body`, name another model than `model_id`,
  or that chat would refuse, go to the error file as `{"custom_id", "error": {"message", "code"}}` (Together's
  documented format); answers go to the output file as `{"id", "custom_id", "response": {"status_code": 200,
  "request_id", "body": <chat.completion>}, "error": null}`, the same answers as real-time chat. A cancel while
  VALIDATING or IN_PROGRESS ends CANCELLED with the requests answered so far in the output file. The files are
  read at `GET /v1/files/{id}/content`. Batch errors use `{"error": "..."}` (the contract's BatchErrorResponse).
* Dedicated endpoints (the contract's `/v1/endpoints`, `/v1/hardware?model=`; endpoints.py): hardware with
  `cents_per_minute` and availability, filtered by the model's size; an endpoint is PENDING, STARTING, then STARTED
  after `endpoint_startup_s` simulated s, billed per started minute x replicas until stopped (PATCH `state`),
  deleted (204) or idle past `inactive_timeout`; chat to its `name` only while STARTED (else 400
  `dedicated_endpoint_not_running`). `POST /_sandbox/endpoint-failures` `{"message", "at_s", "count"}` sends the
  next endpoints (v2: deployments) to ERROR. Stats: `endpoints: {created, running, deleted, deployments: {created,
  deleted}, minutes_billed, cost_usd}`.
* The SDK's project-scoped surface (routes_v2.py, projects.py; knob `v2_endpoints`, off: 404): whoami, endpoints
  (named entry points, listed with `filter=name:"..."`, routed by a traffic split), deployments (the billed units
  above: PROVISIONING, READY, STOPPING, STOPPED, FAILED; autoscaling 0/0 stops one), instance types, configs and the
  project's models (completed fine-tunes). Endpoint timestamps, `Date` headers and bills share the simulated clock
  (Sandbox.sim_now).
* `lean` (knob, `--lean`): every answer listed in lean.py is pruned to the fields the contract declares (v2: the
  fields the SDK's types require).
* Errors use Together's shape `{"id", "error": {"message", "type", "param", "code"}}`. `/v1/`, `/v2/`, `/v3/`
  routes want `Authorization: Bearer <any key>` (or exactly `api_key` when one is configured).
* Faults. `fault_rate` answers that share of `/v1/` requests with a random 429 (Retry-After, retry-after-ms,
  x-ratelimit-reset = `retry_after_s`) or 500/502/503 before the endpoint runs. Scripted faults:
  `POST /_sandbox/faults` with `{"kind", "route", "count", "retry_after_s", "delay_s", "message"}` (or
  `{"faults": [...]}`); `route` is `METHOD /pattern` as in the stats (e.g. `POST /v1/fine-tunes`) or `*`;
  kinds `429`, `insufficient_quota` (429), `401`, `402`, `403`, `500`, `502`, `503` answer instead of the
  endpoint; `timeout` runs the endpoint and holds the answer back `delay_s` (the side effect happened, the
  client times out); `slow` trickles the body out over `delay_s`. `GET`/`DELETE /_sandbox/faults` list/clear.
  `POST /_sandbox/job-outcomes` `{"outcome": "error"|"user_error"|"cancelled", "message", "at": 0.5,
  "count": 1, "job_id": null}` makes the next job(s) (or one job) end that way.
* Outages: `POST /_sandbox/outage` `{"seconds": S, "mode": "refuse" | "503"}` (or `SandboxHandle.outage`)
  answers first, then `refuse`: nothing listens for S seconds (connections refused, open ones dropped; the admin
  API is unreachable too), then it listens again on the same host:port; `503`: every `/v1/chat/completions`
  answers 503 "The server is overloaded or not ready yet." for S seconds. `POST /_sandbox/loading`
  `{"seconds": S}` (or `SandboxHandle.loading`): the model loads for S seconds: chat answers llama.cpp's exact
  503 `{"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}` (flavour llama.cpp),
  a provider's 503 (together, openai), or, for vllm and tgi (which open their port only once loaded), nothing
  listens.
* Admin (never faulted): `GET /_sandbox/stats` -> `{"requests": {"POST /v1/files": 1, ...}, "faults": {...},
  "files": n, "jobs": n, "chat": {"slots", "in_service", "queue_depth", "peak_queue_depth", "queued", "served",
  "abandoned", "unavailable"}, "rate_limit": {"rpm", "tpm", "admitted", "refused_requests", "refused_tokens"},
  "batches": {"created", "completed", "requests"}, "outages": n}` where `requests` counts what the endpoints
  answered themselves, `faults` what was injected instead and `outages` the refuse outages (vllm/tgi loading
  included); `POST /_sandbox/reset`;
  `POST /_sandbox/batch-outcomes` `{"outcome": "failed"|"expired", "message", "at": 0.5, "count": 1,
  "batch_id": null}` ends the next batch(es) (or one batch) that way at fraction `at` of its run (an EXPIRED
  batch keeps what it answered; the rest go to the error file as `batch_expired`); `GET`/`POST /_sandbox/config`
  with the knobs speed, latency_ms, fault_rate, retry_after_s, user_limit_usd, slots, context_tokens, flavour,
  rate_limit_rpm, rate_limit_tpm, serverless_lora, lean, endpoint_startup_s, v2_endpoints (also `start_sandbox(...)`
  keywords and `--kebab-case` flags;
  defaults: slots 0, context_tokens 0, flavour together, rate limits 0, serverless_lora
  meta-llama/Meta-Llama-3.1-8B-Instruct-Reference and meta-llama/Meta-Llama-3.1-70B-Instruct-Reference).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Unpack

import structlog
from aiohttp import web

from daemon.sandbox.app import make_app
from daemon.sandbox.knobs import DEFAULT_SPEED, SandboxKnobs, build_sandbox
from daemon.sandbox.listener import Listener
from daemon.sandbox.outages import begin_loading, begin_outage
from daemon.sandbox.state import Sandbox

log = structlog.get_logger()

__all__ = ["DEFAULT_SPEED", "Sandbox", "SandboxHandle", "SandboxKnobs", "serve_sandbox", "start_sandbox"]


@dataclass
class SandboxHandle:
    """A running sandbox: `base_url` (no /v1) for the SDK's `base_url`, `sandbox` for in-process inspection."""

    base_url: str
    host: str
    port: int
    sandbox: Sandbox
    _runner: web.AppRunner
    _listener: Listener

    async def outage(self, seconds: float, mode: str = "refuse") -> None:
        """Go down for `seconds`: `refuse` stops listening (returns once nothing listens), `503` answers chat 503."""
        await begin_outage(self.sandbox, self._listener, seconds, mode)

    async def loading(self, seconds: float) -> None:
        """The model is loading for `seconds` (the flavour's loading answer; vllm/tgi refuse connections)."""
        await begin_loading(self.sandbox, self._listener, seconds)

    async def close(self) -> None:
        """Stop serving; responses held back by `timeout`/`slow` faults are released first."""
        self.sandbox.closing.set()
        await self._listener.close()
        await self._runner.cleanup()
        log.info("sandbox_stopped", port=self.port)


async def start_sandbox(host: str = "127.0.0.1", port: int = 0, **knobs: Unpack[SandboxKnobs]) -> SandboxHandle:
    """Start serving on `host:port` (0 = a free port) and return once it accepts connections. Knobs: speed,
    latency_ms, fault_rate, seed, retry_after_s, api_key, user_limit_usd, slots, context_tokens, flavour,
    rate_limit_rpm, rate_limit_tpm, serverless_lora, lean, endpoint_startup_s, v2_endpoints (see the package
    docstring)."""
    sandbox = build_sandbox(knobs)
    listener = Listener(host, port)
    runner = web.AppRunner(
        make_app(sandbox, listener), access_log=None, shutdown_timeout=1.0, handler_cancellation=True
    )
    await runner.setup()
    await listener.start(runner)
    url_host = f"[{host}]" if ":" in host else host
    handle = SandboxHandle(f"http://{url_host}:{listener.port}", host, listener.port, sandbox, runner, listener)
    log.info("sandbox_started", base_url=handle.base_url, **{k: v for k, v in knobs.items() if k != "api_key"})
    return handle


async def serve_sandbox(host: str = "127.0.0.1", port: int = 0, **knobs: Unpack[SandboxKnobs]) -> None:
    """Serve until cancelled (Ctrl-C / SIGTERM in the caller), then shut down cleanly."""
    handle = await start_sandbox(host, port, **knobs)
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(handle.close())
