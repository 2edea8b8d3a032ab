"""Money as the daemon shows it: one formatter for every price in messages, reports and status, and Together's units."""

from __future__ import annotations

# Together reports a job's `total_price` as an integer of nano-dollars (its estimate answers in dollars).
NANODOLLARS_PER_USD = 1_000_000_000


def usd(amount: float) -> str:
    """`$1,234.56` for real amounts; six decimals below a cent (the sandbox's and tiny jobs' prices)."""
    return f"${amount:,.2f}" if abs(amount) >= 0.01 or amount == 0 else f"${amount:.6f}"


def from_nanodollars(value: object) -> float | None:
    """Dollars from a nano-dollar integer field, or None when the field is absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value / NANODOLLARS_PER_USD
