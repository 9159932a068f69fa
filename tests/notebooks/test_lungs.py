"""The lung segmentation the lung volume notebook runs, against the synthetic ground truth.

Tolerance (also stated in the notebook and the README): every CT series of the
archive, loaded as a notebook loads it, gives total, left and right lung volumes and a
body volume within 2 % of ``ground_truth.csv`` (the phantom's label counts times the
voxel volume).  The phantoms have no partial volume, so the masks are in fact exact;
the 2 % leave room for real-world scanners, not for the phantoms.
"""

from __future__ import annotations

import collections
import math

import numpy as np
import pandas as pd
import pytest
import torch

from jipkit.analysis.lungs import (
    body_mask,
    lung_mask,
    lung_volume_ml,
    measure_lungs,
    outside_air,
    pick_device,
    to_tensor,
)
from jipkit.analysis.summary import describe, histogram, round_sig
from jipkit.data.synth import CT_LABELS, phantom_ct, phantom_ct_labels
from tests.notebooks.conftest import TOLERANCE, Archive

CUDA = torch.cuda.is_available()


def _reference_outside(air: np.ndarray) -> np.ndarray:
    """Flood fill from each slice's edges, voxel by voxel (4-connected): the plain algorithm."""
    out = np.zeros_like(air)
    nz, ny, nx = air.shape
    for z in range(nz):
        queue = collections.deque(
            (y, x)
            for y in range(ny)
            for x in range(nx)
            if (y in (0, ny - 1) or x in (0, nx - 1)) and air[z, y, x]
        )
        for y, x in queue:
            out[z, y, x] = True
        while queue:
            y, x = queue.popleft()
            for v, u in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= v < ny and 0 <= u < nx and air[z, v, u] and not out[z, v, u]:
                    out[z, v, u] = True
                    queue.append((v, u))
    return out


@pytest.mark.parametrize("density", [0.45, 0.55, 0.62])
def test_the_flood_fill_equals_a_plain_one_on_mazes(density: float) -> None:
    # random air at about the percolation threshold: winding, branching regions that need
    # many alternating row and column passes
    rng = np.random.default_rng(int(density * 100))
    air = rng.random((6, 40, 33)) < density
    got = outside_air(torch.from_numpy(air), slab_voxels=2 * 40 * 33).numpy()
    want = _reference_outside(air)
    assert want.any() and (air & ~want).any()  # both outside and enclosed air occur
    assert np.array_equal(got, want)


def test_the_flood_fill_follows_a_spiral() -> None:
    # a corridor that turns many times: the passes must repeat until nothing changes
    air = np.zeros((1, 21, 21), dtype=bool)
    air[0, 1:-1, 1:-1] = True
    for k, r in enumerate(range(2, 10, 2)):
        air[0, r, r : 21 - r] = False
        air[0, 21 - r - 1, r : 21 - r] = False
        air[0, r : 21 - r, r] = False
        air[0, r : 21 - r, 21 - r - 1] = False
        gap = r + 1 if k % 2 == 0 else 21 - r - 2
        air[0, r, gap] = True  # a door in each wall, alternating sides
    air[0, 0, 10] = True  # the way in from the edge
    assert np.array_equal(outside_air(torch.from_numpy(air)).numpy(), _reference_outside(air))


def test_the_phantom_lungs_are_exact_even_cut_by_the_last_slice() -> None:
    shape, spacing = (40, 64, 64), (2.5, 5.625, 5.625)
    hu, _ = phantom_ct(shape, spacing, seed=11)
    labels = phantom_ct_labels(shape, spacing, seed=11)
    lungs = np.isin(labels, [CT_LABELS["lung_left"], CT_LABELS["lung_right"]])
    top = int(np.nonzero(lungs.any(axis=(1, 2)))[0].mean())  # cut through the lungs' middle
    mask = lung_mask(to_tensor(hu[:top]))
    assert lungs[top - 1].any()  # the last slice kept holds lung, touching the volume's end
    assert np.array_equal(mask.numpy(), lungs[:top])
    assert lung_volume_ml(mask, spacing) == pytest.approx(lungs[:top].sum() * math.prod(spacing) / 1000)
    body = body_mask(to_tensor(hu[:top]), -500).numpy()
    assert np.array_equal(body, labels[:top] != CT_LABELS["air"])


def test_unsigned_voxels_are_measured_as_signed_ones() -> None:
    """Stored values as uint16 (HU + 1024, as many scanners write them): same lungs."""
    shape, spacing = (8, 48, 48), (2.5, 7.5, 7.5)
    hu, truth = phantom_ct(shape, spacing, seed=5)
    stored = (hu.astype(np.int32) + 1024).astype(np.uint16)
    assert to_tensor(stored).dtype == torch.int32
    found = measure_lungs(stored.astype(np.int32) - 1024, spacing).total_ml
    assert measure_lungs(stored, spacing, threshold_hu=-400 + 1024).total_ml == pytest.approx(found)
    assert found == pytest.approx(truth["lung_total_ml"])


def test_air_outside_the_body_is_not_lung() -> None:
    hu = np.full((4, 32, 32), -1000, dtype=np.int16)
    assert not lung_mask(to_tensor(hu)).any()
    hu[:, 4:28, 4:28] = 40  # a body, with an air pocket inside and a notch open to the outside
    hu[:, 10:14, 10:14] = -900
    hu[:, 16:20, 4:12] = -900
    mask = lung_mask(to_tensor(hu)).numpy()
    assert mask.sum() == 4 * 16 and mask[:, 10:14, 10:14].all()


def test_left_and_right_follow_the_orientation() -> None:
    spacing = (5.0, 7.5, 7.5)
    hu, truth = phantom_ct((16, 48, 48), spacing, seed=4)
    assert truth["lung_left_ml"] != pytest.approx(truth["lung_right_ml"], rel=0.01)
    plain = measure_lungs(hu, spacing, device="cpu")
    assert plain.left_ml == pytest.approx(truth["lung_left_ml"])
    assert plain.right_ml == pytest.approx(truth["lung_right_ml"])
    # the same voxels with the columns running to the patient's right: the sides swap back
    flipped = measure_lungs(hu[:, :, ::-1], spacing, direction=np.diag([-1.0, 1.0, 1.0]), device="cpu")
    assert flipped.left_ml == pytest.approx(truth["lung_left_ml"])
    assert flipped.right_ml == pytest.approx(truth["lung_right_ml"])
    sagittal = measure_lungs(hu, spacing, direction=[[0, 0, 1], [1, 0, 0], [0, 1, 0]], device="cpu")
    assert math.isnan(sagittal.left_ml) and math.isnan(sagittal.right_ml)
    assert sagittal.total_ml == pytest.approx(truth["lung_total_ml"])


def test_every_ct_of_the_archive_within_tolerance(archive: Archive) -> None:
    site = archive.site()
    truth = archive.truth.set_index("SeriesInstanceUID")
    assert len(truth) >= 10 and truth.n_slices.nunique() == 2  # thin and thick reconstructions
    assert archive.manifest.feet_first.any()  # and some acquired feet first
    errors = []
    for uid, want in truth.iterrows():
        vol = site.load_series(str(uid))
        got = measure_lungs(vol.array, vol.spacing, direction=vol.direction, device="cpu")
        for ours, theirs in (
            (got.total_ml, want.lung_total_ml),
            (got.left_ml, want.lung_left_ml),
            (got.right_ml, want.lung_right_ml),
            (got.body_ml, want.body_ml),
        ):
            errors.append(abs(ours - theirs) / theirs)
    assert max(errors) < TOLERANCE, max(errors)


@pytest.mark.skipif(not CUDA, reason="no CUDA device here")
def test_cuda_gives_the_cpu_masks() -> None:
    hu, _ = phantom_ct((48, 96, 96), (2.5, 3.75, 3.75), seed=2)
    cpu = lung_mask(to_tensor(hu, "cpu"))
    gpu = lung_mask(to_tensor(hu, "cuda"))
    assert gpu.device.type == "cuda" and torch.equal(cpu, gpu.cpu())
    assert measure_lungs(hu, (2.5, 3.75, 3.75), device="auto").device == "cuda"


def test_devices() -> None:
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if CUDA else "cpu")
    if not CUDA:
        with pytest.raises(ValueError, match="no CUDA device"):
            pick_device("cuda")
    with pytest.raises(ValueError, match=r"\[z, y, x\]"):
        to_tensor(np.zeros((4, 4)))


def test_summaries_round_as_the_site_does() -> None:
    s = describe([1.0, 2.0, 3.0, 4.0, 1234.56789, math.nan])
    assert s.n == 5
    assert s.mean == round_sig(np.mean([1, 2, 3, 4, 1234.56789]))
    assert s.mean == 248.9 and s.median == 3.0 and s.q75 == 4.0
    assert s.sd == round_sig(float(pd.Series([1, 2, 3, 4, 1234.56789]).std()))
    assert math.isnan(describe([5.0]).sd)
    with pytest.raises(ValueError, match="no finite value"):
        describe([math.nan])


def test_histograms_count_in_the_end_bins_beyond_the_edges() -> None:
    values = np.array([-3000, -1000, -999, -1, 0, 99, 100, 5000], dtype=np.int16)
    edges = [-1000, 0, 100, 200]
    assert histogram(values, edges).tolist() == [4, 2, 2]
    assert histogram(torch.from_numpy(values), edges).tolist() == [4, 2, 2]
    with pytest.raises(ValueError, match="increasing"):
        histogram(values, [0, 0])
