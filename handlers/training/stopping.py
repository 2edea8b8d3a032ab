"""`finetune.stop_when`: decide from the training curve so far (and the price so far) whether to stop a fine-tune.

Pure functions over a `LossCurve`; `poll` calls `stop_reason` on every look at a running job and, on a reason,
cancels the remote job and records why.
"""

from __future__ import annotations

import math

from daemon.money import usd
from daemon.spec import StopWhen
from handlers.training.events import LossCurve


def stop_reason(curve: LossCurve, rules: StopWhen, *, price_so_far_usd: float | None = None) -> str | None:
    """Why the run should stop now, or None to let it go on."""
    return (
        _not_finite(curve, rules)
        or _ceiling(curve, rules)
        or _no_improvement(curve, rules)
        or _too_expensive(price_so_far_usd, rules)
    )


def _not_finite(curve: LossCurve, rules: StopWhen) -> str | None:
    if not rules.loss_nan:
        return None
    for kind, points in (("training", curve.train), ("eval", curve.eval)):
        bad = next(((step, value) for step, value in points if not math.isfinite(value)), None)
        if bad is not None:
            return f"the {kind} loss is {bad[1]} at step {bad[0]} (stop_when.loss_nan)"
    return None


def _ceiling(curve: LossCurve, rules: StopWhen) -> str | None:
    if rules.loss_above is None or not curve.train:
        return None
    step, value = curve.train[-1]
    if value > rules.loss_above:
        return f"the training loss {value:g} at step {step} is above stop_when.loss_above {rules.loss_above:g}"
    return None


def _no_improvement(curve: LossCurve, rules: StopWhen) -> str | None:
    patience = rules.eval_loss_patience
    if patience is None or len(curve.eval) <= patience:
        return None
    best_index = 0
    for index, (_, value) in enumerate(curve.eval):
        if value < curve.eval[best_index][1] - rules.min_delta:
            best_index = index
    since = len(curve.eval) - 1 - best_index
    if since < patience:
        return None
    best_step, best = curve.eval[best_index]
    step, now = curve.eval[-1]
    return (
        f"the eval loss has not improved for {since} evaluations (best {best:g} at step {best_step}, "
        f"now {now:g} at step {step}; stop_when.eval_loss_patience {patience})"
    )


def _too_expensive(price_so_far_usd: float | None, rules: StopWhen) -> str | None:
    if rules.price_above_usd is None or price_so_far_usd is None or price_so_far_usd <= rules.price_above_usd:
        return None
    return f"the price so far {usd(price_so_far_usd)} is above stop_when.price_above_usd {usd(rules.price_above_usd)}"
