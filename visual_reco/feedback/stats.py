"""Statistics for A/B analytics, with the standard library only (no SciPy): Wilson
intervals, the two-proportion z-test, the sample size a difference needs, and the
sample-ratio-mismatch check (a chi-square test, its p-value from the regularized upper
incomplete gamma function)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z_95 = 1.959963984540054
SRM_ALPHA = 0.001


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def normal_ppf(p: float) -> float:
    """The z with P(Z <= z) = p, by bisection on the normal distribution function."""
    if not 0 < p < 1:
        raise ValueError("p must be between 0 and 1")
    low, high = -40.0, 40.0
    for _ in range(200):
        middle = (low + high) / 2
        if 1 - normal_sf(middle) < p:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def wilson(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 0) without trials."""
    if trials <= 0:
        return 0.0, 0.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= trials else min(1.0, centre + half)
    return low, high


def two_proportion_p(successes_a: int, trials_a: int, successes_b: int,
                     trials_b: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test; None when it is undefined
    (an arm without trials, or no variance at all)."""
    if trials_a <= 0 or trials_b <= 0:
        return None
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    variance = pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b)
    if variance <= 0:
        return None
    z = (successes_b / trials_b - successes_a / trials_a) / math.sqrt(variance)
    return min(1.0, 2 * normal_sf(abs(z)))


def sample_size_per_arm(p_control: float, p_variant: float, alpha: float = 0.05,
                        power: float = 0.8) -> int | None:
    """Trials each arm needs for a two-sided test at ``alpha`` to detect the difference
    between the two rates with ``power``; None when the rates are equal or degenerate."""
    if p_control == p_variant or not (0 < p_control < 1 or 0 < p_variant < 1):
        return None
    z_alpha = normal_ppf(1 - alpha / 2)
    z_beta = normal_ppf(power)
    mean = (p_control + p_variant) / 2
    spread = (z_alpha * math.sqrt(2 * mean * (1 - mean))
              + z_beta * math.sqrt(p_control * (1 - p_control) + p_variant * (1 - p_variant)))
    return math.ceil(spread * spread / (p_control - p_variant) ** 2)


def regularized_gamma_q(a: float, x: float) -> float:
    """Q(a, x) = Gamma(a, x) / Gamma(a), the regularized upper incomplete gamma function:
    a series below x = a + 1, Lentz's continued fraction above (Numerical Recipes 6.2)."""
    if a <= 0:
        raise ValueError("a must be positive")
    if x <= 0:
        return 1.0
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        term = total = 1 / a
        denominator = a
        for _ in range(10_000):
            denominator += 1
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    fraction = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        step = d * c
        fraction *= step
        if abs(step - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * fraction)


def chi2_sf(statistic: float, degrees: int) -> float:
    """P(X > statistic) for X chi-square distributed with ``degrees`` degrees of freedom."""
    if degrees < 1:
        raise ValueError("degrees must be at least 1")
    return regularized_gamma_q(degrees / 2, statistic / 2)


@dataclass(frozen=True)
class SampleRatio:
    """A sample-ratio-mismatch check: the chi-square statistic, its p-value, and whether
    the split differs from the configured shares (p below ``SRM_ALPHA``)."""

    statistic: float
    p_value: float
    expected: tuple[float, ...]

    @property
    def mismatch(self) -> bool:
        """Whether the observed split is implausible under the configured shares."""
        return self.p_value < SRM_ALPHA


def sample_ratio_check(observed: Sequence[int], shares: Sequence[float]) -> SampleRatio | None:
    """Chi-square test of ``observed`` visitors per variant against ``shares`` (any scale),
    with k - 1 degrees of freedom; None with fewer than two arms or no visitors."""
    if len(observed) != len(shares):
        raise ValueError("one share per observed count")
    total, share_total = sum(observed), sum(shares)
    if len(observed) < 2 or total <= 0 or share_total <= 0:
        return None
    expected = tuple(total * share / share_total for share in shares)
    if any(value <= 0 for value in expected):
        return None
    statistic = sum((seen - wanted) ** 2 / wanted for seen, wanted in zip(observed, expected,
                                                                          strict=True))
    return SampleRatio(statistic, chi2_sf(statistic, len(observed) - 1), expected)
