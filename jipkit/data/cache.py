"""A local cache of series retrieved from a PACS: bounded size, least recently used
eviction, safe against concurrent readers (across processes) and interrupted downloads.

Layout under the cache folder::

    series/<SeriesInstanceUID>/        complete series, one file per instance
    series/<SeriesInstanceUID>/.size   bytes held (written last: marks the entry complete)
    tmp/<uid>.<pid>.<random>/          downloads in progress (renamed into series/ when done)
    locks/<SeriesInstanceUID>.lock     flock: shared while read, exclusive while filled or evicted

A download is written under tmp/ and renamed into place only when complete, so an
interrupted one leaves nothing that looks finished; its leftovers are removed the
next time the cache is opened.  An entry in use (shared lock held) is never evicted.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from jipkit.errors import CacheError

__all__ = ["SeriesCache"]

_SAFE = re.compile(r"^[0-9A-Za-z.\-_]+$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SeriesCache:
    """Series retrieved from a PACS, kept on local disk.

    Parameters
    ----------
    root : path-like
        The cache folder (created when missing).
    max_bytes : int
        Size above which least recently used series are evicted.
    """

    def __init__(self, root: str | os.PathLike[str], max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        try:
            for sub in ("series", "tmp", "locks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheError(
                f"Cannot create the series cache at {self.root}: {err.strerror}. Set cache_dir in the "
                "site configuration (or JIP_CACHE_DIR) to a writable folder."
            ) from err
        self._clean_tmp()

    def _clean_tmp(self) -> None:
        for d in (self.root / "tmp").iterdir():
            parts = d.name.split(".")
            pid = int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None
            if pid is None or not _pid_alive(pid):
                shutil.rmtree(d, ignore_errors=True)

    def _key(self, uid: str) -> str:
        if not _SAFE.match(uid) or uid in (".", ".."):
            raise CacheError(f"Expected a DICOM UID as cache key, found {uid!r}.")
        return uid

    def path(self, uid: str) -> Path:
        """Where the series ``uid`` lives when cached."""
        return self.root / "series" / self._key(uid)

    def __contains__(self, uid: str) -> bool:
        return (self.path(uid) / ".size").exists()

    @contextmanager
    def _lock(self, uid: str, mode: int) -> Iterator[int]:
        fd = os.open(self.root / "locks" / f"{self._key(uid)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def open(self, uid: str, fill: Callable[[Path], object]) -> Iterator[Path]:
        """The folder of series ``uid``, filled by ``fill(tmp_folder)`` when not cached.

        The folder is safe to read inside the ``with`` block: no other process evicts it
        meanwhile.  When ``fill`` raises, nothing is cached and the error propagates.
        """
        final = self.path(uid)
        with self._lock(uid, fcntl.LOCK_EX) as fd:
            if not (final / ".size").exists():
                tmp = self.root / "tmp" / f"{uid}.{os.getpid()}.{secrets.token_hex(4)}"
                tmp.mkdir()
                try:
                    fill(tmp)
                    size = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
                    (tmp / ".size").write_text(str(size))
                    if final.exists():
                        shutil.rmtree(final)
                    os.rename(tmp, final)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            os.utime(final)
            fcntl.flock(fd, fcntl.LOCK_SH)  # readers may share; evictors must wait
            self.evict(keep=uid)
            yield final

    def entries(self) -> list[tuple[str, int, float]]:
        """Cached series: (uid, bytes, last use as a timestamp), least recent first."""
        out = []
        for d in (self.root / "series").iterdir():
            try:
                size = int((d / ".size").read_text())
                out.append((d.name, size, d.stat().st_mtime))
            except (OSError, ValueError):
                continue
        return sorted(out, key=lambda e: e[2])

    def size(self) -> int:
        """Bytes held by complete entries."""
        return sum(e[1] for e in self.entries())

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used series until the cache fits; return their UIDs."""
        entries = self.entries()
        total = sum(e[1] for e in entries)
        removed = []
        for uid, size, _ in entries:
            if total <= self.max_bytes:
                break
            if uid == keep:
                continue
            fd = os.open(self.root / "locks" / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # in use: keep it
                trash = self.root / "tmp" / f"evict-{uid}.{os.getpid()}.{secrets.token_hex(4)}"
                os.rename(self.path(uid), trash)
                shutil.rmtree(trash, ignore_errors=True)
                total -= size
                removed.append(uid)
            finally:
                os.close(fd)
        return removed
