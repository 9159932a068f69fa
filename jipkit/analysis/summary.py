"""Summaries of per-series values that may leave a site, and histograms of voxel values.

A site's output checks round the floats of records to ``float_digits`` significant
digits (4 by default) and report every value they change; a notebook that rounds its
results the same way first (:func:`round_sig`) comes through without a report.  The
statistics here report no minimum or maximum, and each carries the ``n`` it was
computed from, so that the site's k-suppression can act on it.  Quartiles are order
statistics: like any median, one may equal a single observation's value (rounded, and
tied to no patient or series); a site that must not release even that sets its policy
to hold such results for a steward, or a notebook leaves them out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["DIGITS", "Summary", "describe", "histogram", "round_sig"]

#: Significant digits kept, as the default site policy's ``float_digits``.
DIGITS: Final = 4


def round_sig(x: float, digits: int = DIGITS) -> float:
    """``x`` with ``digits`` significant digits, as the site's output checks round it.

    Examples
    --------
    >>> round_sig(4712.5731)
    4713.0
    >>> round_sig(0.0123456)
    0.01235
    """
    x = float(x)
    if not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{digits}g}")


@dataclass(frozen=True)
class Summary:
    """The distribution of some per-series values (rounded to :data:`DIGITS` digits).

    Attributes
    ----------
    n : int
        How many values.
    mean, sd : float
        Mean and sample standard deviation (sd NaN for fewer than two values).
    q25, median, q75 : float
        Quartiles (linear interpolation between order statistics).
    """

    n: int
    mean: float
    sd: float
    q25: float
    median: float
    q75: float

    def quartiles(self) -> dict[str, float]:
        """``{"q25": ..., "median": ..., "q75": ...}``."""
        return {"q25": self.q25, "median": self.median, "q75": self.q75}


def describe(values: Iterable[float], digits: int = DIGITS) -> Summary:
    """Summarise ``values`` (NaNs left out).

    Raises
    ------
    ValueError
        No finite value.
    """
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("Nothing to summarise: no finite value.")
    q25, median, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    sd = float(np.std(v, ddof=1)) if v.size > 1 else math.nan
    return Summary(
        n=int(v.size),
        mean=round_sig(float(v.mean()), digits),
        sd=round_sig(sd, digits),
        q25=round_sig(float(q25), digits),
        median=round_sig(float(median), digits),
        q75=round_sig(float(q75), digits),
    )


def histogram(values: npt.ArrayLike | Any, edges: Sequence[float]) -> npt.NDArray[np.int64]:
    """Counts of ``values`` in the bins ``[edges[i], edges[i+1])``; values beyond the edges
    count in the first or the last bin.

    Parameters
    ----------
    values : array-like or torch.Tensor
        Any shape (a torch tensor is counted on its own device).
    edges : sequence of float
        Increasing bin edges (at least two).

    Returns
    -------
    numpy.ndarray
        ``int64`` counts, one per bin.
    """
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not np.all(np.diff(e) > 0):
        raise ValueError("Expected at least two increasing bin edges.")
    if type(values).__module__.startswith("torch"):
        return _tensor_counts(values, e)
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    index = np.searchsorted(e[1:-1], flat, side="right")
    return np.bincount(index, minlength=e.size - 1).astype(np.int64)


def _tensor_counts(values: Any, edges: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """:func:`histogram` of a torch tensor, on its device."""
    import torch

    flat = values.reshape(-1)
    inner = torch.as_tensor(edges[1:-1], dtype=torch.float32, device=flat.device)
    index = torch.bucketize(flat.to(torch.float32), inner, right=True)
    counts: npt.NDArray[np.int64] = torch.bincount(index, minlength=edges.size - 1).cpu().numpy()
    return counts.astype(np.int64)
