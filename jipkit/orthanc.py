"""A local Orthanc PACS for the demo, development and tests.

:func:`start_orthanc` starts Orthanc (Debian packages ``orthanc`` and
``orthanc-dicomweb``) with its own configuration: both ports free and chosen at start,
HTTP authentication on with a generated user and password, ``RemoteAccessAllowed``
false, DICOM access (C-ECHO, C-FIND, C-GET) only for the calling AE title
:data:`CLIENT_AET` from 127.0.0.1, and the DICOMweb plugin at ``/dicom-web/``.  Orthanc
cannot bind to loopback only: the AET whitelist and authentication keep it closed.
:func:`stop_orthanc` stops it by its PID.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from jipkit.config import BasicAuth, DicomwebSourceConfig, DimseSourceConfig
from jipkit.errors import JipError

__all__ = [
    "CLIENT_AET",
    "DICOMWEB_PLUGIN",
    "ORTHANC_AET",
    "OrthancNotInstalled",
    "OrthancServer",
    "free_port",
    "orthanc_installed",
    "start_orthanc",
    "stop_orthanc",
]

#: The calling AE title Orthanc accepts queries and retrievals from.
CLIENT_AET = "JIPTEST"
#: Orthanc's own AE title (``DicomCheckCalledAet`` is on: other called AETs are refused).
ORTHANC_AET = "ORTHANC"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
_START_TIMEOUT = 30.0


class OrthancNotInstalled(JipError):
    """Orthanc or its DICOMweb plugin is not installed here."""

    reason = "orthanc_not_installed"


def orthanc_installed() -> bool:
    """Whether the Orthanc binary and its DICOMweb plugin are installed."""
    return shutil.which("Orthanc") is not None and DICOMWEB_PLUGIN.is_file()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class OrthancServer:
    """A running Orthanc started by the ``orthanc`` fixture.

    Attributes
    ----------
    url : str
        Orthanc's REST API, ``http://127.0.0.1:PORT``.
    dicomweb_url : str
        The DICOMweb root, ``http://127.0.0.1:PORT/dicom-web``.
    username, password : str
        The HTTP credentials (generated; the password is also in ``$PASSWORD_ENV``).
    aet : str
        Orthanc's AE title.
    dicom_port : int
        Orthanc's DICOM port.
    client_aet : str
        The calling AE title Orthanc accepts.
    password_env : str
        The environment variable that holds ``password``.
    workdir : Path
        The folder with Orthanc's configuration, storage and log.
    """

    url: str
    dicomweb_url: str
    username: str
    password: str = field(repr=False)
    aet: str
    dicom_port: int
    client_aet: str
    password_env: str
    workdir: Path
    process: subprocess.Popen[bytes] = field(repr=False, compare=False)

    @property
    def host(self) -> str:
        """The host both ports listen on for tests."""
        return "127.0.0.1"

    @property
    def auth(self) -> tuple[str, str]:
        """``(username, password)`` for :mod:`requests`."""
        return (self.username, self.password)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """``GET`` a path of the REST API (with credentials); fail on an HTTP error."""
        r = requests.get(f"{self.url}{path}", auth=self.auth, timeout=30, **kwargs)
        r.raise_for_status()
        return r

    def upload(self, paths: Iterable[str | os.PathLike[str]], workers: int = 4) -> None:
        """Store DICOM files through ``POST /instances``, ``workers`` at a time.

        Raises
        ------
        RuntimeError
            Orthanc refused a file.
        """

        def one(session: requests.Session, path: Path) -> None:
            r = session.post(f"{self.url}/instances", data=path.read_bytes(), timeout=60)
            if r.status_code != 200:
                raise RuntimeError(f"Orthanc refused {path}: HTTP {r.status_code} {r.text[:300]}")

        files = [Path(p) for p in paths]
        with requests.Session() as session:
            session.auth = self.auth
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=workers)
            session.mount("http://", adapter)
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda p: one(session, p), files))

    def clear(self) -> None:
        """Delete every patient (and so every instance) Orthanc holds."""
        for pid in self.get("/patients").json():
            r = requests.delete(f"{self.url}/patients/{pid}", auth=self.auth, timeout=30)
            r.raise_for_status()

    def instance_count(self) -> int:
        """How many instances Orthanc holds."""
        return int(self.get("/statistics").json()["CountInstances"])

    def dicomweb_config(self, name: str = "orthanc-web", **overrides: Any) -> DicomwebSourceConfig:
        """A DICOMweb source configuration for this server (password through the env)."""
        values: dict[str, Any] = {
            "name": name,
            "url": self.dicomweb_url,
            "auth": BasicAuth(username=self.username, password_env=self.password_env),
            "timeout": 10.0,
        }
        values.update(overrides)
        return DicomwebSourceConfig(**values)

    def dimse_config(self, name: str = "orthanc-dimse", **overrides: Any) -> DimseSourceConfig:
        """A DIMSE source configuration for this server, calling as ``client_aet``."""
        values: dict[str, Any] = {
            "name": name,
            "host": self.host,
            "port": self.dicom_port,
            "called_aet": self.aet,
            "calling_aet": self.client_aet,
            "timeout": 10.0,
        }
        values.update(overrides)
        return DimseSourceConfig(**values)

    def log_tail(self, lines: int = 40) -> str:
        """The end of Orthanc's log, for failure messages."""
        log = self.workdir / "orthanc.log"
        if not log.is_file():
            return "(no log)"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _orthanc_config(
    workdir: Path, http_port: int, dicom_port: int, user: str, password: str, name: str = "jip"
) -> dict[str, Any]:
    return {
        "Name": name,
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "HttpPort": http_port,
        "HttpTimeout": 30,
        "HttpRequestTimeout": 30,
        "HttpThreadsCount": 16,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user: password},
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "ExecuteLuaEnabled": False,
        "MetricsEnabled": False,
        "SaveJobs": False,
        "StableAge": 1,
        "OverwriteInstances": False,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AET,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomAlwaysAllowStore": False,
        "DicomScpTimeout": 30,
        "DicomThreadsCount": 8,
        "UnknownSopClassAccepted": True,
        "DicomModalities": {
            "jiptest": {
                "AET": CLIENT_AET,
                "Host": "127.0.0.1",
                "Port": 1,  # never called back: C-GET answers on the same association
                "AllowEcho": True,
                "AllowFind": True,
                "AllowGet": True,
                "AllowMove": False,
                "AllowStore": False,
                "AllowStorageCommitment": False,
            }
        },
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            "Ssl": False,
            "Host": f"127.0.0.1:{http_port}",
        },
    }


def start_orthanc(workdir: Path, password_env: str = "ORTHANC_PASSWORD", name: str = "jip") -> OrthancServer:
    """Start an Orthanc in ``workdir`` and wait until both its ports answer.

    Parameters
    ----------
    workdir : Path
        Its configuration, storage and log go here.
    password_env : str
        The environment variable source configurations will read the password from
        (the caller sets it: :attr:`OrthancServer.password`).
    name : str
        Orthanc's name (shown in its logs).

    Raises
    ------
    OrthancNotInstalled
    JipError
        Orthanc exited or did not answer within 30 s (the message has its log's end).
    """
    binary = shutil.which("Orthanc")
    if binary is None or not DICOMWEB_PLUGIN.is_file():
        raise OrthancNotInstalled(
            "Orthanc and its DICOMweb plugin are not installed: run deploy/install.sh "
            "(apt-get install orthanc orthanc-dicomweb)."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    user = "jip-" + secrets.token_hex(4)
    password = secrets.token_urlsafe(18)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config_path = workdir / "orthanc.json"
    config_path.write_text(
        json.dumps(_orthanc_config(workdir, http_port, dicom_port, user, password, name), indent=2)
    )
    log = (workdir / "orthanc.log").open("wb")
    proc = subprocess.Popen(
        [binary, str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=workdir,
    )
    log.close()
    url = f"http://127.0.0.1:{http_port}"
    server = OrthancServer(
        url=url,
        dicomweb_url=f"{url}/dicom-web",
        username=user,
        password=password,
        aet=ORTHANC_AET,
        dicom_port=dicom_port,
        client_aet=CLIENT_AET,
        password_env=password_env,
        workdir=workdir,
        process=proc,
    )
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise JipError(
                f"Orthanc exited with status {proc.returncode} while starting:\n{server.log_tail()}"
            )
        try:
            ok = requests.get(f"{url}/system", auth=server.auth, timeout=2).status_code == 200
            if ok:
                with socket.create_connection(("127.0.0.1", dicom_port), timeout=2):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_orthanc(proc)
            raise JipError(
                f"Orthanc did not answer on {url} within {_START_TIMEOUT:.0f} s:\n{server.log_tail()}"
            )
        time.sleep(0.05)
    return server


def stop_orthanc(proc: subprocess.Popen[bytes]) -> None:
    """Stop an Orthanc by its PID: terminate, wait, kill."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
