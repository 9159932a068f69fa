"""A fake coordinator speaking the site half of the API contract, as an httpx transport.

It follows :mod:`jipkit.protocol.api` for the runner's four calls (next, lease, result,
enrol) with leases, attempts and exactly-once results, and lets a test script failures:
a lease answered 409, result uploads answered 503 first, a long poll that waits.  The
integration test runs the runner against the real coordinator over HTTP.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import threading
import time
from typing import Any

import httpx

from jipkit.errors import SignatureError
from jipkit.protocol.signing import key_id, verify_document


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeCoordinator:
    """Hands out queued envelopes and records what the runner sends back.

    Attributes
    ----------
    posts : list of (job_id, bytes)
        Every result upload, as received.
    accepted : dict
        The accepted result's bytes per job.
    renewals : int
        Lease renewals received.
    lease_reply : str or None
        When set (``lease_lost`` or ``cancelled``), lease renewals get 409 with that reason.
    post_failures : list of int
        Statuses to answer the next result uploads with, in order (then normal answers).
    requests : list of httpx.Request
    """

    def __init__(self, site_public_key: str, site_token: str, lease_s: float = 1.5, site: str = "site-a"):
        self.site_keys = {key_id(site_public_key): site_public_key}
        self.token, self.lease_s, self.site = site_token, lease_s, site
        self.lock = threading.Lock()
        self.queue: list[dict[str, Any]] = []
        self.leases: dict[str, int] = {}
        self.posts: list[tuple[str, bytes]] = []
        self.accepted: dict[str, bytes] = {}
        self.renewals = 0
        self.lease_reply: str | None = None
        self.post_failures: list[int] = []
        self.requests: list[httpx.Request] = []
        self.poll_sleep = 0.0

    def offer(self, envelope: dict[str, Any]) -> None:
        """Queue an envelope for the site's next poll."""
        with self.lock:
            self.queue.append(envelope)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _answer(self, status: int, body: Any = None) -> httpx.Response:
        headers = {"Date": email.utils.format_datetime(dt.datetime.now(dt.UTC), usegmt=True)}
        if body is None:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
        path = request.url.path
        if path == "/api/v1/sites/enrol":
            return self._answer(404, {"detail": "use enrol_transport", "reason": "not_found"})
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return self._answer(401, {"detail": "bad token", "reason": "unauthorized"})
        if path == "/api/v1/site/jobs/next":
            return self._next(float(request.url.params.get("wait", "0")))
        job_id = path.split("/")[-2]
        if path.endswith("/lease"):
            return self._lease(job_id, json.loads(request.content)["attempt"])
        if path.endswith("/result"):
            return self._result(job_id, request.content)
        return self._answer(404, {"detail": path, "reason": "not_found"})

    def _next(self, wait: float) -> httpx.Response:
        with self.lock:
            env = self.queue.pop(0) if self.queue else None
            if env is not None:
                self.leases[env["job_id"]] = env["attempt"]
        if env is None:
            time.sleep(min(wait, self.poll_sleep))
            return self._answer(204)
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.lease_s)
        return self._answer(200, {"envelope": env, "lease_expires_at": _iso(expires)})

    def _lease(self, job_id: str, attempt: int) -> httpx.Response:
        with self.lock:
            self.renewals += 1
            if self.lease_reply is not None or self.leases.get(job_id) != attempt:
                return self._answer(409, {"detail": "stop", "reason": self.lease_reply or "lease_lost"})
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.lease_s)
        return self._answer(200, {"lease_expires_at": _iso(expires)})

    def _result(self, job_id: str, body: bytes) -> httpx.Response:
        with self.lock:
            self.posts.append((job_id, body))
            if self.post_failures:
                return self._answer(self.post_failures.pop(0), {"detail": "scripted", "reason": "scripted"})
            doc = json.loads(body)
            try:
                verify_document(doc, self.site_keys)
            except SignatureError as err:
                return self._answer(400, {"detail": str(err), "reason": "signature_invalid"})
            if job_id in self.accepted:
                if self.accepted[job_id] == body:
                    return self._answer(200, {"accepted": True, "duplicate": True})
                return self._answer(409, {"detail": "another result was accepted", "reason": "conflict"})
            if self.leases.get(job_id) != doc.get("attempt"):
                return self._answer(
                    409, {"detail": "not the attempt holding the lease", "reason": "lease_lost"}
                )
            self.accepted[job_id] = body
            return self._answer(200, {"accepted": True, "duplicate": False})


def enrol_transport(
    coordinator_public_keys: dict[str, str], site_token: str, seen: list[httpx.Request]
) -> Any:
    """A transport answering ``POST /api/v1/sites/enrol`` with a site token and keys."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = json.loads(request.content)
        if body.get("enrol_token") != "one-time":
            return httpx.Response(
                403, json={"detail": "The enrol token is not valid.", "reason": "forbidden"}
            )
        return httpx.Response(
            200, json={"site_token": site_token, "coordinator_keys": coordinator_public_keys}
        )

    return httpx.MockTransport(handle)
