"""`Site`: a site's data API for notebooks: query the index or a PACS, load volumes.

The API is narrow and serialisable on purpose (queries in; DataFrames and volumes
out) so that a sandboxed kernel can be given the same interface over a socket.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast, overload

import pandas as pd

from jipkit.config import SiteConfig, load_config
from jipkit.data.cache import SeriesCache
from jipkit.data.fastheader import read_header_fast
from jipkit.data.headers import HeaderError
from jipkit.data.index import Index
from jipkit.data.ingest import IngestReport, index_paths
from jipkit.data.keywords import check_keyword
from jipkit.data.load import assemble
from jipkit.data.schema import ATTRIBUTES, LEVELS, NUMERIC, Level
from jipkit.data.volume import Volume
from jipkit.errors import ConfigError, NotFoundError, QueryError
from jipkit.progress import tqdm

if TYPE_CHECKING:
    import dask.array

    from jipkit.data.sources.base import Source

__all__ = ["Site", "SyncReport", "connect"]

_PACS_PREFIX = "pacs:"


@dataclass
class SyncReport:
    """What :meth:`Site.sync` did: series seen, series (re)read, instances recorded, removed."""

    source: str
    series_seen: int = 0
    series_updated: int = 0
    instances: int = 0
    series_removed: int = 0

    def __str__(self) -> str:
        return (
            f"{self.source}: {self.series_seen} series, {self.series_updated} updated "
            f"({self.instances} instances), {self.series_removed} removed"
        )


def _dicom_value(keyword: str, value: Any) -> str:
    """A query value as DICOM matching text, for a PACS."""
    if value is None:
        return ""
    if isinstance(value, list | set | frozenset):
        return "\\".join(str(v) for v in value)
    if isinstance(value, tuple) and len(value) == 2:
        return f"{value[0] or ''}-{value[1] or ''}"
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y%m%d"))
    return str(value)


class Site:
    """One site's data: its index, its sources and its cache.

    Get one with :func:`connect`.  Queries (``find_*``) take DICOM keywords as keys and
    follow DICOM matching (see :mod:`jipkit.data.matching`); they return DataFrames.

    Parameters
    ----------
    config : SiteConfig
    """

    def __init__(self, config: SiteConfig):
        self.config = config
        self._index: Index | None = None
        self._cache: SeriesCache | None = None
        self._sources: dict[str, Source] = {}

    def __repr__(self) -> str:
        kinds = ", ".join(f"{s.name} ({s.kind})" for s in self.config.sources) or "no PACS"
        return f"<jip.Site {self.config.name!r}: index {self.config.index_path}, sources: {kinds}>"

    # -- parts -----------------------------------------------------------------------

    @property
    def index(self) -> Index:
        """The metadata index (opened on first use)."""
        if self._index is None:
            self._index = Index(self.config.index_path)
        return self._index

    @property
    def cache(self) -> SeriesCache:
        """The cache of series retrieved from PACS sources."""
        if self._cache is None:
            self._cache = SeriesCache(self.config.cache_dir, self.config.cache_max_bytes)
        return self._cache

    def source(self, name: str | None = None) -> Source:
        """The data source ``name`` (default: the first PACS source configured)."""
        from jipkit.data.sources import open_source

        if name is None:
            pacs = [s for s in self.config.sources if s.kind in ("dicomweb", "dimse")]
            if not pacs:
                raise ConfigError(
                    "This site has no PACS source configured; live queries, sync and retrieval need "
                    "one. Add a [[sources]] table of kind 'dicomweb' or 'dimse' to the site configuration."
                )
            name = pacs[0].name
        if name not in self._sources:
            self._sources[name] = open_source(self.config.source(name))
        return self._sources[name]

    # -- queries ---------------------------------------------------------------------

    def _find(
        self, level: Level, keys: Mapping[str, Any], live: bool, source: str | None, ignore_case: bool
    ) -> pd.DataFrame:
        for kw in keys:
            check_keyword(kw)
        if not live:
            return self.index.find(level, keys, ignore_case=ignore_case)
        src = self.source(source)
        fields = [k for lv in LEVELS[: LEVELS.index(level) + 1] for k in ATTRIBUTES[lv]]
        found = src.find(level, {k: _dicom_value(k, v) for k, v in keys.items()}, fields)
        cols = list(dict.fromkeys([*fields, *(k for r in found for k in r)]))
        df = pd.DataFrame.from_records(found, columns=cols)
        for c in df.columns:
            if c in NUMERIC:
                df[c] = pd.to_numeric(df[c], errors="coerce")
        return df

    def find_patients(
        self, *, live: bool = False, source: str | None = None, ignore_case: bool = False, **keys: Any
    ) -> pd.DataFrame:
        """Patients matching ``keys`` (DICOM keywords), one row each.

        Parameters
        ----------
        live : bool
            Ask the PACS directly instead of the index.
        source : str, optional
            The PACS source for ``live`` queries (default: the first one configured).
        ignore_case : bool
            Match all text case-insensitively (person names always are).
        **keys
            DICOM keywords and values, e.g. ``PatientName="Doe^J*"``; keys of lower
            levels select patients with at least one matching study, series or instance.

        Returns
        -------
        pandas.DataFrame
        """
        return self._find("PATIENT", keys, live, source, ignore_case)

    def find_studies(
        self, *, live: bool = False, source: str | None = None, ignore_case: bool = False, **keys: Any
    ) -> pd.DataFrame:
        """Studies matching ``keys``, one row each (see :meth:`find_patients`).

        Examples
        --------
        >>> site.find_studies(StudyDate="20200101-20201231", ModalitiesInStudy="CT")  # doctest: +SKIP
        """
        return self._find("STUDY", keys, live, source, ignore_case)

    def find_series(
        self, *, live: bool = False, source: str | None = None, ignore_case: bool = False, **keys: Any
    ) -> pd.DataFrame:
        """Series matching ``keys``, one row each, with their study and patient.

        Examples
        --------
        >>> site.find_series(Modality="CT", StudyDate="2020", NumberOfSeriesRelatedInstances="100-")  # doctest: +SKIP
        """
        return self._find("SERIES", keys, live, source, ignore_case)

    def find_instances(
        self, *, live: bool = False, source: str | None = None, ignore_case: bool = False, **keys: Any
    ) -> pd.DataFrame:
        """Instances matching ``keys``, one row per file (a duplicated instance has several).

        The ``Duplicates`` column counts the other files holding the same SOPInstanceUID.
        """
        return self._find("IMAGE", keys, live, source, ignore_case)

    def index_errors(self) -> pd.DataFrame:
        """Files that could not be indexed, with the reason."""
        return self.index.errors()

    # -- indexing --------------------------------------------------------------------

    def index_paths(self, paths: Iterable[str | os.PathLike[str]], *, progress: bool = True) -> IngestReport:
        """Index DICOM files and folders (see :func:`jipkit.data.ingest.index_paths`)."""
        return index_paths(self.index, paths, workers=self.config.workers, progress=progress)

    def sync(self, source: str | None = None, *, progress: bool = True) -> SyncReport:
        """Fill the index with the series and instance metadata of a PACS source.

        Incremental: a series is read again only when its number of instances changed;
        series gone from the PACS are forgotten.
        """
        src = self.source(source)
        name = src.name
        location = _PACS_PREFIX + name
        report = SyncReport(name)
        fields = [
            *ATTRIBUTES["PATIENT"],
            *ATTRIBUTES["STUDY"],
            *ATTRIBUTES["SERIES"],
            "NumberOfSeriesRelatedInstances",
        ]
        remote = src.find("SERIES", {}, fields)
        report.series_seen = len(remote)
        with self.index._conn() as con:
            have = dict(
                con.execute(
                    "SELECT SeriesInstanceUID, COUNT(*) FROM instances WHERE location = ? "
                    "GROUP BY SeriesInstanceUID",
                    (location,),
                ).fetchall()
            )
        for s in tqdm(remote, desc=f"sync {name}", unit="series", disable=not progress):
            uid = s.get("SeriesInstanceUID")
            if not uid:
                continue
            n = s.get("NumberOfSeriesRelatedInstances")
            if n is not None and have.get(uid) == int(n):
                continue
            insts = src.find(
                "IMAGE",
                {"StudyInstanceUID": s["StudyInstanceUID"], "SeriesInstanceUID": uid},
                list(ATTRIBUTES["IMAGE"]),
            )
            records = []
            for inst in insts:
                rec = {k: s.get(k) for k in fields if k != "NumberOfSeriesRelatedInstances"}
                rec.update({k: v for k, v in inst.items() if k in ATTRIBUTES["IMAGE"]})
                rec["SeriesInstanceUID"] = uid
                rec["PatientID"] = rec.get("PatientID") or ""
                rec["IssuerOfPatientID"] = rec.get("IssuerOfPatientID") or ""
                rec["location"] = location
                if rec.get("SOPInstanceUID"):
                    records.append(rec)
            with self.index.transaction() as con:
                con.execute(
                    "DELETE FROM instances WHERE location = ? AND SeriesInstanceUID = ?", (location, uid)
                )
                self.index._add(con, records, name)
            report.series_updated += 1
            report.instances += len(records)
        if report.series_updated:
            self.index.optimize()
        gone = set(have) - {s.get("SeriesInstanceUID") for s in remote}
        if gone:
            with self.index.transaction() as con:
                con.executemany(
                    "DELETE FROM instances WHERE location = ? AND SeriesInstanceUID = ?",
                    [(location, g) for g in gone],
                )
                self.index._refresh_counts(con, gone)
                self.index._prune(con)
            report.series_removed = len(gone)
        return report

    # -- loading ---------------------------------------------------------------------

    def _rows(self, series_uid: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        series = self.index.series_row(series_uid)
        if series is None:
            raise NotFoundError(
                f"No series {series_uid} in the index of site {self.config.name!r}. Run `jip index PATH` "
                "(files) or `jip sync` (PACS) first, or check the UID with find_series()."
            )
        inst = self.index.instances_of(series_uid)
        rows: list[dict[str, Any]] = [
            {str(k): v for k, v in r.items()}
            for r in inst.astype(object).where(inst.notna(), None).to_dict("records")
        ]
        for r in rows:
            r["StudyInstanceUID"] = series["StudyInstanceUID"]
            r["Modality"] = series.get("Modality")
        return rows, series

    @overload
    def load_series(self, series_uid: str, *, split_by: None = None) -> Volume: ...
    @overload
    def load_series(self, series_uid: str, *, split_by: str) -> dict[Any, Volume]: ...

    def load_series(self, series_uid: str, *, split_by: str | None = None) -> Volume | dict[Any, Volume]:
        """Load a series as a :class:`Volume`.

        Parameters
        ----------
        series_uid : str
            SeriesInstanceUID.
        split_by : str, optional
            When several images lie at one position (echoes, phases), the DICOM keyword
            that tells them apart (the error names it); a dict ``{value: Volume}`` is
            returned.

        Returns
        -------
        Volume, or dict of Volume with ``split_by``.

        Raises
        ------
        NotFoundError, NoPixelDataError, MixedSeriesError, AmbiguousSeriesError, PACSError
        """
        rows, series = self._rows(series_uid)
        files = [r for r in rows if not str(r["location"]).startswith(_PACS_PREFIX)]
        file_uids = {r["SOPInstanceUID"] for r in files}
        if files and file_uids >= {r["SOPInstanceUID"] for r in rows}:
            return assemble(files, series_uid, split_by)
        pacs = [r for r in rows if str(r["location"]).startswith(_PACS_PREFIX)]
        source = str(pacs[0]["location"])[len(_PACS_PREFIX) :]
        src = self.source(source)
        with self.cache.open(
            series_uid, lambda d: src.retrieve_series(series["StudyInstanceUID"], series_uid, d)
        ) as folder:
            cached = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for p in sorted(folder.glob("*.dcm")):
                    try:
                        rec = read_header_fast(p)
                    except HeaderError:
                        continue
                    rec["Modality"] = series.get("Modality")
                    cached.append(rec)
            return assemble(cached, series_uid, split_by)

    def load_instances(self, instances: pd.DataFrame) -> Volume:
        """Load the instances listed in a :meth:`find_instances` DataFrame as one volume."""
        if instances.empty:
            raise QueryError("No instances given: the DataFrame is empty.")
        uids = set(instances["SOPInstanceUID"])
        series_uids = set(instances["SeriesInstanceUID"])
        if len(series_uids) != 1:
            raise QueryError(f"Expected instances of one series, found {len(series_uids)} series.")
        (uid,) = series_uids
        rows, _ = self._rows(uid)
        chosen = [r for r in rows if r["SOPInstanceUID"] in uids]
        vol = assemble(chosen, uid)
        assert isinstance(vol, Volume)
        return vol

    def iter_series(
        self, series: pd.DataFrame | Iterable[str], *, progress: bool = True
    ) -> Iterator[tuple[str, Volume]]:
        """Load series one after the other: yields ``(SeriesInstanceUID, Volume)``.

        Parameters
        ----------
        series : DataFrame with a SeriesInstanceUID column, or iterable of UIDs
        progress : bool
            Show a progress bar.
        """
        uids = list(series["SeriesInstanceUID"]) if isinstance(series, pd.DataFrame) else list(series)
        for uid in tqdm(uids, desc="loading", unit="series", disable=not progress):
            yield uid, self.load_series(uid)

    def lazy_series(self, series_uid: str) -> dask.array.Array:
        """A series as a lazy dask array ``[z, y, x]``, one chunk per slice, rescaled.

        Geometry checks run at once; pixels are read only when computed.
        """
        import dask.array as da
        import numpy as np

        from jipkit.data import load

        rows, _ = self._rows(series_uid)
        groups, notes = load.plan(rows, series_uid)
        frames, _geo = load._order(groups[None], series_uid, list(notes))
        first = load.read_frames(frames[:1])
        dtype = load._rescale(first.copy(), frames[:1]).dtype
        if len({(f.slope, f.intercept) for f in frames}) > 1:
            dtype = np.dtype(np.float32)

        def one(k: int) -> Any:
            return load._rescale(load.read_frames([frames[k]]), [frames[k]])[0].astype(dtype, copy=False)

        from dask.delayed import delayed

        parts = [
            da.from_delayed(delayed(one)(k), shape=first.shape[1:], dtype=dtype)  # type: ignore[no-untyped-call]
            for k in range(len(frames))
        ]
        stacked: dask.array.Array = da.stack(parts)  # type: ignore[no-untyped-call]
        return stacked


def connect(config: SiteConfig | str | os.PathLike[str] | None = None, **overrides: Any) -> Site:
    """Connect to this site's data.

    Parameters
    ----------
    config : SiteConfig or path-like, optional
        A configuration, or the TOML file holding one.  Default: ``$JIP_CONFIG``, then
        the user's ``site.toml``, then a local site with embedded defaults.
    **overrides
        Configuration fields to override (``index_path=...``).

    Returns
    -------
    Site
        In a notebook run by the site's runner (``$JIPKIT_DATA_SOCKET`` set, no
        arguments): a :class:`jipkit.data.remote.RemoteSite`, with the same queries and
        ``load_series`` over the runner's data channel.

    Examples
    --------
    >>> import jipkit as jip
    >>> site = jip.connect()  # doctest: +SKIP
    >>> ct = site.find_series(Modality="CT", StudyDate="2020")  # doctest: +SKIP
    >>> vol = site.load_series(ct.SeriesInstanceUID[0])  # doctest: +SKIP
    """
    channel = os.environ.get("JIPKIT_DATA_SOCKET")
    if channel and config is None and not overrides:
        from jipkit.data.remote import RemoteSite

        return cast(Site, RemoteSite(channel))  # the query and load methods of a Site
    if isinstance(config, SiteConfig):
        cfg = config.model_copy(update=overrides) if overrides else config
    else:
        cfg = load_config(config, **overrides)
    return Site(cfg)
