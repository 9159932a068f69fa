"""A small HTTP client for people (scientists, reviewers, coordinators) and their tools.

>>> from jipkit.coordinator.client import CoordinatorClient
>>> with CoordinatorClient.from_env() as jipc:  # doctest: +SKIP
...     v = jipc.submit_notebook("lung", "cohort.ipynb")
...     run = jipc.start_run("lung", v["version_hash"], {"modality": "CT"})
...     jipc.wait_run(run["run_id"])
...     frame = jipc.results_frame(run["run_id"])

The URL comes from the argument or ``$JIP_COORDINATOR_URL``; the token from the
argument or ``$JIP_COORDINATOR_TOKEN`` (never from a URL).  Every refusal raises
:class:`~jipkit.errors.CoordinatorError` with the HTTP ``status`` and the
coordinator's ``reason`` code.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from jipkit.errors import CoordinatorError, NotebookError
from jipkit.protocol.api import API

__all__ = ["FINAL_RUN_STATES", "CoordinatorClient"]

FINAL_RUN_STATES = ("done", "cancelled")


def _error(response: httpx.Response) -> CoordinatorError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    detail = body.get("detail") if isinstance(body, dict) else None
    reason = body.get("reason") if isinstance(body, dict) else None
    if not isinstance(detail, str):
        detail = f"HTTP {response.status_code} {response.reason_phrase}"
    err = CoordinatorError(
        f"The coordinator refused: {detail} ({reason or response.status_code})", response.status_code
    )
    if isinstance(reason, str):
        err.reason = reason
    return err


class CoordinatorClient:
    """Calls a coordinator's user API.

    Parameters
    ----------
    url : str
        The coordinator's base URL (``https://jip.example.org``).
    token : str, optional
        A user's API token (from :meth:`login` or ``jip coordinator login``).
    timeout : float
        Seconds to wait for each answer.
    verify : str or bool
        A CA bundle (PEM path) for TLS, True for the system's, False never.
    transport : httpx.BaseTransport, optional
        For tests.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        verify: str | bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise CoordinatorError(f"Expected the coordinator's URL as http(s)://host[:port], found {url!r}.")
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url + API, headers=headers, timeout=timeout, verify=verify, transport=transport
        )

    @classmethod
    def from_env(
        cls,
        url: str | None = None,
        token: str | None = None,
        *,
        verify: str | bool | None = None,
        timeout: float = 30.0,
    ) -> CoordinatorClient:
        """A client from arguments, else ``$JIP_COORDINATOR_URL`` / ``_TOKEN`` / ``_CA_BUNDLE``.

        Raises
        ------
        CoordinatorError
            No URL given or set.
        """
        url = url or os.environ.get("JIP_COORDINATOR_URL")
        if not url:
            raise CoordinatorError("No coordinator URL: pass --url or set JIP_COORDINATOR_URL.")
        token = token or os.environ.get("JIP_COORDINATOR_TOKEN")
        if verify is None:
            verify = os.environ.get("JIP_COORDINATOR_CA_BUNDLE") or True
        return cls(url, token, verify=verify, timeout=timeout)

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=body, params=params)
        except httpx.HTTPError as err:
            e = CoordinatorError(
                f"Cannot reach the coordinator at {self.url}: {err.__class__.__name__}: {err}.", 0
            )
            e.reason = "coordinator_unreachable"
            raise e from err
        if response.status_code >= 400:
            raise _error(response)
        return response.json() if response.content else None

    # ------------------------------------------------------------------ calls

    def login(self, username: str, password: str) -> str:
        """Exchange a password for an API token; this client uses it from now on."""
        token = str(self._call("POST", "/auth/token", {"username": username, "password": password})["token"])
        self._http.headers["Authorization"] = f"Bearer {token}"
        return token

    def keys(self) -> dict[str, str]:
        """The coordinator's public signing keys ``{key_id: public_key}``."""
        return dict(self._call("GET", "/keys")["keys"])

    def create_study(
        self, name: str, review_quorum: int | None = None, sites: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Create a study (admins)."""
        return dict(
            self._call(
                "POST", "/studies", {"name": name, "review_quorum": review_quorum, "sites": list(sites)}
            )
        )

    def list_studies(self) -> list[dict[str, Any]]:
        """The studies the caller is a member of (admins: all), with the caller's roles."""
        return list(self._call("GET", "/studies")["studies"])

    def list_runs(self, study: str) -> list[dict[str, Any]]:
        """A study's runs, newest first (members of the study, admins)."""
        return list(self._call("GET", f"/studies/{study}/runs")["runs"])

    def add_member(self, study: str, username: str, role: str) -> dict[str, Any]:
        """Give a user a role in a study (admins)."""
        return dict(self._call("POST", f"/studies/{study}/members", {"username": username, "role": role}))

    def submit_notebook(
        self, study: str, notebook: Mapping[str, Any] | str | os.PathLike[str]
    ) -> dict[str, Any]:
        """Submit a notebook (a dict, or a path to an .ipynb) to a study.

        Returns
        -------
        dict
            ``{version_hash, parameters, state, existing}``.
        """
        if isinstance(notebook, Mapping):
            nb = dict(notebook)
        else:
            path = Path(notebook)
            try:
                nb = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise NotebookError(f"Cannot read the notebook {path}: {err}.") from err
        return dict(self._call("POST", f"/studies/{study}/notebooks", {"notebook": nb}))

    def list_notebooks(self, study: str) -> list[dict[str, Any]]:
        """A study's versions with their review state."""
        return list(self._call("GET", f"/studies/{study}/notebooks")["versions"])

    def get_notebook(self, version_hash: str) -> dict[str, Any]:
        """A version: summary, canonical notebook, reviews."""
        return dict(self._call("GET", f"/notebooks/{version_hash}"))

    def review(self, version_hash: str, decision: str, comment: str = "") -> dict[str, Any]:
        """Approve (``"approve"``) or reject (``"reject"``) a version."""
        return dict(
            self._call(
                "POST", f"/notebooks/{version_hash}/reviews", {"decision": decision, "comment": comment}
            )
        )

    def start_run(
        self,
        study: str,
        version_hash: str,
        parameters: Mapping[str, Any] | None = None,
        sites: Sequence[str] | None = None,
        deadline_s: int = 600,
    ) -> dict[str, Any]:
        """Start a run of an approved version; ``{run_id, jobs}``."""
        body = {
            "study": study,
            "version_hash": version_hash,
            "parameters": dict(parameters or {}),
            "sites": list(sites) if sites else None,
            "deadline_s": deadline_s,
        }
        return dict(self._call("POST", "/runs", body))

    def get_run(self, run_id: str) -> dict[str, Any]:
        """A run with its jobs' states."""
        return dict(self._call("GET", f"/runs/{run_id}"))

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        """Cancel a run."""
        return dict(self._call("POST", f"/runs/{run_id}/cancel"))

    def results(self, run_id: str) -> dict[str, Any]:
        """Per-site results and combined records of a run."""
        return dict(self._call("GET", f"/runs/{run_id}/results"))

    def results_frame(self, run_id: str) -> Any:
        """The run's records as a pandas DataFrame, site x record name (succeeded sites)."""
        from jipkit.coordinator.aggregate import records_frame

        res = self.results(run_id)
        return records_frame(
            {s["site"]: s["records"] if s["state"] == "succeeded" else None for s in res["sites"]}
        )

    def wait_run(
        self,
        run_id: str,
        *,
        timeout: float | None = None,
        poll_s: float = 1.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll a run until it is done or cancelled.

        Parameters
        ----------
        timeout : float, optional
            Give up after this many seconds.
        poll_s : float
            The most seconds between polls (the first come sooner).
        on_progress : callable, optional
            Called with the run (as :meth:`get_run` returns it) after each poll.

        Returns
        -------
        dict
            The finished run.

        Raises
        ------
        CoordinatorError
            ``wait_timeout`` when the run has not finished within ``timeout``.
        """
        start = time.monotonic()
        delay = min(poll_s, 0.1)
        while True:
            run = self.get_run(run_id)
            if on_progress is not None:
                on_progress(run)
            if run["state"] in FINAL_RUN_STATES:
                return run
            if timeout is not None and time.monotonic() - start > timeout:
                err = CoordinatorError(
                    f"Run {run_id} has not finished after {timeout:g} s (jobs: {run['counts']}). "
                    f"It goes on; check later with: jip results {run_id}"
                )
                err.reason = "wait_timeout"
                raise err
            time.sleep(delay)
            delay = min(poll_s, delay * 2)
