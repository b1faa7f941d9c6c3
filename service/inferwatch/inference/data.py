"""A seeded generator of realistic card transactions, with a fraud label.

Used to train the bundled model, by the traffic generator (``inferwatch load``) and by
tests. Pure: numpy in, python values out; the same seed gives the same rows.

Fraud (~1.5% of rows) is drawn from a logistic model over the features, so the
signal is real but noisy: larger amounts relative to the account's habits, far from
home, card not present, foreign, night hours, bursts of transactions, young accounts,
failed PIN attempts and risky merchant categories raise the odds.

``drift=True`` shifts exactly two features, independently of the others:
``distance_from_home_km`` (x4 scale) and ``merchant_category`` (towards electronics,
jewelry and online retail). Every other feature keeps its distribution, so drift
detection must flag exactly those two.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

MERCHANT_CATEGORIES: Final = (
    "grocery",
    "gas",
    "restaurant",
    "travel",
    "electronics",
    "online_retail",
    "entertainment",
    "health",
    "utilities",
    "jewelry",
    "atm_cash",
    "other",
)
_MERCHANT_P: Final = np.array(
    [0.22, 0.12, 0.15, 0.04, 0.05, 0.14, 0.06, 0.05, 0.07, 0.01, 0.04, 0.05]
)
_MERCHANT_P_DRIFT: Final = np.array(
    [0.12, 0.08, 0.10, 0.04, 0.20, 0.22, 0.05, 0.04, 0.05, 0.05, 0.02, 0.03]
)
_MERCHANT_RISK: Final = np.array([-0.6, -0.3, -0.5, 0.6, 1.0, 0.7, 0.0, -0.7, -0.9, 1.4, 0.9, 0.0])
CHANNELS: Final = ("pos", "ecommerce", "atm", "phone")

# Column order of the model's input; the schema (ranges, types) lives in schema.py.
FEATURES: Final = (
    "amount",
    "amount_avg_30d",
    "hour_of_day",
    "day_of_week",
    "merchant_category",
    "channel",
    "card_present",
    "is_foreign",
    "distance_from_home_km",
    "distance_from_last_txn_km",
    "seconds_since_last_txn",
    "txn_count_1h",
    "txn_count_24h",
    "account_age_days",
    "failed_pin_attempts_24h",
    "credit_utilization",
)

FRAUD_INTERCEPT: Final = -8.2
FRAUD_SIGNAL: Final = 2.0  # scales every risk term: higher means a more learnable signal


def generate_arrays(
    n: int, seed: int, *, drift: bool = False
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Return column arrays (one per feature) and the 0/1 fraud labels."""
    rng = np.random.default_rng(seed)
    avg = np.round(rng.lognormal(mean=3.8, sigma=0.7, size=n), 2)
    ratio = rng.lognormal(mean=0.0, sigma=0.6, size=n)
    amount = np.clip(np.round(avg * ratio, 2), 0.5, 25_000.0)
    hour = rng.choice(24, size=n, p=_hour_profile())
    dow = rng.integers(0, 7, size=n)
    merchant_p = _MERCHANT_P_DRIFT if drift else _MERCHANT_P
    merchant = rng.choice(len(MERCHANT_CATEGORIES), size=n, p=merchant_p / merchant_p.sum())
    channel = rng.choice(len(CHANNELS), size=n, p=[0.62, 0.30, 0.05, 0.03])
    card_present = (channel == 0) | (channel == 2)
    is_foreign = rng.random(n) < 0.04
    home_scale = 40.0 if drift else 10.0
    distance_home = np.clip(np.round(rng.exponential(home_scale, size=n), 3), 0.0, 20_000.0)
    distance_home = np.where(is_foreign, distance_home + rng.uniform(300, 8000, n), distance_home)
    distance_home = np.clip(np.round(distance_home, 3), 0.0, 20_000.0)
    distance_last = np.clip(np.round(rng.exponential(6.0, size=n), 3), 0.0, 20_000.0)
    since_last = np.clip(np.round(rng.exponential(30_000.0, size=n), 1), 1.0, 5_000_000.0)
    count_1h = rng.poisson(0.4, size=n)
    count_24h = count_1h + rng.poisson(3.0, size=n)
    account_age = rng.integers(1, 7_300, size=n)
    failed_pin = rng.poisson(0.05, size=n)
    utilization = np.round(rng.beta(2.0, 5.0, size=n), 4)

    logit = (
        FRAUD_INTERCEPT
        + 1.1 * np.log(ratio + 1e-9).clip(-2, 4)
        + 0.9 * (~card_present)
        + 1.4 * is_foreign
        + 0.8 * ((hour <= 4) | (hour >= 23))
        + 0.5 * np.minimum(count_1h, 6)
        + 1.2 * (account_age < 60)
        + 0.9 * np.minimum(failed_pin, 3)
        + 0.35 * np.log1p(np.minimum(distance_home, 2_000.0) / 10.0) * (1 - 0.8 * is_foreign)
        + _MERCHANT_RISK[merchant]
        + 1.0 * (utilization > 0.8)
    )
    logit = FRAUD_INTERCEPT + FRAUD_SIGNAL * (logit - FRAUD_INTERCEPT)
    fraud = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    cols: dict[str, np.ndarray] = {
        "amount": amount,
        "amount_avg_30d": avg,
        "hour_of_day": hour,
        "day_of_week": dow,
        "merchant_category": np.asarray(MERCHANT_CATEGORIES, dtype=object)[merchant],
        "channel": np.asarray(CHANNELS, dtype=object)[channel],
        "card_present": card_present,
        "is_foreign": is_foreign,
        "distance_from_home_km": distance_home,
        "distance_from_last_txn_km": distance_last,
        "seconds_since_last_txn": since_last,
        "txn_count_1h": count_1h,
        "txn_count_24h": count_24h,
        "account_age_days": account_age,
        "failed_pin_attempts_24h": failed_pin,
        "credit_utilization": utilization,
    }
    return cols, fraud


def generate_transactions(
    n: int, seed: int, *, drift: bool = False
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Return ``n`` transactions as JSON-ready dicts (the /v1/predict payload) and labels."""
    cols, labels = generate_arrays(n, seed, drift=drift)
    as_py = {name: cols[name].tolist() for name in FEATURES}
    rows = [{name: as_py[name][i] for name in FEATURES} for i in range(n)]
    return rows, labels


def _hour_profile() -> np.ndarray:
    hours = np.arange(24)
    p = 0.2 + np.exp(-((hours - 13) ** 2) / 30.0) + 0.5 * np.exp(-((hours - 19) ** 2) / 8.0)
    return np.asarray(p / p.sum())
