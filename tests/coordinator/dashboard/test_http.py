"""The dashboard over plain HTTP against the real coordinator process: login and its
cookie, CSRF and Origin checks, security headers on every page, views per role, the
review rules, live job states, and results with suppressed values."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from urllib.parse import unquote

import pytest

from jipkit.coordinator.dashboard.security import FRAME_CSP, PAGE_CSP
from tests.coordinator._helpers import PASSWORD, count, measure
from tests.coordinator.dashboard._web import UI, Dash, csrf_of, notebook, post_result, provenance, unique


@pytest.fixture(scope="module")
def version(dash: Dash) -> str:
    """A pending version by alice (the study's scientist), followed by a second one."""
    title = unique("Versions")
    dash.submit(notebook(title, scale=1.0))
    return dash.submit(notebook(title, scale=2.0))


@pytest.fixture
def bob(dash: Dash) -> Iterator[UI]:
    ui = dash.ui("reviewer")
    yield ui
    ui.close()


def test_pages_send_a_browser_without_a_session_to_the_login(dash: Dash) -> None:
    with UI(dash.coord) as ui:
        r = ui.get(f"/ui/studies/{dash.study}")
        assert r.status_code == 303
        assert unquote(r.headers["location"]) == f"/ui/login?next=/ui/studies/{dash.study}"
        r = ui.get("/ui/runs/run-x/status")
    assert (r.status_code, r.json()["reason"]) == (401, "unauthenticated")


def test_a_wrong_password_shows_a_message_and_opens_no_session(dash: Dash) -> None:
    with UI(dash.coord) as ui:
        r = ui.login("bob", "not the password")
        assert r.status_code == 401
        assert "Wrong username or password." in r.text
        assert "jip_session" not in r.headers.get("set-cookie", "")
        assert ui.get("/ui/studies").status_code == 303
        r = ui.login("nobody", PASSWORD)
    assert r.status_code == 401 and "Wrong username or password." in r.text


def test_the_session_cookie_is_httponly_samesite_strict_and_path_scoped(dash: Dash) -> None:
    with UI(dash.coord) as ui:
        r = ui.login("bob")
    assert r.status_code == 303 and r.headers["location"] == "/ui/studies"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("jip_session="))
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
    assert "httponly" in attrs
    assert attrs["samesite"].lower() == "samesite=strict"
    assert attrs["path"] == "Path=/ui"
    assert "secure" not in attrs  # plain http here; with an https public_url: test_units.py


def test_login_goes_back_only_to_dashboard_pages(dash: Dash) -> None:
    for target, expected in [
        ("https://evil.example/ui/studies", "/ui/studies"),
        ("//evil.example/ui/x", "/ui/studies"),
        (f"/ui/studies/{dash.study}", f"/ui/studies/{dash.study}"),
    ]:
        with UI(dash.coord) as ui:
            r = ui.login("bob", next_url=target)
        assert (r.status_code, r.headers["location"]) == (303, expected)


def test_the_login_form_needs_its_own_token_and_origin(dash: Dash) -> None:
    with UI(dash.coord) as ui:
        ui.get("/ui/login")
        r = ui.post("/ui/login", {"csrf": "guessed", "username": "bob", "password": PASSWORD})
        assert r.status_code == 403 and "login form expired" in r.text
        page = ui.get("/ui/login")
        r = ui.post(
            "/ui/login",
            {"csrf": csrf_of(page.text), "username": "bob", "password": PASSWORD},
            origin="https://evil.example",
        )
        assert r.status_code == 403 and "Origin check" in r.text


def test_a_post_without_the_csrf_token_or_from_another_origin_is_refused(
    dash: Dash, version: str, bob: UI
) -> None:
    path = f"/ui/versions/{version}/reviews"
    form = {"decision": "approve", "comment": "forged"}
    attempts = [
        bob.post(path, form),  # no token
        bob.post(path, {**form, "csrf": "0" * 64}),  # a wrong token
        bob.post(path, {**form, "csrf": bob.csrf}, origin="https://evil.example"),
        bob.post(path, {**form, "csrf": bob.csrf}, origin="null"),  # a sandboxed frame
        bob.post(path, {**form, "csrf": bob.csrf}, origin=None),  # neither Origin nor Referer
    ]
    for r in attempts:
        assert r.status_code == 403, r.text
        assert r.headers["content-type"].startswith("text/html")
        assert "CSRF" in r.text or "Origin" in r.text
    assert dash.version(version)["reviews"] == []
    r = bob.post(  # the right token from the right origin passes
        f"/ui/versions/{version}/reviews", {"csrf": bob.csrf, "decision": "approve", "comment": "fine"}
    )
    assert r.status_code == 303 and r.headers["location"].endswith("?done=approve")
    assert [(x["reviewer"], x["decision"]) for x in dash.version(version)["reviews"]] == [("bob", "approve")]


def test_logout_ends_the_session(dash: Dash) -> None:
    with dash.ui("reviewer") as ui:
        cookie = ui.http.cookies.get("jip_session")
        r = ui.post("/ui/logout", {"csrf": ui.csrf})
        assert r.status_code == 303 and r.headers["location"] == "/ui/login?done=logged_out"
        assert cookie and "jip_session" not in ui.http.cookies
        stale = ui.http.get("/ui/studies", headers={"Cookie": f"jip_session={cookie}"})
        assert stale.status_code == 303  # the old cookie opens nothing


def test_every_dashboard_response_has_the_security_headers(dash: Dash, version: str, bob: UI) -> None:
    site = dash.new_sites(1)[0]
    vh = dash.approved(notebook(title=unique("Headers")))
    run_id = dash.start_run(vh, [site])
    post_result(site, site.claim(), records=[count("patients", 12, "patients")])
    pages = {
        "/ui/studies": PAGE_CSP,
        f"/ui/studies/{dash.study}": PAGE_CSP,
        f"/ui/versions/{version}": PAGE_CSP,
        f"/ui/runs/{run_id}": PAGE_CSP,
        f"/ui/runs/{run_id}/status": PAGE_CSP,
        f"/ui/runs/{run_id}/results.csv": PAGE_CSP,
        "/ui/static/run.js": PAGE_CSP,
        "/ui/static/dashboard.css": PAGE_CSP,
        "/ui/no-such-page": PAGE_CSP,
        "/ui/runs/no-such-run": PAGE_CSP,
        f"/ui/frames/versions/{version}": FRAME_CSP,
        f"/ui/frames/runs/{run_id}/sites/{site.name}": FRAME_CSP,
        f"/ui/runs/{run_id}/plots/patients.svg": FRAME_CSP,
    }
    with UI(dash.coord) as anonymous:
        responses = {"/ui/login": (anonymous.get("/ui/login"), PAGE_CSP)}
    responses.update({path: (bob.get(path), csp) for path, csp in pages.items()})
    for path, (r, csp) in responses.items():
        assert r.status_code in (200, 404), (path, r.status_code)
        assert r.headers["content-security-policy"] == csp, path
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["referrer-policy"] == ("no-referrer" if csp == FRAME_CSP else "same-origin"), path
        assert r.headers["x-frame-options"] == ("SAMEORIGIN" if csp == FRAME_CSP else "DENY"), path
    assert "sandbox" in FRAME_CSP.split(";")[0] and "allow-" not in FRAME_CSP
    for path, frame in [
        (f"/ui/versions/{version}", f"/ui/frames/versions/{version}"),
        (f"/ui/runs/{run_id}", f"/ui/frames/runs/{run_id}/sites/{site.name}"),
    ]:  # embedded only in <iframe sandbox> (no allow-* token)
        frames = re.findall(r"<iframe [^>]*>", responses[path][0].text)
        assert len(frames) == 1 and f' sandbox src="{frame}"' in frames[0] and "allow-" not in frames[0]
    assert "'unsafe-inline'" not in PAGE_CSP and "frame-ancestors 'none'" in PAGE_CSP
    with dash.api("reviewer") as c:
        api = c.get("/keys")
    assert "content-security-policy" not in api.headers  # the JSON API is left as it was


def test_views_follow_the_users_roles(dash: Dash, version: str) -> None:
    approved = dash.approved(notebook(title=unique("Roles")))
    seen: dict[str, tuple[str, str]] = {}
    for role in ("scientist", "reviewer", "coordinator", "author_reviewer", "admin"):
        with dash.ui(role) as ui:
            seen[role] = (ui.get(f"/ui/versions/{version}").text, ui.get(f"/ui/versions/{approved}").text)
            study_page = ui.get(f"/ui/studies/{dash.study}").text
        assert ('name="notebook"' in study_page) == (role in ("scientist", "author_reviewer")), role
    pending, done = seen["reviewer"]
    assert 'id="review-form"' in pending and 'id="run-form"' not in done
    pending, done = seen["scientist"]  # alice wrote both versions
    assert 'id="review-form"' not in pending and 'id="run-form"' not in done
    assert "Only the study&#39;s reviewers review versions." in pending
    pending, done = seen["coordinator"]
    assert 'id="review-form"' not in pending and 'id="run-form"' in done
    assert 'id="run-form"' not in pending  # not approved yet
    pending, _ = seen["author_reviewer"]  # sam reviews alice's version, not their own (below)
    assert 'id="review-form"' in pending
    with dash.ui("outsider") as eve:
        assert dash.study not in eve.get("/ui/studies").text
        r = eve.get(f"/ui/studies/{dash.study}")
        assert r.status_code == 403 and "This needs the role" in r.text
        assert eve.get(f"/ui/versions/{version}").status_code == 404  # not even whether it exists
        assert eve.get(f"/ui/frames/versions/{version}").status_code == 404
    with dash.ui("admin") as root:
        assert dash.study in root.get("/ui/studies").text


def test_an_outsider_gets_the_answer_of_an_id_that_does_not_exist(dash: Dash) -> None:
    """Every page, frame, download and form found by a version hash or run id answers a user
    without a role in its study as it answers an id that does not exist: the same 404 page,
    without the study's name."""
    site = dash.new_sites(1)[0]
    vh = dash.approved(notebook(title=unique("Hidden")))
    run_id = dash.start_run(vh, [site])
    post_result(site, site.claim(), records=[count("patients", 12, "patients")])
    no_vh, no_run = "0" * 64, "run-" + "0" * 32
    gets = [
        "/ui/versions/{v}",
        "/ui/frames/versions/{v}",
        "/ui/runs/{r}",
        "/ui/runs/{r}/status",
        "/ui/runs/{r}/results.csv",
        "/ui/runs/{r}/combined.csv",
        "/ui/runs/{r}/plots/patients.svg",
        f"/ui/frames/runs/{{r}}/sites/{site.name}",
    ]
    posts = {
        "/ui/versions/{v}/reviews": {"decision": "reject", "comment": "no"},
        "/ui/versions/{v}/runs": {"parameters": "{}", "deadline_s": "60", "sites": site.name},
        "/ui/runs/{r}/cancel": {},
    }
    with dash.ui("outsider") as eve:
        for path in [*gets, *posts]:
            answers = []
            for v, r in ((vh, run_id), (no_vh, no_run)):
                url = path.format(v=v, r=r)
                if path in posts:
                    answers.append(eve.post(url, {**posts[path], "csrf": eve.csrf}))
                else:
                    answers.append(eve.get(url))
            known, unknown = answers
            assert (known.status_code, unknown.status_code) == (404, 404), (path, known.text)
            assert "not_found" in known.text, path
            assert known.text == unknown.text.replace(no_vh, vh).replace(no_run, run_id), path
            assert dash.study not in known.text, path
    with dash.ui("scientist") as alice:  # a member without the role is refused as before
        r = alice.post(f"/ui/runs/{run_id}/cancel", {"csrf": alice.csrf})
        assert r.status_code == 403 and "This needs the role coordinator" in r.text


def test_the_author_cannot_review_their_version_and_is_told_why(dash: Dash) -> None:
    vh = dash.submit(notebook(title=unique("Sam's own")), role="author_reviewer")
    with dash.ui("author_reviewer") as sam:
        page = sam.get(f"/ui/versions/{vh}").text
        r = sam.post(
            f"/ui/versions/{vh}/reviews", {"csrf": sam.csrf, "decision": "approve", "comment": "mine"}
        )
    assert 'id="review-form"' not in page
    assert "You wrote this version: its author cannot review it." in page
    assert r.status_code == 403
    assert "The author of a notebook version cannot review it." in r.text
    assert dash.version(vh)["reviews"] == [] and dash.version(vh)["state"] == "pending"


def test_the_version_page_counts_the_approvals_still_needed(dash: Dash, bob: UI) -> None:
    vh = dash.submit(notebook(title=unique("Quorum")))
    assert "0 of 2 approvals: 2 more approvals needed" in bob.get(f"/ui/versions/{vh}").text
    bob.post(f"/ui/versions/{vh}/reviews", {"csrf": bob.csrf, "decision": "approve", "comment": "looks fine"})
    page = bob.get(f"/ui/versions/{vh}?done=approve").text
    assert "1 of 2 approvals: 1 more approval needed" in page
    assert "Your approval is recorded." in page and "looks fine" in page


def test_the_live_status_names_each_state_and_its_reason(dash: Dash) -> None:
    queued, running, held, declined, failed, done = dash.new_sites(6)
    vh = dash.approved(notebook(title=unique("States")))
    run_id = dash.start_run(vh, [queued, running, held, declined, failed, done])
    running.claim()
    env = held.claim()
    assert held.http.post(f"/site/jobs/{env['job_id']}/held", json={"attempt": 1}).status_code == 200
    env = declined.claim()
    r = declined.http.post(
        f"/site/jobs/{env['job_id']}/decline", json={"attempt": 1, "reason": "policy_study"}
    )
    assert r.status_code == 200
    post_result(failed, failed.claim(), status="failed", reason="cell_error", failed_cell=3)
    post_result(done, done.claim(), records=[count("patients", 12, "patients")])
    with dash.ui("coordinator") as dave:
        status = dave.get(f"/ui/runs/{run_id}/status").json()
        page = dave.get(f"/ui/runs/{run_id}").text
        assert dave.post(f"/ui/runs/{run_id}/cancel", {"csrf": dave.csrf}).status_code == 303
        after = dave.get(f"/ui/runs/{run_id}/status").json()
    labels = {j["site"]: (j["kind"], j["label"]) for j in status["jobs"]}
    assert labels == {
        queued.name: ("queued", "queued"),
        running.name: ("running", "running"),
        held.name: ("held", "held at site"),
        declined.name: ("refused", "refused (declined by the site): policy_study"),
        failed.name: ("failed", "failed: cell_error"),
        done.name: ("done", "done"),
    }
    assert (status["state"], status["final"], status["done"], status["total"]) == ("running", False, 3, 6)
    for _, label in labels.values():
        assert label in page
    assert 'data-final="false"' in page and 'src="/ui/static/run.js"' in page
    assert 'id="cancel-form"' in page
    assert after["state"] == "cancelled" and after["final"]
    assert {j["label"] for j in after["jobs"] if j["site"] in (queued.name, running.name, held.name)} == {
        "cancelled"
    }
    with dash.ui("reviewer") as bob:
        assert 'id="cancel-form"' not in bob.get(f"/ui/runs/{run_id}").text


def test_results_show_suppressed_values_as_suppressed_never_0(dash: Dash) -> None:
    a, b = dash.new_sites(2)
    vh = dash.approved(notebook(title=unique("Results")))
    params = {"scale": 2.0}
    run_id = dash.start_run(vh, [a, b], params)
    post_result(
        a,
        a.claim(),
        records=[
            count("patients", 12, "patients"),
            count("rare", None, "patients"),
            measure("vol", 10.0, 12, 2.0),
        ],
        extra={
            "provenance": provenance(vh, params),
            "isolation": "sandbox",
            "redactions": [{"rule": "k_suppression", "place": {"record": 1, "name": "rare"}, "count": 1}],
        },
    )
    post_result(
        b,
        b.claim(),
        records=[
            count("patients", 30, "patients"),
            count("rare", 7, "patients"),
            measure("vol", 20.0, 30, 4.0),
        ],
        extra={"provenance": provenance(vh, params), "isolation": "none", "redactions": []},
    )
    with dash.ui("scientist") as ui:
        page = ui.get(f"/ui/runs/{run_id}").text
        assert (
            '<td class="suppressed" title="suppressed by the site&#39;s disclosure rules (not 0)">suppressed</td>'
            in page
        )
        assert ">42<" in page  # patients: 12 + 30
        assert "k_suppression" in page and "record 1, name rare" in page
        assert "The site's checks removed or changed nothing." in page
        assert page.count("verified against the site&#39;s pinned key") == 2
        assert "sandbox (the site&#39;s kernel sandbox)" in page and "(the run&#39;s parameters)" in page
        r = ui.get(f"/ui/runs/{run_id}/results.csv")
        assert r.headers["content-type"].startswith("text/csv")
        assert r.headers["content-disposition"] == f'attachment; filename="{run_id}-records.csv"'
        rows = {(x["site"], x["name"]): x for x in csv.DictReader(io.StringIO(r.text))}
        assert (rows[a.name, "rare"]["value"], rows[a.name, "rare"]["suppressed"]) == ("", "true")
        assert (rows[b.name, "rare"]["value"], rows[b.name, "rare"]["suppressed"]) == ("7", "false")
        assert rows[a.name, "patients"]["value"] == "12" and rows[a.name, "vol"]["n"] == "12"
        combined = {
            x["name"]: x for x in csv.DictReader(io.StringIO(ui.get(f"/ui/runs/{run_id}/combined.csv").text))
        }
        assert combined["patients"]["pooled"] == "42"
        assert (combined["rare"]["pooled"], combined["rare"]["missing_sites"]) == ("7", a.name)
        svg = ui.get(f"/ui/runs/{run_id}/plots/rare.svg")
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
        assert svg.content.startswith(b"<?xml") and b"<script" not in svg.content
        assert ui.get(f"/ui/runs/{run_id}/plots/nothing.svg").status_code == 404


def test_a_scientist_uploads_a_notebook_and_a_broken_one_is_explained(dash: Dash) -> None:
    nb = json.dumps(notebook(title=unique("Uploaded"))).encode()
    with dash.ui("scientist") as alice:
        r = alice.post(
            f"/ui/studies/{dash.study}/notebooks",
            {"csrf": alice.csrf},
            files={"notebook": ("cohort.ipynb", nb, "application/x-ipynb+json")},
        )
        assert r.status_code == 303 and r.headers["location"].endswith("?done=submitted")
        page = alice.get(r.headers["location"]).text
        assert "The notebook is submitted as a new version; it waits for review." in page
        r = alice.post(
            f"/ui/studies/{dash.study}/notebooks",
            {"csrf": alice.csrf},
            files={"notebook": ("cohort.ipynb", b"not json", "application/x-ipynb+json")},
        )
        assert r.status_code == 400 and "found text that is not JSON" in r.text
        r = alice.post(f"/ui/studies/{dash.study}/notebooks", {}, files={"notebook": ("a.ipynb", nb, "x")})
        assert r.status_code == 403  # the CSRF check covers uploads too
    with dash.ui("reviewer") as bob:  # not a scientist: the service refuses
        r = bob.post(
            f"/ui/studies/{dash.study}/notebooks",
            {"csrf": bob.csrf},
            files={"notebook": ("cohort.ipynb", nb, "application/x-ipynb+json")},
        )
        assert r.status_code == 403 and "This needs the role scientist" in r.text
