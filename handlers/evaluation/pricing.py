"""What an evaluation costs on Together's per-token prices: estimated before asking, charged after, per mode.

Prices come from Together's models list (USD per million input / output tokens); a serverless LoRA fine-tune costs
what its base model costs. The Batch API bills up to half the serverless price (`BATCH_DISCOUNT`). Models on a
dedicated endpoint or on another server are billed otherwise and get no figure here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from daemon.errors import FinetunedError
from daemon.jobs.context import JobContext

log = structlog.get_logger()

BATCH_DISCOUNT = 0.5
CHARS_PER_TOKEN = 4


async def price_table(ctx: JobContext, models: Mapping[str, str], *, base_model: str | None) -> dict[str, Any]:
    """Alias -> (input, output) USD per million tokens for the models Together bills per token; {} if unknown."""
    if ctx.remote is None:
        return {}
    try:
        listed = await ctx.remote.model_prices()
    except FinetunedError as exc:
        log.warning("model_prices_unavailable", error=str(exc))
        return {}
    found = {}
    for alias, model in models.items():
        price = listed.get(model) or (listed.get(base_model) if alias == "finetuned" and base_model else None)
        if price is not None:
            found[alias] = price
    return found


def cost_usd(price: tuple[float, float], prompt_tokens: int, completion_tokens: int, *, mode: str) -> float:
    """The price of these tokens in this mode."""
    full = (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6
    return full * (BATCH_DISCOUNT if mode == "batch" else 1.0)


def estimate_tokens(prompt_chars: int, items: int, max_tokens: int) -> tuple[int, int]:
    """(prompt, completion) tokens an evaluation will use at most: its prompts' characters / 4, max_tokens each."""
    return -(-prompt_chars // CHARS_PER_TOKEN), items * max_tokens


def price_block(
    prices: Mapping[str, tuple[float, float]], tokens: Mapping[str, Mapping[str, int]], *, mode: str
) -> dict[str, Any]:
    """metrics.json's `price`: per model the USD charged for the tokens used in this mode, and what realtime
    would have cost, with the total."""
    per_model: dict[str, Any] = {}
    for alias, price in prices.items():
        used = tokens.get(alias) or {}
        prompt, completion = int(used.get("prompt") or 0), int(used.get("completion") or 0)
        per_model[alias] = {
            "usd": round(cost_usd(price, prompt, completion, mode=mode), 6),
            "realtime_usd": round(cost_usd(price, prompt, completion, mode="realtime"), 6),
            "usd_per_mtok": list(price),
        }
    total = sum(m["usd"] for m in per_model.values())
    return {"mode": mode, "models": per_model, "total_usd": round(total, 6)} if per_model else {"mode": mode}
