"""``--set KEY=VALUE`` overrides of ``VISUAL_RECO`` for one evaluation, and the settings in
effect that a report records."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator, Sequence
from typing import Any

from django.test import override_settings

from visual_reco.conf import DEFAULTS, MERGED_DICTS, reco_settings


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``KEY=VALUE`` strings into a dict to merge into ``settings.VISUAL_RECO``.

    VALUE is parsed as JSON when it parses, else kept as a string. KEY is a top-level
    setting (``BATCH_SIZE``), a dotted path into a dict setting
    (``PREPROCESSING.RESIZE``, ``EMBEDDER.OPTIONS.input_size``), or a key of a merged dict
    setting given alone (``RESIZE`` means ``PREPROCESSING.RESIZE``). The returned values are
    complete top-level settings: nested keys are merged into the current value. Raises
    `ValueError` for a malformed pair or an unknown key.
    """
    current = reco_settings.user_settings
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, not {pair!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        parts = key.split(".")
        if parts[0] not in DEFAULTS:
            owners = [name for name in sorted(MERGED_DICTS) if parts[0] in DEFAULTS[name]]
            if not owners:
                raise ValueError(f"Unknown VISUAL_RECO setting {parts[0]!r}; known: "
                                 f"{', '.join(sorted(DEFAULTS))}.")
            parts = [owners[0], *parts]
        top = parts[0]
        if len(parts) == 1:
            overrides[top] = value
            continue
        if top not in overrides:
            base = current.get(top, DEFAULTS[top])
            if top in MERGED_DICTS:
                base = {**DEFAULTS[top], **base}
            overrides[top] = copy.deepcopy(base)
        target = overrides[top]
        for part in parts[1:-1]:
            if not isinstance(target, dict):
                raise ValueError(f"Cannot set {key!r}: {part!r} is not inside a dict.")
            target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ValueError(f"Cannot set {key!r}: its parent is not a dict.")
        if top in MERGED_DICTS and len(parts) == 2 and parts[1] not in DEFAULTS[top]:
            raise ValueError(f"Unknown {top} key {parts[1]!r}; known: "
                             f"{', '.join(sorted(DEFAULTS[top]))}.")
        target[parts[-1]] = value
    return overrides


@contextlib.contextmanager
def settings_overridden(overrides: dict[str, Any]) -> Iterator[None]:
    """Run the block with ``VISUAL_RECO`` updated by ``overrides`` (settings reload on entry
    and exit, so the embedder is rebuilt); does nothing when ``overrides`` is empty."""
    if not overrides:
        yield
        return
    with override_settings(VISUAL_RECO={**reco_settings.user_settings, **overrides}):
        yield


def effective_settings_diff() -> dict[str, Any]:
    """The ``VISUAL_RECO`` settings in effect that differ from the defaults.

    Dict settings whose keys merge with the defaults list only their differing keys.
    """
    diff: dict[str, Any] = {}
    for key, value in sorted(reco_settings.user_settings.items()):
        default = DEFAULTS.get(key)
        if key in MERGED_DICTS and isinstance(value, dict):
            changed = {k: v for k, v in value.items() if default.get(k, object()) != v}
            if changed:
                diff[key] = changed
        elif key not in DEFAULTS or value != default:
            diff[key] = value
    return diff
