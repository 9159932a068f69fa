"""The coordinator's HTTP API: paths shared by the service, the runner and the clients.

All bodies are JSON.  Every request carries ``Authorization: Bearer <token>``: a user's
API token or a site's token (never in a URL).  Errors answer
``{"detail": "<what failed and what to do>", "reason": "<code>"}`` with a 4xx status.

Besides the codes named below: 401 ``unauthenticated``, 403 ``forbidden`` or
``wrong_site`` (a site's token used for another site's job), 404 ``not_found``, 413
``request_too_large``, 422 ``request_invalid``.  ``GET /keys`` needs any valid token.

Sites (outbound only: a site's runner calls the coordinator, never the reverse)
------------------------------------------------------------------------------
``POST /api/v1/sites/enrol``            ``{site, enrol_token, public_key}`` (no bearer:
    the one-time enrol token authenticates) -> ``{site_token, coordinator_keys:
    {key_id: public_key}}``.  The site token is shown once; the coordinator keeps its
    SHA-256 only.  The site's public key is pinned by the coordinator.
``GET  /api/v1/site/jobs/next?wait=S``  long poll (S <= 25): ``200 {envelope, lease_expires_at}``
    claims the oldest queued job of this site (a new attempt holds the lease), or ``204``.
Lease times are the coordinator's clock only; a runner measures what is left of its
lease against the ``Date`` header of the coordinator's answers.

``POST /api/v1/site/jobs/{job_id}/lease``   ``{attempt}`` -> ``200 {lease_expires_at}``
    renews the lease; ``409 {reason: lease_lost | cancelled}`` tells the runner to stop.
``POST /api/v1/site/jobs/{job_id}/result``  a signed result -> ``200 {accepted: true,
    duplicate: bool}``; ``409`` when another result was accepted first or the attempt does
    not hold the lease (nor the hold, below); ``400`` when the signature or format is wrong.
``POST /api/v1/site/jobs/{job_id}/held``    ``{attempt}`` -> ``200 {held: true, duplicate:
    bool}``: the attempt holding the lease ran the job, and its result waits at the site
    for a data steward's release.  The job becomes ``held``: its lease no longer expires,
    and the coordinator shows it as "held at site".  A result from the held attempt is
    accepted later without a lease (the released result, or ``failed`` /
    ``release_rejected``).  ``409 {reason: lease_lost | cancelled}`` as for a renewal.
``POST /api/v1/site/jobs/{job_id}/decline`` ``{attempt, reason}`` -> ``200``.

Users
-----
``POST /api/v1/auth/token``            ``{username, password}`` -> ``{token}``
``GET  /api/v1/keys``                  the coordinator's public signing keys
``POST /api/v1/studies``               (admin) ``{name, review_quorum, sites}``
``GET  /api/v1/studies``               (any user) the caller's studies (admins: all): ``{name,
                                       review_quorum, sites, roles}``
``GET  /api/v1/studies/{study}/runs``  (member) the study's runs, newest first, with job counts
``POST /api/v1/studies/{study}/members`` (admin) ``{username, role}``; roles: scientist,
    reviewer, coordinator (per study), admin (global)
``POST /api/v1/studies/{study}/notebooks`` (scientist) ``{notebook}`` -> ``{version_hash,
    parameters}``
``GET  /api/v1/studies/{study}/notebooks`` (any member) versions with review state
``GET  /api/v1/notebooks/{version_hash}``  (member) the canonical notebook and reviews
``POST /api/v1/notebooks/{version_hash}/reviews`` (reviewer, not the author)
    ``{decision: approve | reject, comment}``
``POST /api/v1/runs``                  (coordinator) ``{study, version_hash, parameters,
    sites, deadline_s}`` -> ``{run_id, jobs}``
``GET  /api/v1/runs/{run_id}``         (member) run and per-site job states (``held``: the
    result waits at the site for a data steward's release)
``POST /api/v1/runs/{run_id}/cancel``  (coordinator) queued, leased and held jobs end ``cancelled``
``GET  /api/v1/runs/{run_id}/results`` (member) per-site results and the combined records;
    each site entry carries ``release`` (the steward decision, or null) and ``provenance``:
    ``{present, version_hash, parameters_sha256, parameters_match, environment_digest,
    series, signature: {ok, key_id}, audit: {status, problem, first_seq, entries, head},
    warnings: [...]}`` where ``audit.status`` is ``continuous``, ``first`` (nothing to compare
    with yet), ``gap`` (entries never reported in between), ``break`` (the site's audit
    log was rewritten or truncated) or ``missing`` (no provenance)
"""

from __future__ import annotations

from typing import Final

API: Final = "/api/v1"
LONG_POLL_MAX_S: Final = 25
