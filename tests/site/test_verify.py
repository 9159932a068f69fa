"""The envelope checks: every refusal reason, and their order."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from jipkit.protocol.messages import REFUSAL_REASONS
from jipkit.protocol.notebook import version_hash
from jipkit.protocol.signing import SigningKey, sign_document
from jipkit.site.fedconfig import SitePolicy
from jipkit.site.state import RunnerState
from jipkit.site.verify import check_envelope
from tests.site.conftest import SiteFixture, load_canon, make_envelope


@pytest.fixture
def state(site: SiteFixture) -> Iterator[RunnerState]:
    with RunnerState(site.root / "state.sqlite") as st:
        yield st


def check(site: SiteFixture, state: RunnerState, env: Any, **kw: Any) -> str | None:
    fed = site.federation()
    return check_envelope(
        env,
        site=kw.pop("at_site", site.name),
        pinned_keys=kw.pop("pinned", fed.pinned_keys()),
        policy=kw.pop("policy", fed.policy),
        state=state,
        **kw,
    )


def test_a_good_envelope_passes(site: SiteFixture, state: RunnerState) -> None:
    assert check(site, state, site.envelope(parameters={"threshold": -400, "scale": 2})) is None


def test_a_notebook_changed_by_one_byte_after_signing_is_refused(
    site: SiteFixture, state: RunnerState
) -> None:
    env = site.envelope()
    env["notebook"]["cells"][2]["source"] = env["notebook"]["cells"][2]["source"].replace("print", "prinT")
    assert check(site, state, env) == "signature_invalid"


def test_a_signed_notebook_that_does_not_hash_to_its_version_is_refused(
    site: SiteFixture, state: RunnerState
) -> None:
    canon = load_canon("ok")
    tampered = copy.deepcopy(canon)
    tampered["cells"][2]["source"] += " "  # one byte
    env = site.envelope(tampered, version_hash=version_hash(canon))
    assert check(site, state, env) == "hash_mismatch"


def test_a_notebook_not_in_canonical_form_is_refused(site: SiteFixture, state: RunnerState) -> None:
    canon = load_canon("ok")
    canon["cells"][1]["tags"] = ["zz", "parameters"]  # canonical tags are sorted
    env = site.envelope(canon, version_hash=version_hash(canon))
    assert check(site, state, env) == "hash_mismatch"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda env: env.pop("signature"),
        lambda env: env["signature"].update(value="AAAA"),
        lambda env: env["signature"].update(value="not base64!"),
        lambda env: env.update(signature="yes"),
    ],
    ids=["unsigned", "wrong-value", "garbage-value", "not-an-object"],
)
def test_unsigned_or_badly_signed_envelopes_are_refused(
    site: SiteFixture, state: RunnerState, mangle: Any
) -> None:
    env = site.envelope()
    mangle(env)
    assert check(site, state, env) == "signature_invalid"


def test_an_envelope_signed_by_an_unknown_key_is_refused(site: SiteFixture, state: RunnerState) -> None:
    assert check(site, state, make_envelope(SigningKey.generate())) == "unknown_key"


def test_a_signature_claiming_a_pinned_key_id_but_made_by_another_key_is_refused(
    site: SiteFixture, state: RunnerState
) -> None:
    env = make_envelope(SigningKey.generate())
    env["signature"]["key_id"] = site.coordinator_key.key_id
    assert check(site, state, env) == "signature_invalid"


@pytest.mark.parametrize("value", [None, [], "text", 3])
def test_something_that_is_not_an_envelope_is_refused(
    site: SiteFixture, state: RunnerState, value: Any
) -> None:
    assert check(site, state, value) == "signature_invalid"


def test_a_signed_document_of_another_type_is_refused(site: SiteFixture, state: RunnerState) -> None:
    env = site.envelope(type="jip.result/1")
    assert check(site, state, env) == "envelope_invalid"
    env = site.envelope(attempt="1")
    assert check(site, state, env) == "envelope_invalid"


def test_an_expired_envelope_is_refused(site: SiteFixture, state: RunnerState) -> None:
    assert check(site, state, site.envelope(expires_in=-1)) == "expired"
    assert check(site, state, site.envelope(expires_at="next tuesday")) == "expired"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert check(site, state, site.envelope(expires_in=60), now=later) == "expired"


def test_the_envelope_for_site_a_is_refused_at_site_b(site: SiteFixture, state: RunnerState) -> None:
    env = site.envelope()
    assert check(site, state, env, at_site="site-b") == "wrong_site"


def test_the_same_job_id_again_is_a_replay(site: SiteFixture, state: RunnerState) -> None:
    env = site.envelope()
    assert check(site, state, env) is None
    state.start(env)
    assert check(site, state, env) == "replay"  # the same attempt again
    state.finish(env, "succeeded", None, b"{}")
    state.mark_upload(env["job_id"], "acknowledged")
    again = site.envelope(job_id=env["job_id"], attempt=2)
    assert check(site, state, again) == "replay"  # a finished, acknowledged job


def test_a_job_id_reused_for_other_parameters_is_a_replay(site: SiteFixture, state: RunnerState) -> None:
    env = site.envelope()
    state.start(env)
    other = site.envelope(job_id=env["job_id"], attempt=2, parameters={"threshold": 1})
    assert check(site, state, other) == "replay"


def test_a_new_attempt_after_a_crash_mid_job_may_run(site: SiteFixture, state: RunnerState) -> None:
    env = site.envelope()
    state.start(env)  # then the runner was killed
    assert check(site, state, site.envelope(job_id=env["job_id"], attempt=2)) is None


@pytest.mark.parametrize(
    ("parameters", "ok"),
    [
        ({"threshold": -100}, True),
        ({"scale": 2}, True),  # an integer where a number is expected
        ({"thresold": -100}, False),  # unknown name
        ({"threshold": "-100"}, False),  # wrong type
        ({"label": 3}, False),
        ({"scale": None}, False),
    ],
)
def test_unknown_or_mistyped_parameters_are_refused(
    site: SiteFixture, state: RunnerState, parameters: dict[str, Any], ok: bool
) -> None:
    assert check(site, state, site.envelope(parameters=parameters)) == (None if ok else "parameters_invalid")


def test_a_coordinator_key_that_is_pinned_but_not_served_is_refused(
    site: SiteFixture, state: RunnerState
) -> None:
    other = SigningKey.generate()
    pinned = {site.coordinator_key.key_id: site.coordinator_key.public_b64, other.key_id: other.public_b64}
    assert check(site, state, make_envelope(other), pinned=pinned) == "policy_coordinator"


def test_a_study_the_site_does_not_serve_is_refused(site: SiteFixture, state: RunnerState) -> None:
    assert check(site, state, site.envelope(study="other-study")) == "policy_study"
    none_served = SitePolicy(coordinators=[site.coordinator_key.key_id])
    assert check(site, state, site.envelope(), policy=none_served) == "policy_study"


def test_local_approval_refuses_versions_until_approved(site: SiteFixture, state: RunnerState) -> None:
    policy = SitePolicy(studies=["study-1"], coordinators=[site.coordinator_key.key_id], local_approval=True)
    env = site.envelope()
    assert check(site, state, env, policy=policy) == "policy_unapproved"
    state.approve(env["version_hash"], "operator")
    assert check(site, state, env, policy=policy) is None


def test_checks_apply_in_order(site: SiteFixture, state: RunnerState) -> None:
    bad_everything = site.envelope(study="nope", expires_in=-5, parameters={"nope": 1})
    assert check(site, state, bad_everything, at_site="site-b") == "wrong_site"
    assert check(site, state, bad_everything) == "expired"
    canon = load_canon("ok")
    wrong_hash = site.envelope(canon, version_hash="0" * 64, parameters={"nope": 1}, study="nope")
    assert check(site, state, wrong_hash) == "hash_mismatch"
    assert check(site, state, site.envelope(parameters={"nope": 1}, study="nope")) == "parameters_invalid"


def test_every_reason_used_is_a_protocol_reason(site: SiteFixture, state: RunnerState) -> None:
    reasons = {
        check(site, state, site.envelope(expires_in=-1)),
        check(site, state, make_envelope(SigningKey.generate())),
        check(site, state, {"unsigned": True}),
    }
    assert reasons <= set(REFUSAL_REASONS)


def test_nothing_is_trusted_before_the_signature(site: SiteFixture, state: RunnerState) -> None:
    env = site.envelope()
    forged = dict(env, site="site-b")  # changed after signing: the signature check comes first
    assert check(site, state, forged, at_site="site-b") == "signature_invalid"
    resigned = sign_document(forged, site.coordinator_key)
    assert check(site, state, resigned, at_site="site-b") is None
