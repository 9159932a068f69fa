"""A torch ``Dataset`` over a cohort of series (needs the ``torch`` extra)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch.utils.data import Dataset

from jipkit.data.volume import Volume

if TYPE_CHECKING:
    from jipkit.data.site import Site

__all__ = ["SeriesDataset"]


class SeriesDataset(Dataset[dict[str, Any]]):
    """One item per series of a cohort: its voxels as a tensor, with geometry.

    Parameters
    ----------
    site : Site
    series : pandas.DataFrame
        A :meth:`Site.find_series` result (or any frame with a SeriesInstanceUID column).
    transform : callable, optional
        Applied to each :class:`Volume`; returns what goes into ``item["image"]``.
        Default: the voxels as a ``float32`` tensor ``[1, z, y, x]``.

    Notes
    -----
    Items are loaded when asked for, so a ``DataLoader`` with ``num_workers > 0``
    loads series in parallel processes.  Volumes differ in size: use ``batch_size=1``
    or a ``transform`` that resamples to a common shape.

    Examples
    --------
    >>> ds = SeriesDataset(site, site.find_series(Modality="CT"))  # doctest: +SKIP
    >>> item = ds[0]; item["image"].shape, item["spacing"]           # doctest: +SKIP
    """

    def __init__(
        self,
        site: Site,
        series: pd.DataFrame,
        transform: Callable[[Volume], Any] | None = None,
    ):
        self.site = site
        self.uids = list(series["SeriesInstanceUID"])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.uids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        vol = self.site.load_series(self.uids[i])
        image = (
            self.transform(vol)
            if self.transform
            else torch.from_numpy(vol.array.astype("float32", copy=False))[None]
        )
        return {
            "image": image,
            "SeriesInstanceUID": vol.series_instance_uid,
            "spacing": torch.tensor(vol.spacing, dtype=torch.float64),
            "affine": torch.from_numpy(vol.affine),
        }
