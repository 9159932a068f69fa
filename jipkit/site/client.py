"""The site's side of the coordinator's API: an HTTP client, and the back-off between retries.

:class:`CoordinatorClient` speaks the site endpoints (:mod:`jipkit.protocol.api`): enrol,
long-poll for the next job, renew a lease, report a result held for release, upload a
signed result.  The site token
travels in the ``Authorization`` header only, never in a URL or a log line.  A lease
renewal answered with 409 raises :class:`LeaseEnded`.  :class:`Backoff` spaces the
retries of a failed request (jittered, exponential).
"""

from __future__ import annotations

import email.utils
import logging
import random
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from jipkit.errors import ConfigError, CoordinatorError
from jipkit.protocol.api import API, LONG_POLL_MAX_S
from jipkit.protocol.messages import parse_time
from jipkit.site.fedconfig import FederationConfig

__all__ = ["Backoff", "Claim", "CoordinatorClient", "LeaseEnded"]

log = logging.getLogger("jipkit.site")

_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class LeaseEnded(CoordinatorError):
    """The coordinator answered a lease renewal with 409: stop this job.

    Attributes
    ----------
    why : str
        ``lease_lost`` or ``cancelled``.
    """

    reason = "lease_ended"

    def __init__(self, why: str):
        super().__init__(f"The coordinator ended this job's lease ({why}).", status=409)
        self.why = why


@dataclass(frozen=True)
class Claim:
    """A job handed to this site: the envelope as received and the lease's time left."""

    envelope: Any
    lease_s: float


class Backoff:
    """Jittered exponential back-off: each delay is uniform in [d/2, d], d doubling to a cap."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None):
        self.initial, self.maximum = initial, max(initial, maximum)
        self._rng = rng or random.Random()
        self._failures = 0

    def next(self) -> float:
        """The wait before the next retry (and count one more failure)."""
        d = min(self.maximum, self.initial * 2**self._failures)
        self._failures = min(self._failures + 1, 62)
        return self._rng.uniform(d / 2, d)

    def reset(self) -> None:
        """Forget past failures (after a success)."""
        self._failures = 0


def _seconds_left(expires_at: Any, date_header: str | None) -> float:
    """Seconds until ``expires_at``, by the coordinator's clock when its Date header is there."""
    import datetime as dt

    try:
        expires = parse_time(str(expires_at))
        now = email.utils.parsedate_to_datetime(date_header) if date_header else dt.datetime.now(dt.UTC)
        return (expires - now).total_seconds()
    except (ValueError, TypeError):
        return 0.0


class CoordinatorClient:
    """The site endpoints of the coordinator's API (:mod:`jipkit.protocol.api`).

    Parameters
    ----------
    fed : FederationConfig
        URL, CA bundle and proxy.
    token : str or None
        The site token, sent as ``Authorization: Bearer``; never logged, never in a URL.
        None only to enrol (the enrol token authenticates that request).
    transport : httpx.BaseTransport, optional
        For tests.
    """

    def __init__(
        self, fed: FederationConfig, token: str | None, *, transport: httpx.BaseTransport | None = None
    ):
        verify: ssl.SSLContext | bool = True
        if fed.ca_bundle is not None:
            try:
                verify = ssl.create_default_context(cafile=str(fed.ca_bundle))
            except (OSError, ssl.SSLError) as err:
                raise ConfigError(
                    f"federation.ca_bundle {fed.ca_bundle} cannot be used ({err}): expected a PEM file "
                    "of certificate authorities."
                ) from err
        headers = {"User-Agent": "jip-site-runner/1"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=fed.coordinator_url + API,
            headers=headers,
            verify=verify,
            proxy=fed.https_proxy,
            transport=transport,
            trust_env=False,
            timeout=httpx.Timeout(30.0, read=LONG_POLL_MAX_S + 15.0),
        )

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kw)
        except httpx.HTTPError as err:
            raise CoordinatorError(f"Cannot reach the coordinator ({type(err).__name__}: {err}).") from err

    @staticmethod
    def _fail(resp: httpx.Response, what: str) -> CoordinatorError:
        try:
            body = resp.json()
            detail = body.get("detail") if isinstance(body, dict) else None
        except ValueError:
            detail = None
        return CoordinatorError(
            f"{what}: HTTP {resp.status_code} ({detail or resp.reason_phrase}).", resp.status_code
        )

    def enrol(self, site: str, enrol_token: str, public_key: str) -> dict[str, Any]:
        """``POST /sites/enrol``: the answer's JSON object (site token and coordinator keys)."""
        resp = self._request(
            "POST", "/sites/enrol", json={"site": site, "enrol_token": enrol_token, "public_key": public_key}
        )
        if resp.status_code != 200:
            raise self._fail(resp, "The coordinator refused the enrolment")
        try:
            body = resp.json()
        except ValueError as err:
            raise CoordinatorError(
                "The coordinator answered the enrolment with something that is not JSON."
            ) from err
        if not isinstance(body, dict):
            raise CoordinatorError(
                "The coordinator answered the enrolment with something that is not an object."
            )
        return body

    def next_job(self, wait_s: float) -> Claim | None:
        """Long-poll for this site's next job (at most 25 s); None when there is none."""
        wait = max(0, min(int(wait_s), LONG_POLL_MAX_S))
        resp = self._request("GET", "/site/jobs/next", params={"wait": wait})
        if resp.status_code == 204:
            return None
        if resp.status_code != 200:
            raise self._fail(resp, "Asking for the next job failed")
        try:
            body = resp.json()
            envelope = body["envelope"]
        except (ValueError, KeyError, TypeError) as err:
            raise CoordinatorError(
                "The coordinator answered the poll with something that is not a job."
            ) from err
        return Claim(envelope, _seconds_left(body.get("lease_expires_at"), resp.headers.get("date")))

    def renew(self, job_id: str, attempt: int) -> float:
        """Renew a lease; return its seconds left.  Raises :class:`LeaseEnded` on 409."""
        resp = self._request("POST", f"/site/jobs/{job_id}/lease", json={"attempt": attempt})
        if resp.status_code == 409:
            try:
                why = str(resp.json().get("reason") or "lease_lost")
            except (ValueError, AttributeError):
                why = "lease_lost"
            raise LeaseEnded("cancelled" if why == "cancelled" else "lease_lost")
        if resp.status_code != 200:
            raise self._fail(resp, "Renewing the lease failed")
        try:
            expires = resp.json().get("lease_expires_at")
        except (ValueError, AttributeError):
            expires = None
        return _seconds_left(expires, resp.headers.get("date"))

    def held(self, job_id: str, attempt: int) -> str:
        """Tell the coordinator that the job's result waits here for release.

        Returns
        -------
        str
            ``acknowledged``, or ``rejected`` (409: the attempt lost its lease, or the run
            was cancelled; another 4xx).

        Raises
        ------
        CoordinatorError
            No answer, or an answer worth retrying (5xx, 408, 429).
        """
        resp = self._request("POST", f"/site/jobs/{job_id}/held", json={"attempt": attempt})
        if resp.status_code == 200:
            return "acknowledged"
        if resp.status_code in _RETRY_STATUSES:
            raise self._fail(resp, "Telling the coordinator that the job is held failed")
        log.warning("job %s: %s", job_id, self._fail(resp, "The coordinator refused the hold"))
        return "rejected"

    def post_result(self, job_id: str, body: bytes) -> str:
        """Upload a signed result: ``acknowledged``, or ``rejected`` (409 or another 4xx).

        Raises
        ------
        CoordinatorError
            No answer, or an answer worth retrying (5xx, 408, 429): send the same bytes again.
        """
        resp = self._request(
            "POST", f"/site/jobs/{job_id}/result", content=body, headers={"Content-Type": "application/json"}
        )
        if resp.status_code == 200:
            return "acknowledged"
        if resp.status_code in _RETRY_STATUSES:
            raise self._fail(resp, "Uploading the result failed")
        err = self._fail(resp, "The coordinator refused the result")
        log.warning("job %s: %s", job_id, err)
        return "rejected"
