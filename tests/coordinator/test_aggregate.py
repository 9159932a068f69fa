"""Aggregation helpers against figures computed by hand from the raw data split across sites."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from jipkit.coordinator.aggregate import (
    combine,
    pooled_count,
    pooled_sd,
    pooled_variance,
    records_frame,
    records_long,
    weighted_mean,
)
from tests.coordinator._helpers import count, measure

# Raw observations at three sites, small enough to check by hand.
RAW = {"a": [1.0, 2.0, 3.0], "b": [10.0, 12.0], "c": [4.0, 4.0, 5.0, 7.0]}


def _summaries(
    raw: dict[str, list[float]], ddof: int = 1
) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    means = {k: float(np.mean(v)) for k, v in raw.items()}
    sds = {k: float(np.std(v, ddof=ddof)) for k, v in raw.items()}
    ns = {k: len(v) for k, v in raw.items()}
    return means, sds, ns


def test_pooled_figures_equal_those_of_the_raw_data() -> None:
    means, sds, ns = _summaries(RAW)
    everything = [x for v in RAW.values() for x in v]
    # By hand: 9 values summing to 48, mean 16/3; squares sum to 364.
    assert sum(everything) == 48 and sum(x * x for x in everything) == 364
    by_hand_var = (364 - 9 * (16 / 3) ** 2) / 8
    wm = weighted_mean(means, ns)
    assert wm.mean == pytest.approx(16 / 3)
    assert (wm.n, wm.sites, wm.missing) == (9, 3, 0)
    pv = pooled_variance(means, sds, ns)
    assert pv.mean == pytest.approx(16 / 3)
    assert pv.variance == pytest.approx(by_hand_var)
    assert pv.variance == pytest.approx(np.var(everything, ddof=1))
    assert pv.sd == pytest.approx(np.std(everything, ddof=1))
    assert pooled_sd(means, sds, ns) == pytest.approx(pv.sd)
    # Without the between-site term the answer would be far smaller: the formula needs it.
    within_only = sum((ns[k] - 1) * sds[k] ** 2 for k in RAW) / 8
    assert within_only < 0.5 * pv.variance


def test_population_ddof_zero() -> None:
    means, sds, ns = _summaries(RAW, ddof=0)
    everything = [x for v in RAW.values() for x in v]
    assert pooled_variance(means, sds, ns, ddof=0).variance == pytest.approx(np.var(everything))


def test_random_split_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    data = rng.gamma(2.0, 300.0, size=1000)
    cuts = np.sort(rng.choice(np.arange(5, 995), size=6, replace=False))
    parts = {f"site{i}": p for i, p in enumerate(np.split(data, cuts))}
    means = {k: p.mean() for k, p in parts.items()}
    sds = {k: p.std(ddof=1) for k, p in parts.items()}
    ns = {k: len(p) for k, p in parts.items()}
    pv = pooled_variance(pd.Series(means), pd.Series(sds), pd.Series(ns))
    assert pv.mean == pytest.approx(data.mean(), rel=1e-12)
    assert pv.variance == pytest.approx(data.var(ddof=1), rel=1e-12)


def test_suppressed_is_missing_never_zero() -> None:
    pc = pooled_count({"a": 12, "b": None, "c": 30, "d": float("nan")})
    assert (pc.total, pc.sites, pc.missing, pc.missing_sites) == (42, 2, 2, ("b", "d"))
    assert pooled_count({"a": None}).total is None
    means, sds, ns = _summaries(RAW)
    wm = weighted_mean({**means, "b": None}, ns)
    assert wm.mean == pytest.approx((6 + 20) / 7) and wm.n == 7 and wm.missing_sites == ("b",)
    pv = pooled_variance(means, {**sds, "c": None}, ns)
    assert pv.n == 5 and pv.missing_sites == ("c",)
    assert pv.variance == pytest.approx(np.var(RAW["a"] + RAW["b"], ddof=1))
    assert math.isnan(weighted_mean({"a": None}, {"a": 3}).mean)


def test_records_frame_is_site_by_record_with_nan_for_suppressed() -> None:
    records = {
        "a": [
            count("ct_series", 5),
            measure("vol", 2.0, 3, 1.0),
            {"schema": "jip.record/1", "name": "note", "kind": "text", "value": "ok"},
        ],
        "b": [{**count("ct_series", None)}, measure("vol", 11.0, 2, 1.4)],
        "c": None,  # no result
    }
    frame = records_frame(records)
    assert list(frame.index) == ["a", "b", "c"] and frame.index.name == "site"
    assert list(frame.columns) == ["ct_series", "vol", "note"]
    assert frame.loc["a", "ct_series"] == 5.0
    assert frame["ct_series"].isna().tolist() == [False, True, True]
    assert frame["vol"].isna().tolist() == [False, False, True]
    assert (
        frame["ct_series"].dtype == float
        and frame.loc["a", "note"] == "ok"
        and frame.loc["b", "note"] is None
    )
    assert pooled_count(frame["ct_series"]).missing == 2
    long = records_long(records)
    assert len(long) == 5 and bool(long[long["site"] == "b"]["suppressed"].iloc[0]) is True


def test_combine_pools_by_kind() -> None:
    means, sds, ns = _summaries(RAW)
    records = {k: [count("n_ct", i + 1), measure("vol", means[k], ns[k], sds[k])] for i, k in enumerate(RAW)}
    records["d"] = [count("n_ct", None)]
    out = {c["name"]: c for c in combine(records)}
    assert out["n_ct"]["pooled"] == {"total": 6}
    assert (out["n_ct"]["sites"], out["n_ct"]["missing_sites"]) == (3, ["d"])
    vol = out["vol"]["pooled"]
    everything = [x for v in RAW.values() for x in v]
    assert vol["mean"] == pytest.approx(16 / 3) and vol["n"] == 9
    assert vol["sd"] == pytest.approx(np.std(everything, ddof=1))
    assert out["vol"]["unit"] == "ml" and out["vol"]["missing_sites"] == ["d"]
