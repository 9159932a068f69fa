"""The runner's loop against a fake coordinator: results, refusals, leases, retries, stops."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from jipkit.errors import ConfigError, CoordinatorError
from jipkit.protocol.signing import verify_document
from jipkit.site.client import Backoff, CoordinatorClient
from jipkit.site.runner import Runner
from tests.site.conftest import SiteFixture, processes_with, result_of, runs_in
from tests.site.fakes import FakeCoordinator


def runner(site: SiteFixture, fake: FakeCoordinator) -> Runner:
    return Runner(site.config(), transport=fake.transport(), rng=random.Random(0))


def verified(site: SiteFixture, body: bytes) -> dict[str, object]:
    doc = result_of(body)
    assert verify_document(doc, {site.key.key_id: site.key.public_b64}) == site.key.key_id
    return doc


def test_no_job_is_no_report(site: SiteFixture, fake: FakeCoordinator) -> None:
    with runner(site, fake) as r:
        assert r.run_once(wait_s=0) is None
    (req,) = fake.requests
    assert req.url.path == "/api/v1/site/jobs/next" and req.url.params["wait"] == "0"
    assert req.headers["authorization"] == f"Bearer {site.token}"
    assert site.token not in str(req.url)


def test_a_job_runs_and_its_signed_result_is_acknowledged(site: SiteFixture, fake: FakeCoordinator) -> None:
    env = site.envelope(parameters={"threshold": -7})
    fake.offer(env)
    fake.lease_s = 0.9  # renewed every 0.3 s while the notebook runs
    with runner(site, fake) as r:
        report = r.run_once(wait_s=0)
        assert report is not None
        assert (report.status, report.reason, report.delivered) == ("succeeded", None, True)
        rec = r.state.job(env["job_id"])
        assert rec is not None and (rec.state, rec.upload) == ("succeeded", "acknowledged")
        assert r.state.verify_audit() >= 2
    doc = verified(site, fake.accepted[env["job_id"]])
    assert doc["status"] == "succeeded" and doc["site"] == "site-a" and doc["attempt"] == 1
    assert doc["version_hash"] == env["version_hash"] and doc["kernel"] == "jip"
    assert [r["name"] for r in doc["records"]] == ["patients", "volume_mean"]  # type: ignore[attr-defined]
    assert b"source" not in fake.accepted[env["job_id"]]
    assert fake.renewals >= 1
    assert all("authorization" in req.headers for req in fake.requests)


def test_a_refused_job_never_runs_and_the_refusal_is_signed(site: SiteFixture, fake: FakeCoordinator) -> None:
    env = site.envelope()
    env["notebook"]["cells"][2]["source"] += "\nimport os"  # tampered after signing
    fake.offer(env)
    with runner(site, fake) as r:
        report = r.run_once(wait_s=0)
        assert report is not None and (report.status, report.reason) == ("refused", "signature_invalid")
        assert r.state.job(env["job_id"]) is None  # a forged envelope burns no job ID
    doc = verified(site, fake.accepted[env["job_id"]])
    assert (doc["status"], doc["reason"], doc["outputs"], doc["records"]) == (
        "refused",
        "signature_invalid",
        [],
        [],
    )
    assert runs_in(site) == []


def test_a_replayed_envelope_is_refused_without_running(site: SiteFixture, fake: FakeCoordinator) -> None:
    env = site.envelope()
    with runner(site, fake) as r:
        fake.offer(env)
        assert r.run_once(wait_s=0).status == "succeeded"  # type: ignore[union-attr]
        first = fake.accepted[env["job_id"]]
        fake.offer(env)
        report = r.run_once(wait_s=0)
        assert report is not None and (report.status, report.reason) == ("refused", "replay")
        assert len(runs_in(site)) == 1
        rec = r.state.job(env["job_id"])
        assert rec is not None and rec.upload == "acknowledged"  # the replay changed nothing
    assert fake.accepted[env["job_id"]] == first
    assert result_of(fake.posts[-1][1])["reason"] == "replay"


def test_a_lost_lease_abandons_the_run_and_a_new_attempt_runs_it_again(
    site: SiteFixture, fake: FakeCoordinator
) -> None:
    env = site.envelope("sleeps", parameters={"seconds": 1})
    fake.lease_s = 0.6
    fake.lease_reply = "lease_lost"
    fake.offer(env)
    with runner(site, fake) as r:
        t0 = time.monotonic()
        report = r.run_once(wait_s=0)
        assert report is not None and (report.status, report.reason) == ("abandoned", "lease_lost")
        assert time.monotonic() - t0 < 4  # killed at once, not run to the end
        assert fake.posts == []
        fake.lease_reply = None
        fake.offer(site.envelope("sleeps", parameters={"seconds": 1}, job_id=env["job_id"], attempt=2))
        report = r.run_once(wait_s=0)
        assert report is not None and (report.status, report.delivered) == ("succeeded", True)
    assert result_of(fake.accepted[env["job_id"]])["attempt"] == 2
    assert len(runs_in(site)) == 2


def test_a_cancelled_run_stops_and_says_so(site: SiteFixture, fake: FakeCoordinator) -> None:
    fake.lease_s = 0.6
    fake.lease_reply = "cancelled"
    env = site.envelope("sleeps", parameters={"seconds": 30})
    fake.offer(env)
    with runner(site, fake) as r:
        report = r.run_once(wait_s=0)
    assert report is not None and (report.status, report.reason) == ("failed", "cancelled")
    doc = result_of(fake.posts[-1][1])
    assert (doc["status"], doc["reason"]) == ("failed", "cancelled")


def test_uploads_are_retried_with_the_same_bytes_until_acknowledged(
    site: SiteFixture, fake: FakeCoordinator
) -> None:
    env = site.envelope(expires_in=-1)  # refused: quick, and the upload path is the same
    fake.offer(env)
    fake.post_failures = [503, 502, 500]
    with runner(site, fake) as r:
        report = r.run_once(wait_s=0)
        assert report is not None and report.delivered
        rec = r.state.job(env["job_id"])
        assert rec is not None and rec.upload == "acknowledged"
    bodies = {body for _, body in fake.posts}
    assert len(fake.posts) == 4 and len(bodies) == 1


def test_a_result_refused_with_409_is_redelivered_to_the_next_attempt_without_running_again(
    site: SiteFixture, fake: FakeCoordinator
) -> None:
    env = site.envelope()
    fake.offer(env)
    fake.post_failures = [409]  # e.g. the lease expired while the coordinator was away
    with runner(site, fake) as r:
        report = r.run_once(wait_s=0)
        assert report is not None and (report.status, report.delivered) == ("succeeded", False)
        fake.offer(site.envelope(job_id=env["job_id"], attempt=2))
        report = r.run_once(wait_s=0)
        assert report is not None and (report.status, report.delivered) == ("succeeded", True)
        assert [e.event for e in r.state.audit_entries()][-2:] == ["redelivered", "upload_acknowledged"]
    assert len(runs_in(site)) == 1  # ran once
    first, second = result_of(fake.posts[0][1]), verified(site, fake.accepted[env["job_id"]])
    assert second["attempt"] == 2 and second["records"] == first["records"]


def test_results_not_delivered_are_sent_on_the_next_start(site: SiteFixture, fake: FakeCoordinator) -> None:
    env = site.envelope(expires_in=-1)
    fake.offer(env)
    with runner(site, fake) as r:
        fake.post_failures = [503] * 1000
        threading.Timer(0.3, r.stop).start()
        report = r.run_once(wait_s=0)
        assert report is not None and not report.delivered
    fake.post_failures = []
    with runner(site, fake) as r:
        assert r.run_once(wait_s=0) is None
        rec = r.state.job(env["job_id"])
        assert rec is not None and rec.upload == "acknowledged"
    assert env["job_id"] in fake.accepted


def test_run_stops_on_sigterm_during_a_long_poll(site: SiteFixture, fake: FakeCoordinator) -> None:
    fake.poll_sleep = 30
    previous = signal.getsignal(signal.SIGTERM)
    with runner(site, fake) as r:
        threading.Timer(0.5, os.kill, args=(os.getpid(), signal.SIGTERM)).start()
        t0 = time.monotonic()
        r.run()
        assert time.monotonic() - t0 < 5 and r.stopping
    assert signal.getsignal(signal.SIGTERM) is previous


def test_run_stops_on_sigterm_during_a_job_and_leaves_it_to_a_new_lease(
    site: SiteFixture, fake: FakeCoordinator
) -> None:
    env = site.envelope("sleeps", parameters={"seconds": 30})
    fake.offer(env)

    def terminate_once_the_notebook_runs() -> None:
        deadline = time.monotonic() + 20
        while not processes_with(b"time.sleep(600)") and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    with runner(site, fake) as r:
        threading.Thread(target=terminate_once_the_notebook_runs, daemon=True).start()
        t0 = time.monotonic()
        r.run()
        assert time.monotonic() - t0 < 15
        rec = r.state.job(env["job_id"])
        assert rec is not None and rec.state == "running"  # a re-lease runs it again
        assert [e.event for e in r.state.audit_entries()][-1] == "abandoned"
    assert fake.posts == []


def test_the_client_takes_the_sites_ca_bundle_and_proxy(site: SiteFixture, tmp_path: Path) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hospital proxy CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    site.fed_overrides.update(ca_bundle=tmp_path / "ca.pem", https_proxy="http://proxy.hospital.test:3128")
    client = CoordinatorClient(site.federation(), "t")
    client.close()
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="ca_bundle"):
        CoordinatorClient(site.federation(), "t")


def test_run_backs_off_when_the_coordinator_fails(site: SiteFixture, fake: FakeCoordinator) -> None:
    fake.token = "another"  # every poll is answered 401
    with runner(site, fake) as r:
        threading.Timer(0.5, r.stop).start()
        r.run()
    assert 3 <= len(fake.requests) < 200
    with runner(site, fake) as r, pytest.raises(CoordinatorError, match="HTTP 401"):
        r.run_once(wait_s=0)


def test_the_backoff_grows_with_jitter_to_its_cap() -> None:
    b = Backoff(1.0, 8.0, random.Random(1))
    delays = [b.next() for _ in range(6)]
    for d, cap in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert cap / 2 <= d <= cap
    b.reset()
    assert b.next() <= 1


def test_a_runner_needs_its_key_token_and_kernel(site: SiteFixture) -> None:
    (site.root / "site-token").unlink()
    with pytest.raises(ConfigError, match="jip site enrol"):
        Runner(site.config())
    site.fed_overrides["kernel_name"] = "nope"
    with pytest.raises(ConfigError, match="not installed"):
        Runner(site.config())
