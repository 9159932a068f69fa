"""`jip demo`: the main job.

Until the federation exists, the demo is one site end to end: generate a synthetic
archive, index it, run a cohort query, load a series and check it against the ground
truth the generator recorded.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["run_demo"]


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; return the exit status."""
    from jipkit.data import synth
    from jipkit.data.site import connect

    with tempfile.TemporaryDirectory(prefix="jip-demo-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        archive = work / "archive"
        shape = (300, 512, 512) if args.full else (48, 96, 96)
        _say(f"1. Writing a synthetic archive of {args.patients} patients to {archive} (CT {shape}) ...")
        t = time.perf_counter()
        manifest = synth.generate_archive(archive, n_patients=args.patients, seed=0, ct_shape=shape)
        _say(f"   {len(manifest)} series in {time.perf_counter() - t:.1f} s")

        site = connect(None, name="demo", index_path=work / "index.sqlite", cache_dir=work / "cache")
        _say(f"2. Indexing it into {site.config.index_path} ...")
        report = site.index_paths([archive], progress=False)
        _say(f"   {report}")

        _say("3. Cohort query: CT chest series from 2018 on with at least 40 slices")
        cohort = site.find_series(
            Modality="CT", BodyPartExamined="CHEST", StudyDate="2018-", NumberOfSeriesRelatedInstances="40-"
        )
        with pd.option_context("display.width", 160, "display.max_columns", 10):
            _say(
                cohort[
                    [
                        "PatientID",
                        "PatientName",
                        "StudyDate",
                        "SeriesDescription",
                        "NumberOfSeriesRelatedInstances",
                    ]
                ].to_string(index=False)
            )
        overview = site.find_series()
        overview["year"] = overview.StudyDate.str[:4]
        _say("   series by modality and year:")
        _say(overview.groupby(["Modality", "year"]).size().unstack(fill_value=0).to_string())

        if cohort.empty:
            _say("   (no series matched)")
            return 1
        uid = cohort.SeriesInstanceUID.iloc[0]
        _say(f"4. Loading series {uid} ...")
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vol = site.load_series(uid)
        _say(f"   {vol} in {time.perf_counter() - t:.2f} s")
        truth = pd.read_csv(archive / "ground_truth.csv", dtype=str).set_index("SeriesInstanceUID")
        if uid in truth.index:
            lung = (vol.array < -500) & (vol.array > -950)
            voxel_ml = float(np.prod(vol.spacing)) / 1000.0
            est = float(lung.sum()) * voxel_ml
            true = float(truth.loc[uid, "lung_total_ml"])
            _say(f"   lung volume by thresholding: {est:.0f} ml (ground truth {true:.0f} ml)")
        _say("Done.")
    return 0
