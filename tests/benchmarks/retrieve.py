"""Benchmark 4: retrieve a 300-slice 512x512 CT from Orthanc into a volume.

jipkit (a Site whose source is Orthanc's DICOMweb: ``sync`` once, then ``load_series``
with the series cache emptied before every run) against plain WADO-RS: the instances
listed with QIDO-RS and fetched with :mod:`requests`, as many at once as jipkit's
``max_concurrent``, bytes only (no decoding, nothing written); and against
dicomweb-client's ``retrieve_series`` followed by pydicom sorting and stacking.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from jipkit.config import SiteConfig
from jipkit.data.site import Site
from jipkit.data.synth import write_series

from ._common import Context, Method, Row, Table, Target, interleave, median, speedup
from ._orthanc import OrthancUnavailable, running_orthanc

__all__ = ["run"]

TITLE = "retrieve: a CT from Orthanc (DICOMweb) into a volume"
CONCURRENCY = 4
JIP = "jipkit Site.load_series (from PACS)"
PLAIN = f"plain WADO-RS, {CONCURRENCY} at a time"
DWC = "dicomweb-client retrieve_series+stack"
_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _sop_uids(session: requests.Session, base: str, study: str, series: str) -> list[str]:
    r = session.get(
        f"{base}/studies/{study}/series/{series}/instances",
        params={"includefield": "00080018"},
        headers={"Accept": "application/dicom+json"},
        timeout=60,
    )
    r.raise_for_status()
    return [str(obj["00080018"]["Value"][0]) for obj in r.json()]


def _plain_wado(session: requests.Session, base: str, study: str, series: str) -> int:
    """QIDO-RS for the instance list, then WADO-RS per instance; returns the bytes received."""
    url = f"{base}/studies/{study}/series/{series}/instances"

    def one(sop: str) -> int:
        r = session.get(
            f"{url}/{sop}", headers={"Accept": _ACCEPT, "Accept-Encoding": "identity"}, timeout=60
        )
        r.raise_for_status()
        return len(r.content)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return sum(pool.map(one, _sop_uids(session, base, study, series)))


def _stack(datasets: Sequence[Dataset]) -> npt.NDArray[Any]:
    ori = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(ori[:3], ori[3:])
    ordered = sorted(
        datasets, key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))
    )
    return np.stack([ds.pixel_array for ds in ordered])


def _dicomweb_client(client: DICOMwebClient, study: str, series: str) -> npt.NDArray[Any]:
    return _stack(client.retrieve_series(study, series))


def _session(auth: tuple[str, str]) -> requests.Session:
    session = requests.Session()
    session.auth = auth
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=CONCURRENCY)
    session.mount("http://", adapter)
    return session


def _load(site: Site, series_uid: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        site.load_series(series_uid)


def _table(shape: str, times: dict[str, list[float]], megabytes: float, rounds: int) -> Table:
    table = Table(f"retrieve: a {shape} CT from Orthanc (DICOMweb) into a volume ({rounds} rounds)")
    for name in (PLAIN, DWC):
        table.add(Row(name, megabytes / median(times[name]), "MB/s"))
    jip = megabytes / median(times[JIP])
    table.add(Row(JIP, jip, "MB/s", speedup(times[JIP], times[PLAIN]), "plain WADO-RS", Target(">=", 0.7)))
    table.add(Row(JIP, jip, "MB/s", speedup(times[JIP], times[DWC]), "dicomweb-client"))
    return table


def run(ctx: Context) -> list[Table]:
    """Write the CT, upload it, sync a Site with Orthanc, then time the three retrievals."""
    z, y, x = ctx.sizes.retrieve_shape
    folder = ctx.folder("retrieve")
    ctx.say(f"writing a {x}x{y}x{z} CT")
    info = write_series(folder / "files", shape=(z, y, x), feet_first=True, shuffle=True, seed=9)
    try:
        with running_orthanc(folder / "orthanc") as server, _session(server.auth) as session:
            ctx.say(f"uploading {len(info.paths)} files to Orthanc")
            server.upload(info.paths, workers=CONCURRENCY)
            source = server.dicomweb_config(name="orthanc", max_concurrent=CONCURRENCY, timeout=120.0)
            config = SiteConfig(
                name="bench", index_path=folder / "index.sqlite", cache_dir=folder / "cache", sources=[source]
            )
            site = Site(config)
            start = time.perf_counter()
            site.sync("orthanc", progress=False)
            synced = time.perf_counter() - start
            base, study, series = server.dicomweb_url, info.study_uid, info.series_uid
            nbytes = _plain_wado(session, base, study, series)
            client = DICOMwebClient(url=base, session=_session(server.auth))
            methods = [
                Method(PLAIN, partial(_plain_wado, session, base, study, series)),
                Method(
                    JIP, partial(_load, site, series), lambda: shutil.rmtree(site.cache.path(series), True)
                ),
                Method(DWC, partial(_dicomweb_client, client, study, series)),
            ]
            rounds = ctx.sizes.retrieve_rounds
            ctx.say(f"{rounds} rounds of {len(methods)} retrievals ({nbytes / 1e6:.1f} MB each)")
            times = interleave(methods, rounds, warmup=True)
            shutil.rmtree(site.cache.path(series), ignore_errors=True)
            ctx.run_profile("load_series from PACS", methods[1].run)
            site.index.close()
    except OrthancUnavailable as err:
        return [Table(TITLE, skipped=str(err))]
    table = _table(f"{x}x{y}x{z}", times, nbytes / 1e6, rounds)
    table.notes.append(
        f"{len(info.paths)} instances, {nbytes / 1e6:.1f} MB over the wire; jipkit's series cache emptied before "
        f"each run (its index was filled once by Site.sync: {synced * 1000:.0f} ms); plain WADO-RS keeps the "
        "bytes in memory (Accept-Encoding: identity, as jipkit asks), jipkit writes them to its cache, reads "
        "the headers and assembles the volume; dicomweb-client runs with requests' defaults (gzip allowed)"
    )
    return [table]
