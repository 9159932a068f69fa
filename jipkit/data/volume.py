"""`Volume`: voxels with their geometry in DICOM patient coordinates."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch
    from pydicom.dataset import Dataset

__all__ = ["GeometryWarning", "Volume"]


class GeometryWarning(UserWarning):
    """A series was loaded, but its geometry is irregular; the message says what was done."""


GeometryWarning.__module__ = "jipkit"


@dataclass(eq=False, repr=False)
class Volume:
    """A series' voxels and geometry.

    Coordinates are DICOM patient coordinates (LPS): +x towards the patient's Left,
    +y towards Posterior, +z towards Head (superior), in millimetres.

    Attributes
    ----------
    array : numpy.ndarray
        Voxels indexed ``[z, y, x]`` (slice, row, column), with RescaleSlope and
        RescaleIntercept applied: ``int16`` for CT in Hounsfield units when the slope is
        1 and the values fit, ``float32`` when rescaling needs it (also when rescale
        differs between slices), else the stored type.  Colour images have a trailing
        axis of 3 samples.
    spacing : tuple of float
        ``(z, y, x)`` voxel size in mm: slice distance along the slice normal, row
        spacing, column spacing (DICOM PixelSpacing is row, column).
    origin : numpy.ndarray
        Position (LPS, mm) of the centre of voxel ``[0, 0, 0]``: ImagePositionPatient
        of the first slice.
    direction : numpy.ndarray
        3x3 matrix whose columns are the unit vectors of the x (along a row, increasing
        column), y (down a column, increasing row) and z (slice normal, increasing
        slice) axes in LPS.  ``direction[:, :2]`` is ImageOrientationPatient.
    positions : numpy.ndarray
        ``(n_slices, 3)`` ImagePositionPatient of each slice, in array order.
    sop_instance_uids : list of str
        The instance of each slice (repeated for frames of one multi-frame instance).
    locations : list of str
        The file each slice was read from.
    series_instance_uid, study_instance_uid, modality : str
    notes : list of str
        What was irregular and what was done about it (also issued as warnings).
    """

    array: npt.NDArray[Any]
    spacing: tuple[float, float, float]
    origin: npt.NDArray[np.float64]
    direction: npt.NDArray[np.float64]
    positions: npt.NDArray[np.float64]
    sop_instance_uids: list[str]
    locations: list[str]
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    modality: str = ""
    notes: list[str] = field(default_factory=list)
    _slice_step: npt.NDArray[np.float64] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape, ``(z, y, x)``."""
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The array's dtype."""
        return self.array.dtype

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """4x4 matrix from voxel indices ``(x, y, z, 1)`` (column, row, slice) to LPS mm.

        Note the index order: the array is ``[z, y, x]``; the affine takes ``(x, y, z)``
        as ITK, NIfTI and nibabel do.  For a gantry-tilted series the third column is
        the true step between slice positions (not orthogonal to the first two), so
        every voxel maps to where it was acquired.
        """
        a = np.eye(4)
        a[:3, 0] = self.direction[:, 0] * self.spacing[2]
        a[:3, 1] = self.direction[:, 1] * self.spacing[1]
        step = self._slice_step if self._slice_step is not None else self.direction[:, 2] * self.spacing[0]
        a[:3, 2] = step
        a[:3, 3] = self.origin
        return a

    def index_to_lps(self, zyx: Sequence[float] | npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """LPS position (mm) of array index ``(z, y, x)``; accepts ``(n, 3)`` arrays."""
        idx = np.asarray(zyx, dtype=float)[..., ::-1]
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    @cached_property
    def headers(self) -> list[Dataset]:
        """The DICOM header (no pixel data) of each distinct instance, in slice order."""
        import pydicom

        seen: dict[str, Dataset] = {}
        for uid, loc in zip(self.sop_instance_uids, self.locations, strict=True):
            if uid not in seen:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    seen[uid] = pydicom.dcmread(loc, stop_before_pixels=True)
        return list(seen.values())

    def to_torch(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The voxels as a ``torch.Tensor`` ``[z, y, x]`` (shares memory on the CPU).

        Parameters
        ----------
        device : str or torch.device, optional
            For example ``"cuda"``.  Default: the CPU.
        dtype : torch.dtype, optional
            Convert to this type (for example ``torch.float32``).
        """
        import torch

        t = torch.from_numpy(np.ascontiguousarray(self.array))
        if dtype is not None or device is not None:
            t = t.to(device=device, dtype=dtype)
        return t

    def __repr__(self) -> str:
        z, y, x = self.spacing
        return (
            f"<Volume {self.modality or '?'} {'x'.join(map(str, self.shape))} {self.dtype} "
            f"spacing(z,y,x)=({z:.3g}, {y:.3g}, {x:.3g}) mm "
            f"origin=({', '.join(f'{v:.1f}' for v in self.origin)}) series={self.series_instance_uid}>"
        )
