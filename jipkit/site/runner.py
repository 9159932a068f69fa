"""The site runner: long-poll the coordinator for jobs, verify, run, sign, upload.

One job at a time, outbound HTTP(S) only::

    GET  /site/jobs/next?wait=S      -> an envelope and a lease (or 204 after S seconds)
    check_envelope(...)              -> a refusal reason, or run it
    POST /site/jobs/{id}/lease       every few seconds while it runs and uploads
    POST /site/jobs/{id}/result      signed by the site's key; the same bytes until answered

The site token travels in the ``Authorization`` header only.  Failed requests are retried
after a jittered exponential back-off.  A lease answered with 409 (``lease_lost`` or
``cancelled``) stops the run: a lost lease sends nothing (the coordinator leases the job
again, to a new attempt), a cancelled run sends a ``failed``/``cancelled`` result.
SIGTERM or SIGINT stops the runner: the current kernel is killed, nothing is sent for it
(its lease expires and the coordinator leases it again), and a second signal exits at once.
Results that were signed but not acknowledged are kept in the state database and sent
again on the next start.

A succeeded result that needs a data steward's release (:mod:`jipkit.site.release`) is
kept unsigned in the state instead, and the coordinator is told the job is held
(``POST /site/jobs/{id}/held``); once stewards decide, :meth:`Runner.flush_releases`
(every loop) signs it, and the upload queue sends it.  Every result carries its
provenance (:mod:`jipkit.site.provenance`), the site audit log's entries since the last
acknowledged result included, under the site's signature.

Each job's kernel runs in the sandbox of :mod:`jipkit.site.sandbox` (checked before each
job) and reads the site's data only through the data channel of
:mod:`jipkit.site.dataserver`.  Where the sandbox cannot be used, the job is refused
(``isolation_unavailable``) unless ``policy.allow_unisolated`` is true; every result
says which it was: ``"isolation": "sandbox"`` or ``"none"`` (``null`` for refusals).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from jipkit.config import FolderSourceConfig, SiteConfig
from jipkit.data.site import Site
from jipkit.errors import ConfigError, CoordinatorError
from jipkit.protocol.canonical import canonical_json
from jipkit.protocol.messages import RESULT_TYPE, utcnow_iso
from jipkit.protocol.notebook import to_nbformat
from jipkit.protocol.signing import SigningKey, sign_document
from jipkit.site.client import Backoff, Claim, CoordinatorClient, LeaseEnded
from jipkit.site.execute import Outcome, StopFlag, check_kernel, run_notebook
from jipkit.site.fedconfig import federation_of
from jipkit.site.provenance import environment_digest, new_manifest, provenance, series_read
from jipkit.site.release import hold_reasons, redaction_report, seal_decided
from jipkit.site.sandbox import SandboxSupport, probe, sweep_groups
from jipkit.site.state import Prior, RunnerState, job_digest
from jipkit.site.verify import AUTHENTICATED_REFUSALS, check_envelope, envelope_ids

# Backoff, Claim, CoordinatorClient and LeaseEnded live in jipkit.site.client; they are
# re-exported here for the code that imports them from the runner.
__all__ = ["Backoff", "Claim", "CoordinatorClient", "JobReport", "LeaseEnded", "Runner"]

log = logging.getLogger("jipkit.site")

_MIN_EMPTY_POLL_S = 0.5


@dataclass(frozen=True)
class JobReport:
    """What the runner did with one job.

    Attributes
    ----------
    status : str
        ``succeeded``, ``failed``, ``refused``, ``held`` (it ran; its result waits here for
        a data steward's release), or ``abandoned`` (the lease was lost or the runner
        stopped mid-job: nothing sent, the coordinator leases the job again).
    reason : str or None
        The refusal or failure reason code (or ``lease_lost`` / ``stopping``).
    delivered : bool
        Whether the coordinator acknowledged the result (for ``held``: that the job is held).
    """

    job_id: str | None
    attempt: int | None
    status: str
    reason: str | None
    delivered: bool


class _LeaseKeeper(threading.Thread):
    """Renews a job's lease until stopped; sets the job's StopFlag when the lease ends."""

    def __init__(
        self,
        client: CoordinatorClient,
        job_id: str,
        attempt: int,
        lease_s: float,
        cap_s: float,
        flag: StopFlag,
    ):
        super().__init__(name=f"jip-lease-{job_id}", daemon=True)
        self._client, self._job, self._attempt, self._cap, self._flag = client, job_id, attempt, cap_s, flag
        self._interval = self._pick(lease_s)
        self._done = threading.Event()

    def _pick(self, lease_s: float) -> float:
        return min(self._cap, max(0.2, lease_s / 3))

    def run(self) -> None:
        while not self._done.wait(self._interval):
            try:
                self._interval = self._pick(self._client.renew(self._job, self._attempt))
            except LeaseEnded as err:
                log.warning("job %s attempt %s: %s", self._job, self._attempt, err)
                self._flag.set(err.why)
                return
            except CoordinatorError as err:  # keep going: the lease may still hold
                log.warning("job %s: renewing the lease failed (%s); trying again", self._job, err)
                self._interval = min(self._interval, 2.0)

    def stop(self) -> None:
        self._done.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join()


class _Interrupted(BaseException):
    """Raised by the signal handler to leave a long poll at once."""


@dataclass
class _Checks:
    """What the output checks decided about a succeeded run (read by the release queue)."""

    status: str
    needs_release: bool
    release_reasons: list[Any]
    redactions: list[dict[str, Any]]


class Runner:
    """A site's runner.

    Parameters
    ----------
    config : SiteConfig
        The site's configuration, with a ``[federation]`` table.
    transport : httpx.BaseTransport, optional
        For tests.
    rng : random.Random, optional
        For the back-off's jitter (tests).

    Raises
    ------
    ConfigError
        No federation table, the key or token cannot be read, the kernel is not
        installed.
    """

    def __init__(
        self,
        config: SiteConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
    ):
        self.config = config
        self.fed = federation_of(config)
        spec_dir = check_kernel(self.fed.kernel_name, self.fed.kernel_dirs or None)
        try:
            self._kernel_argv = [str(a) for a in json.loads((spec_dir / "kernel.json").read_text())["argv"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"The kernelspec in {spec_dir} cannot be read: {err}") from err
        self.key = SigningKey.load(self.fed.key_path)
        token = self.fed.site_token()
        self.pinned = self.fed.pinned_keys()
        if not self.pinned:
            log.warning("no coordinator key is pinned: every job will be refused (unknown_key)")
        self.client = CoordinatorClient(self.fed, token, transport=transport)
        self._lease_client = CoordinatorClient(self.fed, token, transport=transport)
        self.state = RunnerState(self.fed.state_db)
        self.environment = environment_digest(
            check_kernel(self.fed.kernel_name, self.fed.kernel_dirs or None)
        )
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._current: StopFlag | None = None
        self._polling = False
        self._matcher: Any = None  # the site's identifier matcher, built on the first result
        self.sandbox = self.check_isolation()
        if not self.sandbox.available:
            log.warning(
                "%s: %s",
                self.sandbox.describe(),
                "jobs run without it (policy.allow_unisolated)"
                if self.fed.policy.allow_unisolated
                else "every job will be refused (isolation_unavailable)",
            )
        for rec in self.state.interrupted():
            log.warning(
                "job %s attempt %s was interrupted here; it runs again when re-leased",
                rec.job_id,
                rec.attempt,
            )

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close connections and the state database."""
        self.client.close()
        self._lease_client.close()
        self.state.close()

    # -- isolation ----------------------------------------------------------------------

    def protected_paths(self) -> list[Path]:
        """What a job's kernel must never see: keys, token, state, configuration, data, runs."""
        fed, cfg = self.fed, self.config
        paths = [
            fed.key_path,
            None if fed.token_env else fed.token_path,
            fed.pinned_keys_file,
            fed.state_db,
            fed.workdir,
            fed.ca_bundle,
            cfg.path,
            cfg.index_path,
            cfg.cache_dir,
            *(s.path for s in cfg.sources if isinstance(s, FolderSourceConfig)),
        ]
        return [p for p in paths if p is not None]

    def check_isolation(self) -> SandboxSupport:
        """Probe the sandbox (see :func:`jipkit.site.sandbox.probe`); log when that changes.

        The first check (at start) runs a trial kernel in the sandbox (about 50 ms); later
        ones, before each job, only check the binaries, the cgroup and the view (< 1 ms).
        """
        tag = hashlib.sha256(str(self.fed.state_db.resolve()).encode()).hexdigest()[:8]
        previous: SandboxSupport | None = getattr(self, "sandbox", None)
        trial = previous is None or not previous.available
        support = probe(
            self.fed.sandbox, self._kernel_argv, protected=self.protected_paths(), tag=tag, trial=trial
        )
        if previous is None:
            log.info("%s", support.describe())
            sweep_groups(support)  # of this runner's runs that a crash left behind
        elif previous.available != support.available:
            log.warning("the sandbox changed: %s", support.describe())
        self.sandbox = support
        return support

    # -- the loop -----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop after the current step (a running notebook is killed, its job abandoned)."""
        self._stop.set()
        if self._current is not None:
            self._current.set("stopping")

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (or a SIGTERM/SIGINT received)."""
        return self._stop.is_set()

    def run_once(self, wait_s: float | None = None) -> JobReport | None:
        """Send pending results, then poll once and handle the job, if any.

        Raises
        ------
        CoordinatorError
            The coordinator could not be reached or answered with an error.
        """
        self.flush_releases()
        self.flush_pending()
        wait = self.fed.poll_wait_s if wait_s is None else wait_s
        self._polling = True
        try:
            claim = self.client.next_job(wait)
        finally:
            self._polling = False
        return None if claim is None else self.handle(claim)

    def run(self) -> None:
        """Poll and run jobs until SIGTERM/SIGINT or :meth:`stop`."""
        restore = self._install_signal_handlers()
        backoff = Backoff(self.fed.backoff_initial_s, self.fed.backoff_max_s, self._rng)
        log.info("site %s: runner started, polling %s", self.config.name, self.fed.coordinator_url)
        try:
            while not self._stop.is_set():
                try:
                    t0 = time.monotonic()
                    if self.run_once() is None:  # an empty poll that came back early: no hot loop
                        self._stop.wait(_MIN_EMPTY_POLL_S - (time.monotonic() - t0))
                    backoff.reset()
                except CoordinatorError as err:
                    delay = backoff.next()
                    log.warning("%s Retrying in %.1f s.", err, delay)
                    self._stop.wait(delay)
                except Exception:  # a bug or a full disk: log it, keep serving after a pause
                    delay = backoff.next()
                    log.exception("the runner failed; retrying in %.1f s", delay)
                    self._stop.wait(delay)
        except _Interrupted:
            pass
        finally:
            restore()
            log.info("site %s: runner stopped", self.config.name)

    def _install_signal_handlers(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: stopping (a second one exits at once)", signal.Signals(signum).name)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self.stop()
            if self._polling:
                raise _Interrupted

        for s in previous:
            signal.signal(s, handler)

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)

        return restore

    # -- one job ------------------------------------------------------------------------

    def handle(self, claim: Claim) -> JobReport:
        """Verify, run (or refuse) and report one claimed job."""
        env = claim.envelope
        ids = envelope_ids(env)
        if ids is None:
            log.error("the coordinator sent a job without a usable job_id and attempt; ignoring it")
            self.state.audit("unusable_job")
            return JobReport(None, None, "refused", "signature_invalid", False)
        job_id, attempt = ids
        flag = StopFlag()
        keeper = _LeaseKeeper(
            self._lease_client, job_id, attempt, claim.lease_s, self.fed.lease_renew_s, flag
        )
        keeper.start()
        self._current = flag
        if self._stop.is_set():
            flag.set("stopping")
        try:
            reason = check_envelope(
                env, site=self.config.name, pinned_keys=self.pinned, policy=self.fed.policy, state=self.state
            )
            if reason is not None:
                body, recorded = self._refuse(env, job_id, attempt, reason)
                return JobReport(job_id, attempt, "refused", reason, self._upload(job_id, body, recorded))
            if self.state.prior(job_id, attempt, job_digest(env)) is Prior.REDELIVER:
                status, why, body = self._redeliver(env)
                return JobReport(job_id, attempt, status, why, self._upload(job_id, body, True))
            if self.state.prior(job_id, attempt, job_digest(env)) is Prior.HELD:
                self.state.held_again(env)
                return JobReport(job_id, attempt, "held", None, self._notify_held(job_id, attempt))
            support = self.check_isolation()
            if not support.available and not self.fed.policy.allow_unisolated:
                reason = "isolation_unavailable"
                body, recorded = self._refuse(env, job_id, attempt, reason)
                return JobReport(job_id, attempt, "refused", reason, self._upload(job_id, body, recorded))
            self.state.start(env)
            outcome = self._execute(env, flag, support if support.available else None)
            if flag.reason in ("lease_lost", "stopping"):
                self.state.audit("abandoned", job_id, attempt=attempt, reason=flag.reason)
                return JobReport(job_id, attempt, "abandoned", flag.reason, False)
            outcome, checks = self._disclose(env, outcome)
            doc = self._result(env, outcome)
            if checks is not None:
                doc["redactions"] = checks.redactions
            held = hold_reasons(self.fed.policy, env.get("study"), checks or outcome)
            if held:
                self.state.hold(
                    env,
                    outcome.status,
                    outcome.reason,
                    doc,
                    reasons=held,
                    redactions=redaction_report(checks or outcome, doc),
                    stewards_needed=self.fed.policy.release_stewards,
                )
                log.warning(
                    "job %s: its result waits for release (%s): `jip site release list`",
                    job_id,
                    ", ".join(held),
                )
                return JobReport(job_id, attempt, "held", None, self._notify_held(job_id, attempt))
            body = self._seal(doc, record=True)
            self.state.finish(env, outcome.status, outcome.reason, body)
            return JobReport(
                job_id, attempt, outcome.status, outcome.reason, self._upload(job_id, body, True)
            )
        finally:
            self._current = None
            keeper.stop()

    def _execute(self, env: Mapping[str, Any], flag: StopFlag, sandbox: SandboxSupport | None) -> Outcome:
        deadline = min(float(env["deadline_s"]), self.fed.max_deadline_s)
        return run_notebook(
            env["notebook"],
            env["parameters"],
            workdir=self.fed.workdir,
            deadline_s=deadline,
            kernel_name=self.fed.kernel_name,
            kernel_dirs=self.fed.kernel_dirs or None,
            extra_env=self._data_env() if sandbox is None else None,
            env_passthrough=self.fed.kernel_env,
            stop=flag,
            label=f"{env['job_id']}-a{env['attempt']}",
            sandbox=sandbox,
            data=Site(self.config),
        )

    def _disclose(self, env: Mapping[str, Any], outcome: Outcome) -> tuple[Outcome, _Checks | None]:
        """Apply the site's output checks to a succeeded run (:mod:`jipkit.site.disclosure`).

        The redaction report ends with what the run withheld (stderr, per cell:
        :attr:`~jipkit.site.execute.Outcome.withheld`).  Fails closed: when the checks
        themselves fail, nothing of the run leaves.
        """
        if outcome.status != "succeeded":
            return outcome, None
        from jipkit.site.disclosure import check_result

        policy = self.fed.policy.output
        try:
            checked = check_result(
                outcome.outputs,
                outcome.records,
                policy=policy,
                matcher=self._identifier_matcher(),
                notebook_source="\n\n".join(
                    c["source"] for c in env["notebook"]["cells"] if c["cell_type"] == "code"
                ),
                parameters=env["parameters"],
            )
        except Exception:
            log.exception("job %s: the output checks failed; nothing of the run leaves", env.get("job_id"))
            failed = replace(outcome, status="failed", reason="internal_error", outputs=[], records=[])
            return failed, None
        # what the checks removed or changed, then what the run never handed over (stderr)
        report = checked.report() + [dict(entry) for entry in outcome.withheld]
        if report:
            log.warning(
                "job %s: the output checks removed or changed %d item(s): %s",
                env.get("job_id"),
                sum(int(r.get("count", 1)) for r in report),
                ", ".join(sorted({str(r["rule"]) for r in report})),
            )
        checks = _Checks(
            status=outcome.status,
            needs_release=checked.needs_release,
            release_reasons=list(checked.release_reasons),
            redactions=report,
        )
        return replace(outcome, outputs=checked.outputs, records=checked.records), checks

    def _identifier_matcher(self) -> Any:
        """The matcher of this site's identifying values (built once, cached on disk)."""
        if self._matcher is None:
            from jipkit.data.index import Index
            from jipkit.site.disclosure import cached_matcher

            Index(self.config.index_path).close()  # a site without data yet: an empty index

            p = self.fed.policy.output
            self._matcher = cached_matcher(
                self.config.index_path,
                min_length=p.min_identifier_length,
                min_numeric_length=p.min_numeric_identifier_length,
                cache_dir=self.config.cache_dir / "disclosure",
            )
        return self._matcher

    def _data_env(self) -> dict[str, str]:
        """Where an unisolated kernel finds the site's configuration: no secrets.

        ``jip.connect()`` uses the data channel first; a sandboxed kernel gets only that.
        """
        if self.config.path is not None:
            return {"JIP_CONFIG": str(self.config.path)}
        return {
            "JIP_NAME": self.config.name,
            "JIP_INDEX_PATH": str(self.config.index_path),
            "JIP_CACHE_DIR": str(self.config.cache_dir),
        }

    def _sign(self, doc: Mapping[str, Any]) -> bytes:
        return canonical_json(sign_document(doc, self.key))

    def _seal(self, doc: dict[str, Any], *, record: bool) -> bytes:
        """Sign ``doc`` with the audit entries since the last acknowledged result in its provenance."""
        doc["provenance"] = {
            **doc.get("provenance", {}),
            "audit": self.state.audit_section(doc["job_id"], record=record),
        }
        return self._sign(doc)

    def _provenance(self, env: Mapping[str, Any], outcome: Outcome) -> dict[str, Any]:
        """What ran, with what, on which data (:mod:`jipkit.site.provenance`); keeps the salt here."""
        manifest = new_manifest(series_read(outcome))
        self.state.keep_notebook(env["version_hash"], env["notebook"])
        self.state.keep_manifest(
            env["job_id"], env["attempt"], manifest.salt, manifest.uids, manifest.salt_sha256
        )
        return provenance(env["version_hash"], env["parameters"], self.environment, manifest)

    def _result(self, env: Mapping[str, Any], outcome: Outcome) -> dict[str, Any]:
        return {
            "type": RESULT_TYPE,
            "job_id": env["job_id"],
            "attempt": env["attempt"],
            "run_id": env["run_id"],
            "site": self.config.name,
            "version_hash": env["version_hash"],
            "status": outcome.status,
            "reason": outcome.reason,
            "failed_cell": outcome.failed_cell,
            "exception": outcome.exception,
            "outputs": outcome.outputs,
            "records": outcome.records,
            "started_at": outcome.started_at,
            "finished_at": outcome.finished_at,
            "kernel": outcome.kernel,
            "isolation": outcome.isolation,
            "provenance": self._provenance(env, outcome),
            "release": None,
        }

    def _refuse(self, env: Any, job_id: str, attempt: int, reason: str) -> tuple[bytes, bool]:
        """Sign a refusal; record it against the job ID only when the envelope is authentic."""
        now = utcnow_iso()

        def text(name: str) -> str | None:
            value = env.get(name) if isinstance(env, Mapping) else None
            return value if isinstance(value, str) else None

        doc = {
            "type": RESULT_TYPE,
            "job_id": job_id,
            "attempt": attempt,
            "run_id": text("run_id"),
            "site": self.config.name,
            "version_hash": text("version_hash"),
            "status": "refused",
            "reason": reason,
            "failed_cell": None,
            "exception": None,
            "outputs": [],
            "records": [],
            "started_at": now,
            "finished_at": now,
            "kernel": None,
            "isolation": None,
            "provenance": provenance(
                text("version_hash"),
                env.get("parameters") if isinstance(env, Mapping) else None,
                self.environment,
                None,
            ),
            "release": None,
        }
        authentic = reason in AUTHENTICATED_REFUSALS or reason == "isolation_unavailable"
        recorded = authentic and reason != "replay"
        body = self._seal(doc, record=recorded)
        if recorded:
            self.state.finish(env, "refused", reason, body)
        else:  # unauthenticated, another site's, or a replay: the job ID's record stays as it is
            self.state.audit("refused", job_id, attempt=attempt, reason=reason)
        if reason == "policy_unapproved":
            self._keep_for_approval(env)
        return body, recorded

    def _keep_for_approval(self, env: Mapping[str, Any]) -> None:
        """Write the unapproved version where the site's operator can read it."""
        path = self.fed.workdir / "pending-approval" / f"{env['version_hash']}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(to_nbformat(env["notebook"]), indent=1, ensure_ascii=False), encoding="utf-8"
        )
        log.warning(
            "version %s waits for local approval: read %s, then `jip site approve`", env["version_hash"], path
        )

    def _redeliver(self, env: Mapping[str, Any]) -> tuple[str, str | None, bytes]:
        rec = self.state.job(env["job_id"])
        assert rec is not None and rec.result is not None
        doc = json.loads(rec.result)
        doc["attempt"] = env["attempt"]
        body = self._sign(doc)
        self.state.finish(env, rec.state, rec.reason, body)
        self.state.audit("redelivered", env["job_id"], attempt=env["attempt"])
        log.info(
            "job %s: already %s here; sending that result for attempt %s",
            rec.job_id,
            rec.state,
            env["attempt"],
        )
        return rec.state, rec.reason, body

    # -- uploads ------------------------------------------------------------------------

    def _upload(self, job_id: str, body: bytes, recorded: bool) -> bool:
        """Send the same bytes until the coordinator answers (or the runner stops).

        ``recorded``: ``body`` is the result stored for ``job_id``, whose upload state to update.
        """
        backoff = Backoff(self.fed.backoff_initial_s, self.fed.backoff_max_s, self._rng)
        while True:
            try:
                outcome = self.client.post_result(job_id, body)
            except CoordinatorError as err:
                if self._stop.is_set():
                    log.warning(
                        "job %s: result not delivered (%s); it is sent on the next start", job_id, err
                    )
                    return False
                delay = backoff.next()
                log.warning("job %s: %s Sending it again in %.1f s.", job_id, err, delay)
                self._stop.wait(delay)
                continue
            if recorded:
                self.state.mark_upload(job_id, outcome)
            return outcome == "acknowledged"

    def _notify_held(self, job_id: str, attempt: int) -> bool:
        """Tell the coordinator the job is held, until it answers (or the runner stops)."""
        backoff = Backoff(self.fed.backoff_initial_s, self.fed.backoff_max_s, self._rng)
        while True:
            try:
                outcome = self.client.held(job_id, attempt)
            except CoordinatorError as err:
                if self._stop.is_set():
                    log.warning("job %s: the coordinator does not know it is held (%s)", job_id, err)
                    return False
                delay = backoff.next()
                log.warning("job %s: %s Trying again in %.1f s.", job_id, err, delay)
                self._stop.wait(delay)
                continue
            self.state.mark_held_notice(job_id, outcome)
            return outcome == "acknowledged"

    def flush_releases(self) -> int:
        """Sign the results whose release the stewards decided, for the upload queue; return how many."""
        return len(seal_decided(self.state, self.key))

    def flush_pending(self) -> int:
        """Try once to send each result not yet answered; return how many were acknowledged."""
        sent = 0
        for rec in self.state.pending_uploads():
            assert rec.result is not None
            try:
                outcome = self.client.post_result(rec.job_id, rec.result)
            except CoordinatorError as err:
                log.warning("job %s: the pending result is still not delivered (%s)", rec.job_id, err)
                break
            self.state.mark_upload(rec.job_id, outcome)
            sent += outcome == "acknowledged"
        return sent
