"""k-suppression, secondary suppression, rounding of counts, measures and tables."""

from __future__ import annotations

from typing import Any

import pytest

from jipkit.site.disclosure.counts import protect, round_count, round_significant
from jipkit.site.disclosure.policy import OutputPolicy

P = OutputPolicy()


def rec(name: str, value: Any, kind: str = "count", **kw: Any) -> dict[str, Any]:
    return {"schema": "jip.record/1", "name": name, "kind": kind, "value": value, **kw}


def table(rows: list[list[Any]], columns: list[str], **kw: Any) -> dict[str, Any]:
    kw.setdefault("of", "series")
    kw.setdefault("count_columns", [columns[-1]])
    return rec("t", {"columns": columns, "rows": rows}, "table", **kw)


def rules(changes: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in changes:
        out[c.rule] = out.get(c.rule, 0) + c.count
    return out


@pytest.mark.parametrize(("value", "suppressed"), [(0, False), (1, True), (4, True), (5, False), (12, False)])
def test_counts_below_k_are_suppressed(value: int, suppressed: bool) -> None:
    (out,), changes = protect([rec("patients", value, of="patients")], P)
    assert out is not None
    assert (out["value"] is None, out.get("suppressed", False)) == (suppressed, suppressed)
    assert ("k_suppression" in rules(changes)) is suppressed


def test_k_and_zero_follow_the_policy() -> None:
    strict = OutputPolicy(min_count=11, suppress_zero_counts=True)
    values = [rec("a", v, of="studies") for v in (0, 10, 11)]
    out, _ = protect(values, strict)
    assert [r["value"] if r else "-" for r in out] == [None, None, 11]


def test_counts_of_instances_are_not_suppressed() -> None:
    (out,), changes = protect([rec("instances", 3, of="instances")], P)
    assert out is not None and out["value"] == 3 and changes == []


def test_a_suppressed_part_is_not_recovered_from_its_total() -> None:
    records = [
        rec("series", 50, of="series"),
        rec("series_CT", 47, of="series"),
        rec("series_MR", 3, of="series"),
        rec("patients", 14, of="patients"),
    ]
    out, changes = protect(records, P)
    values = {r["name"]: r["value"] for r in out if r}
    assert values == {"series": 50, "series_CT": None, "series_MR": None, "patients": 14}
    assert rules(changes) == {"k_suppression": 1, "secondary_suppression": 1}


def test_the_smallest_other_part_is_suppressed_second() -> None:
    parts = {"n.a": 30, "n.b": 2, "n.c": 9, "n.d": 40}
    records = [rec("n", sum(parts.values()), of="patients")] + [
        rec(k, v, of="patients") for k, v in parts.items()
    ]
    out, _ = protect(records, P)
    assert {r["name"]: r["value"] for r in out if r} == {
        "n": 81,
        "n.a": 30,
        "n.b": None,
        "n.c": None,
        "n.d": 40,
    }


def test_parts_that_do_not_add_up_to_the_total_are_not_a_family() -> None:
    records = [
        rec("series", 60, of="series"),
        rec("series_CT", 47, of="series"),
        rec("series_MR", 3, of="series"),
    ]
    out, _ = protect(records, P)
    assert [r["value"] for r in out if r] == [60, 47, None]


def test_grandchildren_belong_to_their_own_family() -> None:
    records = [
        rec("s", 100, of="series"),
        rec("s_CT", 60, of="series"),
        rec("s_MR", 40, of="series"),
        rec("s_CT_chest", 57, of="series"),
        rec("s_CT_head", 3, of="series"),
    ]
    out, _ = protect(records, P)
    assert {r["name"]: r["value"] for r in out if r} == {
        "s": 100,
        "s_CT": 60,
        "s_MR": 40,
        "s_CT_chest": None,
        "s_CT_head": None,
    }


def test_a_table_cell_below_k_gets_a_second_suppressed_cell_in_every_group() -> None:
    rows = [
        ["CT", "CHEST", 40],
        ["CT", "HEAD", 3],
        ["CT", "ABDOMEN", 25],
        ["MR", "CHEST", 30],
        ["MR", "HEAD", 50],
        ["MR", "ABDOMEN", 60],
    ]
    (out,), changes = protect([table(rows, ["Modality", "BodyPart", "series"])], P)
    assert out is not None
    got = {(r[0], r[1]): r[2] for r in out["value"]["rows"]}
    hidden = {k for k, v in got.items() if v is None}
    assert ("CT", "HEAD") in hidden
    for key in (0, 1):  # every modality and every body part: none or at least two hidden
        for value in {k[key] for k in got}:
            n = sum(1 for k in hidden if k[key] == value)
            assert n != 1, (key, value, hidden)
    assert len(hidden) >= 2 and rules(changes)["k_suppression"] == 1
    assert rules(changes)["secondary_suppression"] == len(hidden) - 1


def test_measures_in_a_row_with_a_small_count_are_suppressed() -> None:
    rows = [["CT", 40, 4712.5731], ["MR", 3, 3000.25], ["PT", 20, 1.0]]
    (out,), changes = protect([table(rows, ["Modality", "n", "volume_mean"], count_columns=["n"])], P)
    assert out is not None
    assert out["value"]["rows"][1] == ["MR", None, None]
    assert out["value"]["rows"][0][2] == 4713.0  # 4 significant digits
    assert rules(changes)["measure_small_n"] == 1


def test_a_table_whose_rows_do_not_match_its_columns_is_removed() -> None:
    (out,), changes = protect([table([["CT", 1, 2]], ["Modality", "n"])], P)
    assert out is None and rules(changes) == {"record_invalid": 1}


def test_values_that_are_not_counts_in_count_columns_become_null() -> None:
    (out,), changes = protect([table([["CT", "many"], ["MR", 12.0]], ["Modality", "n"])], P)
    assert out is not None and out["value"]["rows"] == [["CT", None], ["MR", 12]]
    assert rules(changes) == {"count_not_integer": 1}


@pytest.mark.parametrize(
    ("n", "value", "expected"),
    [(40, 4712.5731, 4713.0), (4, 4712.5731, None), (None, 4712.5731, None)],
)
def test_measures_need_n_at_least_k(n: int | None, value: float, expected: float | None) -> None:
    (out,), _ = protect([rec("v", value, "measure", n=n, sd=80.123, unit="ml")], P)
    assert out is not None
    assert out["value"] == expected
    assert out.get("suppressed", False) is (expected is None)
    if expected is None:
        assert out["sd"] is None and out["n"] is None


def test_measures_without_n_may_leave_where_the_policy_allows() -> None:
    (out,), _ = protect([rec("runtime", 12.3456, "measure")], OutputPolicy(measures_need_n=False))
    assert out is not None and out["value"] == 12.35


def test_counts_are_rounded_when_the_policy_says_so() -> None:
    policy = OutputPolicy(count_rounding=5)
    out, changes = protect(
        [rec("a", 12, of="patients"), rec("b", 6, of="patients"), rec("c", 3, of="patients")], policy
    )
    assert [r["value"] for r in out if r] == [10, 5, None]
    assert rules(changes) == {"count_rounded": 2, "k_suppression": 1}


def test_rounding_helpers() -> None:
    assert round_count(12, 5) == 10 and round_count(13, 5) == 15 and round_count(2, 10) == 10
    assert round_count(0, 5) == 0 and round_count(7, None) == 7
    assert round_significant(0.000123456, 3) == 0.000123 and round_significant(123456.0, 2) == 120000.0
    assert round_significant(float("inf"), 2) == float("inf")


def test_protect_does_not_modify_its_input() -> None:
    records = [rec("patients", 3, of="patients"), table([["CT", 2]], ["Modality", "n"])]
    before = repr(records)
    protect(records, P)
    assert repr(records) == before
