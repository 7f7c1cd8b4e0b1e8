"""A progress bar over `visual_reco.jobs.wait_until_done`, shared by the management commands."""

from typing import Any

from tqdm import tqdm

from visual_reco.jobs import wait_until_done


def wait_with_progress(model: Any, pks: list[Any], timeout: float, *,
                       field: str | None = None) -> bool:
    """Show how many of ``pks`` the workers have finished; True when all are done in time."""
    with tqdm(total=len(pks), desc=f"Embedding {model._meta.verbose_name_plural}",
              unit="img") as bar:
        return wait_until_done(model, pks, field=field, timeout=timeout,
                               progress=lambda done, total: bar.update(done - bar.n))
