"""A synthetic cohort of many small instances, and the name and value pools it draws from.

The cohort is written with :func:`jipkit.data.synth.write_series` (real DICOM files,
tiny images); the same pools feed the rows synthesised straight into an index by the
query benchmark, so both look alike: German and international names (with umlauts),
studies from 2010 to 2024, CT and MR series whose sizes range from single localizers to
thin-slice volumes.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

__all__ = ["FAMILY", "GIVEN", "SeriesSpec", "instance_count", "plan_cohort", "write_cohort"]

FAMILY = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz",
    "Hoffmann", "Koch", "Richter", "Klein", "Wolf", "Schröder", "Neumann", "Schwarz", "Zimmermann",
    "Braun", "Krüger", "Hartmann", "Lange", "Werner", "Krause", "Lehmann", "Köhler", "Herrmann",
    "König", "Walter", "Huber", "Kaiser", "Fuchs", "Peters", "Möller", "Weiß", "Jung", "Hahn",
    "Vogel", "Keller", "Günther", "Yılmaz", "Kaya", "Nowak", "Kowalski", "Rossi", "García",
    "Nguyen", "Dupont", "O'Brien", "Öztürk",
)  # fmt: skip
GIVEN = (
    "Anna", "Maria", "Jürgen", "Peter", "Thomas", "Sabine", "Andreas", "Monika", "Stefan",
    "Ursula", "Michael", "Petra", "Klaus", "Renate", "Wolfgang", "Karin", "Frank", "Birgit",
    "Jörg", "Heike", "Ahmet", "Ayşe", "Mehmet", "Zeynep", "Łukasz", "José", "Chloé", "Sören",
)  # fmt: skip
_STEMS = (
    "Berg", "Stein", "Wald", "Linden", "Rosen", "Fried", "Hohen", "Kirch", "Brunn", "Eich", "Feld",
    "Sonnen", "Ober", "Unter", "Neu", "Alt", "Groß", "Mühl", "Hütten", "Röder",
)  # fmt: skip
_ENDINGS = (
    "mann", "hauer", "berger", "huber", "meier", "ling", "bach", "feld", "hoff", "stätter", "er",
    "inger", "schmidt", "wald", "brink",
)  # fmt: skip
#: Every family name: the common ones first, then 300 rarer composed ones.
_ALL_FAMILY = FAMILY + tuple(a + b for a in _STEMS for b in _ENDINGS)
_COMMON_SHARE = 0.25
_SINCE = dt.date(2010, 1, 1)
_DAYS = (dt.date(2024, 12, 31) - _SINCE).days


def instance_count(rng: np.random.Generator) -> int:
    """Instances in one series: localizers and key images, short series, thin-slice volumes."""
    kind = rng.random()
    if kind < 0.40:
        return int(rng.integers(1, 6))
    if kind < 0.75:
        return int(rng.integers(20, 61))
    return int(rng.integers(100, 161))


def _family_weights() -> np.ndarray:
    common = 1.0 / np.sqrt(np.arange(1, len(FAMILY) + 1))
    common *= _COMMON_SHARE / common.sum()
    rare = np.full(len(_ALL_FAMILY) - len(FAMILY), (1 - _COMMON_SHARE) / (len(_ALL_FAMILY) - len(FAMILY)))
    return np.concatenate([common, rare])


_FAMILY_P = _family_weights()


def pick_name(rng: np.random.Generator) -> str:
    """A person name; a quarter of family names are common ones (Müller, about 2%, first)."""
    family = _ALL_FAMILY[int(rng.choice(len(_ALL_FAMILY), p=_FAMILY_P))]
    return f"{family}^{GIVEN[int(rng.integers(len(GIVEN)))]}"


def study_date(rng: np.random.Generator) -> str:
    """A study date between 2010 and 2024, as DICOM DA."""
    return (_SINCE + dt.timedelta(days=int(rng.integers(0, _DAYS + 1)))).strftime("%Y%m%d")


@dataclass(frozen=True)
class SeriesSpec:
    """One series of the cohort: who, when, what, how many instances."""

    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str
    series_number: int
    modality: str
    n: int

    def kwargs(self, dest: Path, image: int, seed: int) -> dict[str, Any]:
        """Arguments of :func:`jipkit.data.synth.write_series` for this series."""
        return {
            "dest": dest,
            "shape": (self.n, image, image),
            "modality": self.modality,
            "patient": {"PatientID": self.patient_id, "PatientName": self.patient_name},
            "study": {"StudyDate": self.study_date, "StudyDescription": f"{self.modality} research"},
            "series": {
                "SeriesNumber": self.series_number,
                "SeriesDescription": f"series {self.series_number}",
            },
            "study_uid": self.study_uid,
            "seed": seed,
        }


def _specs(seed: int) -> Iterator[SeriesSpec]:
    rng = np.random.default_rng([seed, 2024])
    for p in range(10**9):
        pid = f"BENCH{seed:02d}{p:06d}"
        name = pick_name(rng)
        for s in range(int(rng.integers(1, 4))):
            study_uid = generate_uid(entropy_srcs=[f"bench-study-{seed}-{p}-{s}"])
            date = study_date(rng)
            modality = "CT" if rng.random() < 0.6 else "MR"
            for number in range(1, int(rng.integers(2, 5)) + 1):
                yield SeriesSpec(pid, name, study_uid, date, number, modality, instance_count(rng))


def plan_cohort(n_instances: int, seed: int = 0) -> list[SeriesSpec]:
    """Series adding up to exactly ``n_instances`` instances."""
    out: list[SeriesSpec] = []
    total = 0
    for spec in _specs(seed):
        n = min(spec.n, n_instances - total)
        out.append(SeriesSpec(**{**spec.__dict__, "n": n}))
        total += n
        if total >= n_instances:
            return out
    raise AssertionError("unreachable")


def _write(kwargs: dict[str, Any]) -> int:
    from jipkit.data.synth import write_series

    return len(write_series(**kwargs).paths)


def write_cohort(
    dest: Path, specs: Sequence[SeriesSpec], *, image: int = 16, seed: int = 0, workers: int = 2
) -> int:
    """Write ``specs`` under ``dest`` (hashed, shuffled file names); return the file count."""
    jobs = [spec.kwargs(dest, image, seed * 100_003 + i) for i, spec in enumerate(specs)]
    if workers <= 1:
        return sum(_write(job) for job in jobs)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver")) as pool:
        return sum(pool.map(_write, jobs, chunksize=8))
