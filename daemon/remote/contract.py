"""Reading Together's answers the way its published contract allows: required fields, optional ones with fallbacks.

The adapter (daemon/remote/together.py) hands raw JSON here; nothing in this module imports the SDK. Each fallback
is documented where it is applied, and the README's "Keeping to Together's contract" section lists them.
"""

from __future__ import annotations

import copy
from typing import Any

from daemon.remote.api import PriceEstimate

# The contract's limits answer has no `lora_training.default_rank`, which the SDK reads when `lora_r` is not given.
# Fallback: 16 (the rank the SDK's own traces show as Together's default), never above `lora_training.max_rank`.
FALLBACK_LORA_RANK = 16


def complete_limits(raw: dict[str, Any], *, max_seq_length: int | None) -> dict[str, Any]:
    """The limits answer plus what the SDK's local checks read but the contract does not promise.

    `lora_training.default_rank` (see FALLBACK_LORA_RANK); `max_seq_length_sft`/`_dpo`/`min_max_seq_length` (read
    only when the spec sets `max_seq_length`): the spec's own value, so Together's server decides; `full_training`
    stays absent (the SDK then refuses a full fine-tune clearly); `supports_vision` defaults to false.
    """
    limits = copy.deepcopy(raw)
    lora = limits.get("lora_training")
    if isinstance(lora, dict) and not isinstance(lora.get("default_rank"), int):
        max_rank = lora.get("max_rank")
        rank = FALLBACK_LORA_RANK if not isinstance(max_rank, int) else min(FALLBACK_LORA_RANK, max_rank)
        lora["default_rank"] = rank
    if max_seq_length is not None:
        for key in ("max_seq_length_sft", "max_seq_length_dpo", "min_max_seq_length"):
            if not isinstance(limits.get(key), int):
                limits[key] = max_seq_length
    limits.setdefault("supports_vision", False)
    return limits


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(raw: dict[str, Any], key: str) -> float | None:
    value = raw.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def price_estimate(raw: dict[str, Any]) -> PriceEstimate:
    """The estimate answer. `estimation_available` is not in the contract (the SDK's type has it): when absent,
    the estimate is available exactly when `estimated_total_price` is a number."""
    flag = raw.get("estimation_available")
    total = _number(raw, "estimated_total_price")
    available = bool(flag) if isinstance(flag, bool) else total is not None
    if not available:
        return PriceEstimate(available=False, unavailable_reason=str(raw.get("unavailable_reason") or "unknown"))
    train, evals = _number(raw, "estimated_train_token_count"), _number(raw, "estimated_eval_token_count")
    allowed = raw.get("allowed_to_proceed")
    return PriceEstimate(
        available=True,
        total_usd=total,
        train_tokens=int(train) if train is not None else None,
        eval_tokens=int(evals) if evals is not None else None,
        allowed_to_proceed=allowed if isinstance(allowed, bool) else None,
        user_limit_usd=_number(raw, "user_limit"),
    )


def metric_rows(raw: dict[str, Any]) -> list[dict[str, float]]:
    """`{"metrics": [{name: number}, ...]}` -> the rows, keeping only numeric values (an absent list is [])."""
    rows = raw.get("metrics")
    if not isinstance(rows, list):
        return []
    out: list[dict[str, float]] = []
    for row in rows:
        if isinstance(row, dict):
            numbers = {str(k): float(v) for k, v in row.items() if _is_number(v)}
            if numbers:
                out.append(numbers)
    return out


def checkpoint_rows(raw: dict[str, Any] | list[Any]) -> list[dict[str, Any]]:
    """`{"data": [checkpoint, ...]}` (the contract) or a bare list -> checkpoints with `step`, `path`,
    `created_at`, `checkpoint_type` (each optional here: a missing one is None)."""
    rows = raw.get("data") if isinstance(raw, dict) else raw
    if not isinstance(rows, list):
        return []
    keys = ("step", "path", "created_at", "checkpoint_type")
    return [{key: row.get(key) for key in keys} for row in rows if isinstance(row, dict)]
