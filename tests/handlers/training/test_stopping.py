"""The stop rules of `finetune.stop_when` over a training curve: each fires exactly when it should, and says why."""

from __future__ import annotations

from daemon.spec import StopWhen
from handlers.training.events import LossCurve
from handlers.training.stopping import stop_reason


def curve(train: list[float], evals: list[float]) -> LossCurve:
    """A curve with training losses at steps 1.. and evaluations every 10 steps."""
    return LossCurve(
        train=[(i + 1, v) for i, v in enumerate(train)], eval=[(10 * (i + 1), v) for i, v in enumerate(evals)]
    )


def test_eval_patience_counts_evaluations_since_the_best() -> None:
    """Two evaluations without improvement after the best: stopped with best and current named; one is not enough."""
    rules = StopWhen(eval_loss_patience=2)
    assert stop_reason(curve([1.0], [0.9, 0.8, 0.85]), rules) is None
    reason = stop_reason(curve([1.0], [0.9, 0.8, 0.85, 0.95]), rules)
    assert reason is not None
    assert "not improved for 2 evaluations (best 0.8 at step 20, now 0.95 at step 40" in reason


def test_min_delta_ignores_tiny_improvements() -> None:
    """An improvement below min_delta does not reset the patience."""
    rules = StopWhen(eval_loss_patience=2, min_delta=0.05)
    assert stop_reason(curve([1.0], [0.9, 0.88, 0.87]), rules) is not None
    assert stop_reason(curve([1.0], [0.9, 0.8, 0.79]), StopWhen(eval_loss_patience=2, min_delta=0.05)) is None


def test_nan_and_ceiling_and_price() -> None:
    """A NaN loss, a loss over the ceiling, and a price over the cap each stop the run; none fires without cause."""
    assert "is nan at step 2" in (stop_reason(curve([1.0, float("nan")], []), StopWhen()) or "")
    assert stop_reason(curve([1.0, float("nan")], []), StopWhen(loss_nan=False)) is None
    assert "above stop_when.loss_above 2" in (stop_reason(curve([1.0, 2.5], []), StopWhen(loss_above=2)) or "")
    assert stop_reason(curve([1.0, 1.5], []), StopWhen(loss_above=2)) is None
    priced = StopWhen(price_above_usd=1.0)
    assert "price so far $1.50" in (stop_reason(curve([1.0], []), priced, price_so_far_usd=1.5) or "")
    assert stop_reason(curve([1.0], []), priced, price_so_far_usd=0.5) is None
