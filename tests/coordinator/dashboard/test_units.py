"""The dashboard's parts without a server: rendering of untrusted content, tables and CSV,
diffs, plots, sessions, and the Secure cookie behind an https public URL (in-process)."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from jipkit.coordinator.app import create_app
from jipkit.coordinator.config import CoordinatorConfig
from jipkit.coordinator.dashboard.diff import previous_version, unified_diff
from jipkit.coordinator.dashboard.plots import record_plot_svg
from jipkit.coordinator.dashboard.render import notebook_document, outputs_document
from jipkit.coordinator.dashboard.security import origin_of
from jipkit.coordinator.dashboard.sessions import SessionStore, csrf_token
from jipkit.coordinator.dashboard.tables import combined_rows, job_status, records_csv, site_rows
from jipkit.coordinator.db import Database
from jipkit.coordinator.service import Service
from jipkit.protocol.notebook import canonical_notebook
from jipkit.protocol.signing import SigningKey
from tests.coordinator._helpers import FAST_ARGON2, PASSWORD, count, make_notebook, measure
from tests.coordinator.dashboard._web import csrf_of

# A 1x1 PNG.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def _service(tmp_path: Path, **settings: Any) -> Service:
    cfg = CoordinatorConfig(data_dir=tmp_path, **{**FAST_ARGON2, **settings})
    return Service(Database(cfg.database_file), SigningKey.generate(), cfg)


def test_a_notebook_is_rendered_as_escaped_text() -> None:
    nb = make_notebook(body="print('<script>alert(1)</script>')")
    nb["cells"][0]["source"] = "# T <img src=x onerror=alert(1)>\n<script>alert(2)</script>"
    html = notebook_document(canonical_notebook(nb))
    assert "<script>" not in html and "<img src=x" not in html
    assert "# T &lt;img src=x onerror=alert(1)&gt;\n&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert "print(&#x27;&lt;script&gt;alert(1)&lt;/script&gt;&#x27;)" in html


def test_outputs_keep_html_for_the_sandbox_and_images_as_data_uris() -> None:
    outputs = [
        {
            "cell": 3,
            "outputs": [
                {"output_type": "stream", "name": "stdout", "text": ["a <b>\n", "c"]},
                {"output_type": "display_data", "data": {"text/html": "<p id=x>hi</p>", "text/plain": "hi"}},
                {"output_type": "display_data", "data": {"image/png": PNG + "\n"}},
                {"output_type": "display_data", "data": {"image/png": "<svg onload=alert(1)>"}},
                {"output_type": "display_data", "data": {"image/svg+xml": "<svg onload='x'></svg>"}},
                {"output_type": "execute_result", "data": {"text/plain": "<i>6 * 7</i>"}},
                {"output_type": "error", "ename": "ValueError", "evalue": "secret", "traceback": ["secret"]},
                {"output_type": "display_data", "data": {"application/x-weird": "?"}},
            ],
        }
    ]
    html = outputs_document(outputs)
    assert "a &lt;b&gt;\nc" in html and "<p id=x>hi</p>" in html
    assert f'src="data:image/png;base64,{PNG}"' in html
    assert "<svg onload=alert(1)>" not in html and "not base64 data" in html
    svg = base64.b64encode(b"<svg onload='x'></svg>").decode()
    assert f'src="data:image/svg+xml;base64,{svg}"' in html
    assert "&lt;i&gt;6 * 7&lt;/i&gt;" in html
    assert "error: ValueError" in html and "secret" not in html
    assert "application/x-weird, not shown" in html


def test_job_states_have_labels_with_their_reasons() -> None:
    cases = {
        ("queued", None): ("queued", "queued"),
        ("leased", None): ("running", "running"),
        ("held", None): ("held at site", "held"),
        ("refused", "hash_mismatch"): ("refused: hash_mismatch", "refused"),
        ("declined", "policy_study"): ("refused (declined by the site): policy_study", "refused"),
        ("failed", "timeout"): ("failed: timeout", "failed"),
        ("succeeded", None): ("done", "done"),
        ("cancelled", "cancelled"): ("cancelled", "cancelled"),
    }
    for (state, reason), expected in cases.items():
        out = job_status({"site": "a", "state": state, "reason": reason, "attempt": 1})
        assert (out["label"], out["kind"]) == expected
        assert out["final"] == (state not in ("queued", "leased", "held"))


def _results() -> dict[str, Any]:
    from jipkit.coordinator.aggregate import combine

    sites = [
        {
            "site": "a",
            "state": "succeeded",
            "reason": None,
            "records": [count("n", None), measure("v", 1.5, 10, 0.5), _text("note", "=cmd|' /C calc'!A0")],
        },
        {
            "site": "b",
            "state": "succeeded",
            "reason": None,
            "records": [count("n", 0), measure("v", 2.5, 30)],
        },
        {"site": "c", "state": "failed", "reason": "cell_error", "records": []},
    ]
    per_site = {s["site"]: s["records"] if s["state"] == "succeeded" else None for s in sites}
    return {"sites": sites, "combined": combine(per_site)}


def _text(name: str, value: str) -> dict[str, Any]:
    return {"schema": "jip.record/1", "name": name, "kind": "text", "value": value}


def test_tables_and_csv_show_suppressed_apart_from_0_and_missing() -> None:
    res = _results()
    names, rows = site_rows(res)
    assert names == ["n", "v", "note"]
    cells = {r["site"]: [(c.text, c.kind) for c in r["cells"]] for r in rows}
    assert cells["a"][0] == ("suppressed", "suppressed")
    assert cells["b"][0] == ("0", "value")  # a real 0 stays 0
    assert cells["c"] == [("-", "missing")] * 3
    assert cells["a"][1] == ("1.5 ml (n 10, sd 0.5)", "value")
    combined = {r["name"]: r for r in combined_rows(res)}
    assert (combined["n"]["pooled"].text, combined["n"]["suppressed"], combined["n"]["missing"]) == (
        "0",
        ["a"],
        ["c"],
    )
    assert combined["v"]["pooled"].text == "2.25 ml"
    table = list(csv.DictReader(io.StringIO(records_csv(res))))
    by = {(r["site"], r["name"]): r for r in table}
    assert (by["a", "n"]["value"], by["a", "n"]["suppressed"]) == ("", "true")
    assert (by["b", "n"]["value"], by["b", "n"]["suppressed"]) == ("0", "false")
    assert by["a", "note"]["value"] == "'=cmd|' /C calc'!A0"  # no formula for a spreadsheet to run
    assert by["c", ""]["state"] == "failed: cell_error"


def _twice(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """Results where site a recorded ``x`` twice (``first``, then ``last``) and site b once (7)."""
    from jipkit.coordinator.aggregate import combine

    sites = [
        {"site": "a", "state": "succeeded", "reason": None, "records": [first, last]},
        {"site": "b", "state": "succeeded", "reason": None, "records": [count("x", 7)]},
    ]
    return {"sites": sites, "combined": combine({s["site"]: s["records"] for s in sites})}


@pytest.mark.parametrize(
    ("first", "last", "pooled", "hidden", "a_cell"),
    [
        (count("x", None), count("x", 9), "16", [], ("9", "value")),
        (count("x", 9), count("x", None), "7", ["a"], ("suppressed", "suppressed")),
    ],
    ids=["suppressed-then-9", "9-then-suppressed"],
)
def test_a_name_recorded_twice_at_a_site_counts_as_its_last_record_everywhere(
    first: dict[str, Any], last: dict[str, Any], pooled: str, hidden: list[str], a_cell: tuple[str, str]
) -> None:
    """As the pooled figure (combine keeps a site's last record of a name): the tables,
    the 'suppressed at' list, the CSV and the plot all follow the last record."""
    from jipkit.coordinator.dashboard.plots import _site_values

    res = _twice(first, last)
    (row,) = combined_rows(res)
    assert (row["pooled"].text, row["suppressed"]) == (pooled, hidden)
    assert row["missing"] == [] and res["combined"][0]["missing_sites"] == hidden
    _, rows = site_rows(res)
    assert (rows[0]["cells"][0].text, rows[0]["cells"][0].kind) == a_cell
    table = [
        (r["site"], r["name"], r["value"], r["suppressed"])
        for r in csv.DictReader(io.StringIO(records_csv(res)))
    ]
    expected_a = ("a", "x", "", "true") if hidden else ("a", "x", "9", "false")
    assert table == [expected_a, ("b", "x", "7", "false")]
    plotted = dict(_site_values(res, "x"))
    assert bool((plotted["a"] or {}).get("suppressed")) == bool(hidden)
    assert record_plot_svg(res, "x").startswith(b"<?xml")


def test_a_plot_marks_suppressed_sites_and_draws_text_as_paths() -> None:
    svg = record_plot_svg(_results(), "n")
    assert svg.startswith(b"<?xml") and b"<text" not in svg and b"<script" not in svg


def test_the_diff_follows_the_previous_version_with_the_same_title() -> None:
    old = canonical_notebook(make_notebook(body="x = 1"))
    new = canonical_notebook(make_notebook(body="x = 2"))
    lines = [(d.kind, d.text) for d in unified_diff(old, new, "old", "new")]
    assert ("del", "-| x = 1") in lines and ("add", "+| x = 2") in lines and lines[0] == ("file", "--- old")
    assert unified_diff(old, old, "a", "b") == []
    # what an author writes cannot pass for a diff header or a cell header, nor hide itself
    tricky = "++send_home()\n--- a\n# ---- cell 9 [markdown]\nok = 1  # \u202e)(emoh_dnes\u2066"
    lines = [
        (d.kind, d.text) for d in unified_diff(old, canonical_notebook(make_notebook(body=tricky)), "o", "n")
    ]
    assert [k for k, _ in lines[:2]] == ["file", "file"] and lines[2][0] == "hunk"
    added = [t for k, t in lines if k == "add"]
    assert "+| ++send_home()" in added and "+| --- a" in added and "+| # ---- cell 9 [markdown]" in added
    assert "+| ok = 1  # <U+202E>)(emoh_dnes<U+2066>" in added
    assert all(k != "file" for k, _ in lines[2:])
    versions = [
        {"version_hash": "v3", "title": "A", "submitted_at": "2026-01-03"},
        {"version_hash": "v2", "title": "B", "submitted_at": "2026-01-02"},
        {"version_hash": "v1", "title": "A", "submitted_at": "2026-01-01"},
    ]
    assert previous_version(versions, "v3") == "v1"
    assert previous_version(versions, "v2") is None and previous_version(versions, "v9") is None


def test_sessions_keep_only_a_hash_and_expire(tmp_path: Path) -> None:
    now = [1000.0]
    svc = _service(tmp_path)
    user = svc.create_user("u1", PASSWORD)
    store = SessionStore(svc.db, lambda: now[0], ttl_s=60)
    token = store.create(user)
    with svc.db.read() as c:
        stored = [r[0] for r in c.execute("SELECT token_hash FROM dashboard_sessions")]
    assert token not in stored and len(stored) == 1
    session = store.find(token)
    assert session is not None and session.user == user and session.csrf == csrf_token(token)
    assert store.find("x" * 43) is None and store.find(None) is None
    now[0] += 61
    assert store.find(token) is None
    svc.close()


def test_origins_compare_scheme_host_and_port() -> None:
    assert origin_of("https://JIP.example.org:443/ui/x") == "https://jip.example.org"
    assert origin_of("http://127.0.0.1:8750") == "http://127.0.0.1:8750"
    assert origin_of("http://127.0.0.1:8750") != origin_of("http://127.0.0.1:8751")


def test_cookies_are_secure_behind_an_https_public_url(tmp_path: Path) -> None:
    svc = _service(tmp_path, public_url="https://jip.example.org")
    svc.create_user("u1", PASSWORD)
    app = create_app(svc.config, service=svc)
    cookies: list[str] = []

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="https://jip.example.org") as c:
                page = await c.get("/ui/login")
                cookies.extend(page.headers.get_list("set-cookie"))
                r = await c.post(
                    "/ui/login",
                    data={"csrf": csrf_of(page.text), "username": "u1", "password": PASSWORD},
                    headers={"Origin": "https://jip.example.org"},
                )
                assert r.status_code == 303, r.text
                cookies.extend(r.headers.get_list("set-cookie"))

    with ThreadPoolExecutor(1) as pool:  # a thread of its own: Playwright's loop may run in this one
        pool.submit(anyio.run, main).result()
    session = next(c for c in cookies if c.startswith("jip_session="))
    login = next(c for c in cookies if c.startswith("jip_login="))
    for cookie in (session, login):
        assert (
            "; secure" in cookie.lower()
            and "samesite=strict" in cookie.lower()
            and "httponly" in cookie.lower()
        )
    svc.close()


# (what is slow, the request that waits on it); each slow part raises 404 once let go.
SLOW_REQUESTS = [
    ("run_results", "GET", "/ui/runs/run-1/plots/x.svg"),
    ("record_plot_svg", "GET", "/ui/runs/run-1/plots/x.svg"),
    ("run_results", "GET", "/ui/runs/run-1/results.csv"),
    ("run_results", "GET", "/ui/runs/run-1/combined.csv"),
    ("run_results", "GET", "/ui/frames/runs/run-1/sites/a"),
    ("get_run", "GET", "/ui/runs/run-1"),
    ("get_notebook", "GET", "/ui/versions/abc"),
    ("get_notebook", "GET", "/ui/frames/versions/abc"),
    ("get_study", "GET", "/ui/studies/s"),
    ("list_studies", "GET", "/ui/studies"),
    ("review", "POST", "/ui/versions/abc/reviews"),
    ("get_notebook", "POST", "/ui/versions/abc/runs"),
]


@pytest.mark.parametrize(
    ("slow", "method", "path"), SLOW_REQUESTS, ids=[f"{m} {p} ({s})" for s, m, p in SLOW_REQUESTS]
)
def test_a_slow_page_leaves_the_event_loop_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: str, method: str, path: str
) -> None:
    """While a page's service call or plot is still working, the loop (which also serves
    the sites' long polls) answers another request: the work is not done on the loop."""
    import threading

    from jipkit.coordinator.access import refused
    from jipkit.coordinator.dashboard import runs

    svc = _service(tmp_path)
    svc.create_user("u1", PASSWORD)
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()

    def blocking(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(5.0)  # on the loop, this would hold every other request for 5 s
        finished.set()
        raise refused(404, "not_found", "let go")

    if slow == "record_plot_svg":
        monkeypatch.setattr(svc, "run_results", lambda *a: {"sites": [], "combined": []})
        monkeypatch.setattr(runs, "record_plot_svg", blocking)
    else:
        monkeypatch.setattr(svc, slow, blocking)
    app = create_app(svc.config, service=svc)
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                page = await c.get("/ui/login")
                r = await c.post(
                    "/ui/login",
                    data={"csrf": csrf_of(page.text), "username": "u1", "password": PASSWORD},
                    headers={"Origin": "http://testserver"},
                )
                assert r.status_code == 303, r.text
                csrf = csrf_of((await c.get("/ui/studies")).text) if slow != "list_studies" else ""
                if method == "POST":
                    data = {"csrf": csrf, "decision": "approve", "parameters": "{}", "sites": "a"}
                    task = asyncio.ensure_future(
                        c.post(path, data=data, headers={"Origin": "http://testserver"})
                    )
                else:
                    task = asyncio.ensure_future(c.get(path))
                for _ in range(500):
                    if entered.is_set() or task.done():
                        break
                    await asyncio.sleep(0.01)
                seen["entered"] = entered.is_set()
                cheap = await c.get("/ui/login")
                seen["cheap"] = cheap.status_code
                seen["slow_was_working"] = not finished.is_set()
                release.set()
                seen["slow"] = (await task).status_code

    with ThreadPoolExecutor(1) as pool:  # a thread of its own: Playwright's loop may run in this one
        pool.submit(anyio.run, main).result()
    svc.close()
    assert seen["entered"] and seen["cheap"] == 303  # the login page sends a logged-in user on
    assert seen["slow_was_working"], "the other request waited for the slow one: it ran on the event loop"
    assert seen["slow"] == 404


def test_plots_drawn_in_threads_at_once_are_the_plots_drawn_alone() -> None:
    """The pages draw plots in worker threads: concurrent drawings neither mix their
    settings nor leave matplotlib's global settings changed."""
    import matplotlib

    before = {k: matplotlib.rcParams[k] for k in ("svg.fonttype", "svg.hashsalt")}
    res = _results()
    alone = {name: record_plot_svg(res, name) for name in ("n", "v")}
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda i: (i % 2, record_plot_svg(res, "nv"[i % 2])), range(32)))
    assert all(svg == alone["nv"[i]] for i, svg in together)
    assert {k: matplotlib.rcParams[k] for k in before} == before
