"""Untrusted content cannot act as the logged-in reviewer (headless Chromium).

A scientist's notebook carries script in a markdown cell (and HTML in its title), and a
malicious site sends outputs with script in HTML: each tries to approve a pending
version with the reviewer's session (reading the CSRF token from the dashboard page),
to read ``document.cookie``, to mark the dashboard's page and to call ``alert``.  After
the reviewer opens the version and the run, no approval is recorded, no dialog opened,
no marker is set, no beacon left, and the content itself was shown (so the frames did
load: it is the sandbox that stopped the script).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.coordinator.dashboard._browser import login, shot
from tests.coordinator.dashboard._web import Dash, notebook, post_result, unique

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


def attack(target: str) -> str:
    """Script that approves ``target`` (a JS expression for a version hash) as whoever runs it."""
    return (
        "console.log('XSS-RAN');"
        "try { window.top.xssRan = 1; } catch (e) { console.log('XSS-RAN blocked top'); }"
        "try { parent.document.body.setAttribute('data-pwned', '1'); } catch (e) {}"
        "var csrf = ''; try { csrf = parent.document.querySelector('[name=csrf]').value; } catch (e) {}"
        f"fetch('/ui/versions/' + ({target}) + '/reviews', {{method: 'POST', credentials: 'include',"
        " headers: {'Content-Type': 'application/x-www-form-urlencoded'},"
        " body: 'decision=approve&comment=xss&csrf=' + encodeURIComponent(csrf)});"
        "new Image().src = '/ui/pwned?c=' + encodeURIComponent(document.cookie);"
        "alert('xss');"
    )


@pytest.fixture
def watched(browser: Any, dash: Dash) -> Iterator[tuple[Any, dict[str, list[str]]]]:
    """The reviewer's page, with its dialogs, console messages and requests recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    seen: dict[str, list[str]] = {"dialogs": [], "console": [], "requests": []}
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.on("console", lambda m: seen["console"].append(m.text))
    context.on("request", lambda r: seen["requests"].append(f"{r.method} {r.url}"))
    login(page, dash.coord.url, "reviewer")
    yield page, seen
    context.close()


def assert_nothing_ran(page: Any, seen: dict[str, list[str]], dash: Dash, vh: str) -> None:
    page.wait_for_timeout(1500)  # time for any script, fetch or beacon to happen
    assert seen["dialogs"] == []
    assert not any("XSS-RAN" in m for m in seen["console"]), seen["console"]
    assert not any("/pwned" in r or "/reviews" in r for r in seen["requests"]), seen["requests"]
    assert page.evaluate("document.body.hasAttribute('data-pwned')") is False
    assert page.evaluate("typeof window.xssRan") == "undefined"
    version = dash.version(vh)
    assert (version["reviews"], version["state"]) == ([], "pending")


def test_script_in_a_notebook_cannot_act_as_the_reviewer(
    dash: Dash, watched: tuple[Any, dict[str, list[str]]], artifacts: Path
) -> None:
    page, seen = watched
    title = "Trojan <img src=x onerror=\"console.log('XSS-RAN')\"> " + unique("n")
    nb = notebook(title)
    nb["cells"][0]["source"] += (
        "\n\n<script>" + attack("parent.document.getElementById('version-hash').textContent") + "</script>"
        "\n\n<img src=x onerror=\"console.log('XSS-RAN')\">\n\nvisible-markdown-marker"
    )
    vh = dash.submit(nb)
    page.goto(f"{dash.coord.url}/ui/versions/{vh}")
    page.goto(f"{dash.coord.url}/ui/studies/{dash.study}")  # the title in the study's table
    assert_nothing_ran(page, seen, dash, vh)
    page.goto(f"{dash.coord.url}/ui/versions/{vh}")
    assert_nothing_ran(page, seen, dash, vh)
    frame = page.frame_locator("#notebook-frame")
    frame.get_by_text("visible-markdown-marker", exact=False).wait_for()  # the frame did load
    assert "<script>console.log('XSS-RAN')" in frame.locator("body").inner_text()  # shown as text
    assert page.inner_text("#version-title") == title
    shot(page, artifacts / "09-xss-notebook.png")


def test_script_in_a_sites_html_output_cannot_act_as_the_reviewer(
    dash: Dash, watched: tuple[Any, dict[str, list[str]]], artifacts: Path
) -> None:
    page, seen = watched
    target = dash.submit(
        notebook(title=unique("Target of the attack"))
    )  # pending: the script wants it approved
    site = dash.new_sites(1)[0]
    run_id = dash.start_run(dash.approved(notebook(title=unique("Run with hostile outputs"))), [site])
    script = attack(repr(target))
    html = (
        f"<p id='visible-html'>html output visible</p><script>{script}</script>"
        "<img src=x onerror=\"console.log('XSS-RAN')\"><svg onload=\"console.log('XSS-RAN')\"></svg>"
        f"<iframe srcdoc=\"<script>console.log('XSS-RAN')</script>\"></iframe>"
        f"<form id=f method=post action='/ui/versions/{target}/reviews'>"
        "<input name=decision value=approve></form><script>document.getElementById('f').submit()</script>"
        "<meta http-equiv=refresh content='0;url=/ui/pwned'>"
    )
    outputs = [
        {
            "cell": 4,
            "outputs": [
                {
                    "output_type": "display_data",
                    "data": {"text/html": html, "text/plain": "x"},
                    "metadata": {},
                },
                {
                    "output_type": "display_data",
                    "data": {
                        "image/svg+xml": f"<svg xmlns='http://www.w3.org/2000/svg'><script>{script}</script></svg>"
                    },
                    "metadata": {},
                },
            ],
        }
    ]
    post_result(site, site.claim(), extra={"outputs": outputs})
    page.goto(f"{dash.coord.url}/ui/runs/{run_id}")
    assert_nothing_ran(page, seen, dash, target)
    assert page.url == f"{dash.coord.url}/ui/runs/{run_id}"
    frame = page.frame_locator("iframe.outputs")
    frame.locator("#visible-html").wait_for()  # the frame did load, and stayed
    assert frame.locator("script").count() >= 2  # delivered to the frame, and inert there
    shot(page, artifacts / "10-xss-outputs.png")
