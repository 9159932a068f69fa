"""Benchmark: the lung volume notebook's segmentation of one chest CT, CPU against CUDA.

``jipkit.analysis.lungs.measure_lungs`` (threshold, in-plane flood fill of the outside
air, lung and body volumes, left and right) on a phantom CT
(:func:`jipkit.data.synth.phantom_ct`) at the demo's size (96x96x48) and at full size
(512x512x300), from the voxels in memory (as a notebook holds them after
``load_series``) to the volumes: the copy to the device is included.  Baseline: torch on
the CPU, in the same run; against it, torch on the first CUDA device (where there is
one) and SimpleITK's slice-by-slice hole filling (the same masks, computed by ITK).
Every method must find the phantom's exact lung volume.

Run ``python -m tests.benchmarks --only lungs`` (``--quick``: tiny volumes).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from jipkit.analysis.lungs import DEFAULT_LUNG_THRESHOLD_HU, measure_lungs
from jipkit.data.synth import phantom_ct

from ._common import Context, Method, Row, Table, interleave, median, speedup

__all__ = ["run"]

CPU = "torch CPU measure_lungs"
CUDA = "torch CUDA measure_lungs"
ITK = "SimpleITK fill holes per slice"

try:
    import SimpleITK

    _sitk: Any = SimpleITK  # SimpleITK's wrappers are untyped
except ImportError:  # a GPU machine with torch alone: no ITK row
    _sitk = None


def _itk_lungs_ml(hu: npt.NDArray[np.int16], spacing: tuple[float, float, float]) -> float:
    """The lung volume by ITK: what is not air, its holes filled slice by slice, minus it."""
    air = hu < DEFAULT_LUNG_THRESHOLD_HU
    lungs = 0
    for plane in air:
        solid = _sitk.GetImageFromArray((~plane).astype(np.uint8))
        filled = _sitk.GetArrayFromImage(_sitk.BinaryFillhole(solid, fullyConnected=False))
        lungs += int(np.count_nonzero(filled.astype(bool) & plane))
    return lungs * math.prod(spacing) / 1000.0


def _table(shape: tuple[int, int, int], rounds: int, ctx: Context) -> Table:
    z, y, x = shape
    spacing = (2.5, 360.0 / y, 360.0 / x)
    ctx.say(f"a {x}x{y}x{z} phantom CT")
    hu, truth = phantom_ct(shape, spacing, seed=3)
    found: dict[str, float] = {}
    methods = [
        Method(CPU, lambda: found.__setitem__(CPU, measure_lungs(hu, spacing, device="cpu").total_ml)),
    ]
    if _sitk is not None:
        methods.append(Method(ITK, lambda: found.__setitem__(ITK, _itk_lungs_ml(hu, spacing))))
    if torch.cuda.is_available():
        methods.append(
            Method(CUDA, lambda: found.__setitem__(CUDA, measure_lungs(hu, spacing, device="cuda").total_ml))
        )
    ctx.say(f"{rounds} rounds of {len(methods)} methods ({torch.get_num_threads()} CPU threads for torch)")
    times = interleave(methods, rounds, warmup=True)
    table = Table(f"lungs: segment and measure one {x}x{y}x{z} CT ({rounds} rounds)")
    table.add(Row(CPU, median(times[CPU]), "s"))
    for name in (CUDA, ITK):
        if name in times:
            table.add(Row(name, median(times[name]), "s", speedup(times[name], times[CPU]), "torch CPU"))
    wrong = {
        k: v for k, v in found.items() if abs(v - truth["lung_total_ml"]) > 1e-6 * truth["lung_total_ml"]
    }
    if wrong:
        raise AssertionError(
            f"lung volumes differ from the phantom's {truth['lung_total_ml']:.3f} ml: {wrong}"
        )
    table.notes.append(
        f"{x * y * z:,} voxels (int16 HU in memory); every method found the phantom's "
        f"{truth['lung_total_ml']:.1f} ml of lung exactly; CUDA includes the copy to the device "
        + ("" if CUDA in times else "(no CUDA device here: not measured)")
    )
    if CUDA in times:
        table.notes[-1] += f"({torch.cuda.get_device_name(0)})"
    return table


def run(ctx: Context) -> list[Table]:
    """Time the segmentation at the demo's size and at full size."""
    return [_table(shape, ctx.sizes.lungs_rounds, ctx) for shape in ctx.sizes.lungs_shapes]
