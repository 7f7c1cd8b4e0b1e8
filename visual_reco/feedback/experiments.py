"""A/B tests: which variant of a surface a visitor sees, from ``FEEDBACK["EXPERIMENTS"]``.

Assignment is a hash of the visitor's id and the surface, so a visitor stays in one variant
on every page and every process, and tests on different surfaces are independent. A surface
with no test, a test switched off, or no visitor id gets the control (the first variant).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from visual_reco.conf import reco_settings

CONTROL = "control"


@dataclass(frozen=True)
class Variant:
    """One arm of a test: its name, traffic share and ranking options."""

    name: str
    share: float = 0.0
    ranking: dict[str, Any] = field(default_factory=dict)


def variants(surface: str) -> list[Variant]:
    """The configured variants of ``surface`` (just the control when there is no test)."""
    test = reco_settings.FEEDBACK["EXPERIMENTS"].get(surface) or {}
    configured = test.get("VARIANTS") or {}
    found = [Variant(name, float(spec.get("SHARE", 0)), dict(spec.get("RANKING", {})))
             for name, spec in configured.items()]
    return found or [Variant(CONTROL, 100.0)]


def active(surface: str) -> bool:
    """Whether an A/B test is running on ``surface``."""
    test = reco_settings.FEEDBACK["EXPERIMENTS"].get(surface) or {}
    return bool(test.get("ENABLED", True) and len(variants(surface)) > 1)


def assign(surface: str, visitor_id: str | None) -> Variant:
    """The variant of ``surface`` that ``visitor_id`` sees."""
    arms = variants(surface)
    if not visitor_id or not active(surface):
        return arms[0]
    total = sum(arm.share for arm in arms)
    digest = hashlib.sha256(f"{surface}:{visitor_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * total
    for arm in arms:
        point -= arm.share
        if point < 0:
            return arm
    return arms[-1]
