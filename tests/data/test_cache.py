"""The series cache: LRU eviction, interrupted downloads, readers across processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from jipkit.data.cache import SeriesCache
from jipkit.errors import CacheError


def filler(n_bytes: int, calls: list[str] | None = None, uid: str = ""):  # type: ignore[no-untyped-def]
    def fill(folder: Path) -> None:
        if calls is not None:
            calls.append(uid)
        (folder / "a.dcm").write_bytes(b"x" * n_bytes)

    return fill


def test_fill_once_then_hit(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path, max_bytes=10_000)
    calls: list[str] = []
    with cache.open("1.2.3", filler(100, calls, "1.2.3")) as folder:
        assert (folder / "a.dcm").stat().st_size == 100
    with cache.open("1.2.3", filler(100, calls, "1.2.3")) as folder:
        assert (folder / "a.dcm").exists()
    assert calls == ["1.2.3"] and "1.2.3" in cache and cache.size() == 100


def test_lru_eviction_keeps_recent(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path, max_bytes=250)
    for uid in ("1.1", "1.2"):
        with cache.open(uid, filler(100)):
            pass
        time.sleep(0.02)
    with cache.open("1.1", filler(100)):  # touch 1.1: now 1.2 is least recent
        pass
    time.sleep(0.02)
    with cache.open("1.3", filler(100)):
        pass
    assert "1.1" in cache and "1.3" in cache and "1.2" not in cache
    assert cache.size() <= 250


def test_interrupted_download_leaves_nothing(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path, max_bytes=10_000)

    def broken(folder: Path) -> None:
        (folder / "half.dcm").write_bytes(b"x" * 10)
        raise ConnectionError("PACS went away")

    with pytest.raises(ConnectionError), cache.open("1.9", broken):
        pass
    assert "1.9" not in cache and not any((tmp_path / "tmp").iterdir())
    with cache.open("1.9", filler(5)) as folder:  # the next try fills it properly
        assert (folder / "a.dcm").exists()


def _killed_mid_download(root: str) -> None:
    cache = SeriesCache(root, max_bytes=10_000)

    def hang(folder: Path) -> None:
        (folder / "part.dcm").write_bytes(b"x")
        time.sleep(60)

    with cache.open("2.1", hang):
        pass


def test_killed_download_is_cleaned_up_and_refilled(tmp_path: Path) -> None:
    ctx = mp.get_context("forkserver")
    p = ctx.Process(target=_killed_mid_download, args=(str(tmp_path),))
    p.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any((tmp_path / "tmp").glob("2.1.*")):
        time.sleep(0.05)
    p.kill()
    p.join()
    cache = SeriesCache(tmp_path, max_bytes=10_000)  # opening cleans a dead process's leftovers
    assert not any((tmp_path / "tmp").iterdir()) and "2.1" not in cache
    with cache.open("2.1", filler(3)) as folder:
        assert (folder / "a.dcm").exists()


def _hold_open(root: str, ready: mp.Event, release: mp.Event) -> None:  # type: ignore[valid-type]
    cache = SeriesCache(root, max_bytes=150)
    with cache.open("3.1", filler(100)) as folder:
        ready.set()  # type: ignore[attr-defined]
        release.wait(30)  # type: ignore[attr-defined]
        assert (folder / "a.dcm").read_bytes() == b"x" * 100


def test_series_in_use_by_another_process_is_not_evicted(tmp_path: Path) -> None:
    ctx = mp.get_context("forkserver")
    ready, release = ctx.Event(), ctx.Event()
    reader = ctx.Process(target=_hold_open, args=(str(tmp_path), ready, release))
    reader.start()
    assert ready.wait(30)
    cache = SeriesCache(tmp_path, max_bytes=150)
    with cache.open("3.2", filler(100)):
        pass  # over budget, but 3.1 is being read: it stays
    assert "3.1" in cache
    release.set()
    reader.join(30)
    assert reader.exitcode == 0
    assert cache.evict() == ["3.1"]  # released: now the least recent entry goes


def test_bad_keys_and_unwritable_root(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path / "c", max_bytes=1)
    with pytest.raises(CacheError, match="UID"):
        cache.path("../etc")
    (tmp_path / "file").write_text("")
    with pytest.raises(CacheError, match="cache_dir"):
        SeriesCache(tmp_path / "file" / "sub", max_bytes=1)
    assert os.path.isdir(tmp_path / "c" / "series")
