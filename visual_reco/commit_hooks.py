"""Work collected over one transaction and done once, when it commits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import connections, transaction

logger = logging.getLogger("visual_reco")


class OnCommit:
    """A callable registered with ``on_commit`` once per transaction; ``ran`` once called.

    What it does after the commit is a follow-up (queueing, cache invalidation) whose failure
    must not turn a saved row into an error for the caller: failures are logged, and the
    sweep and the cache timeout make up for them.
    """

    ran = False

    def __call__(self) -> None:
        self.ran = True
        try:
            self.run()
        except Exception:
            logger.exception("visual_reco: %s failed after the commit; the data is saved",
                             type(self).__name__)

    def run(self) -> None:
        """The work, with everything the transaction added."""
        raise NotImplementedError


Hook = TypeVar("Hook", bound=OnCommit)


def add_on_commit(using: str, name: str, make: Callable[[], Hook],
                  add: Callable[[Hook], Any]) -> None:
    """Give ``add`` the hook the current transaction registered under ``name``, or a new one
    from ``make``, registered with ``on_commit`` (which runs it at once outside a
    transaction). A hook whose transaction rolled back was dropped by Django: a new one
    replaces it.
    """
    connection = connections[using]
    hook = getattr(connection, name, None)
    if (hook is not None and not hook.ran
            and any(entry[1] is hook for entry in connection.run_on_commit)):
        add(hook)
        return
    hook = make()
    add(hook)
    setattr(connection, name, hook)
    transaction.on_commit(hook, using=using, robust=True)
