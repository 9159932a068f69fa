"""Federation benchmark 3: one coordinator, 1,000 simulated runners, one run over real HTTP.

The coordinator is ``jip coordinator serve`` in a subprocess (one uvicorn process, its
defaults: SQLite ``synchronous=FULL``, lease 60 s), with cheap argon2 settings.
Before it starts, 1,000 sites are registered and enrolled through
:class:`~jipkit.coordinator.service.Service` in-process, each with its own Ed25519 key
and site token, and one trivial notebook version is submitted and approved.

The simulated runners live in this process: one asyncio event loop, one keep-alive
HTTP/1.1 connection per site over raw asyncio streams (no HTTP library: the client must
not eat the CPU the coordinator needs on this 2-core machine).  Each site long-polls
``GET /site/jobs/next?wait=25`` with its own token; once every poll is parked (the
coordinator's CPU is idle), dave starts a run at every site (``POST /runs``) and each
site, as soon as its envelope arrives, checks the coordinator's signature on it, signs
a result with its own key (:func:`jipkit.protocol.signing.sign_document`) and posts it,
without executing anything.  The run's time is from sending ``POST /runs`` until the
last result is accepted; the run's state is checked to be ``done`` afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from jipkit.coordinator.config import load_coordinator_config
from jipkit.coordinator.db import Database
from jipkit.coordinator.service import Service
from jipkit.protocol.api import API
from jipkit.protocol.canonical import canonical_json
from jipkit.protocol.signing import SigningKey, verify_document
from tests.coordinator._helpers import CoordinatorProcess, count, make_result

from ._common import Context, Row, Table, Target, median
from ._federation import STUDY, init_coordinator, plural, populate, process_cpu_s, trivial_notebook

__all__ = ["run"]

TITLE = "coordinator-scale: simulated runners against one coordinator (real HTTP, tokens, signatures)"
GOAL_S = 30.0
POLL_WAIT_S = 25
CONNECT_AT_ONCE = 64
RUN_LIMIT_S = 120.0  # a run that takes longer fails the benchmark
PARK_LIMIT_S = 60.0


class HTTPError(Exception):
    """An answer this client did not expect, or a connection that broke."""


class Connection:
    """One keep-alive HTTP/1.1 connection with a bearer token: the least a runner needs."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self._head = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def send(self, method: str, path: str, body: bytes | None = None) -> None:
        """Write one request (connecting first if needed)."""
        if self._writer is None:
            await self.connect()
        assert self._writer is not None
        head = f"{method} {path} HTTP/1.1\r\n{self._head}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + (body or b""))

    async def receive(self) -> tuple[int, bytes]:
        """Read one answer: (status, body)."""
        assert self._reader is not None
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = await self._chunked()
            else:
                body = await self._reader.readexactly(int(headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError) as err:
            self.close()
            raise HTTPError(f"connection lost or answer unreadable ({err!r})") from err
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    async def _chunked(self) -> bytes:
        assert self._reader is not None
        parts = []
        for _ in range(1_000_000):
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await self._reader.readexactly(size + 2))
            if size == 0:
                break
        return b"".join(p[:-2] for p in parts)

    async def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 60.0
    ) -> tuple[int, bytes]:
        """One request and its answer; sent again once on a new connection if the old one broke."""
        for attempt in (1, 2):
            try:
                await self.send(method, path, body)
                return await asyncio.wait_for(self.receive(), timeout)
            except (HTTPError, ConnectionError, TimeoutError) as err:
                self.close()
                if attempt == 2:
                    raise HTTPError(f"{method} {path}: {err}") from err
        raise AssertionError("unreachable")


@dataclass
class SimSite:
    """A simulated runner: its name, key, connection, and what it measured."""

    name: str
    key: SigningKey
    conn: Connection
    claim_at: list[float] = field(default_factory=list)
    post_s: list[float] = field(default_factory=list)


@dataclass
class RunFigures:
    """One run's measurements (seconds, from this process's perf_counter)."""

    total_s: float
    start_run_s: float
    park_s: float
    claim_s: list[float]
    post_s: list[float]
    server_cpu_s: float
    client_cpu_s: float


async def _cycle(
    site: SimSite, coord_keys: dict[str, str], parked: asyncio.Queue[None], deadline: float
) -> None:
    """Long-poll until a job comes; verify it, sign a result, post it (it must be accepted)."""
    path = f"{API}/site/jobs/next?wait={POLL_WAIT_S}"
    await site.conn.send("GET", path)
    parked.put_nowait(None)
    while True:
        try:
            status, body = await site.conn.receive()
        except HTTPError:
            status, body = 0, b""
        if status == 200:
            break
        if status not in (0, 204) or time.perf_counter() > deadline:
            raise HTTPError(f"{site.name}: the poll answered {status} {body[:200]!r}")
        if status == 0:
            await asyncio.sleep(0.1)  # the connection broke: a new one, not at once
        await site.conn.send("GET", path)  # the poll timed out (204) or the connection closed
    site.claim_at.append(time.perf_counter())
    envelope = json.loads(body)["envelope"]
    verify_document(envelope, coord_keys)
    if envelope["site"] != site.name:
        raise HTTPError(f"{site.name} got a job for {envelope['site']}")
    doc = make_result(envelope, site.key, records=[count("n", 12, of="patients")])
    start = time.perf_counter()
    status, body = await site.conn.request(
        "POST", f"{API}/site/jobs/{envelope['job_id']}/result", canonical_json(doc)
    )
    site.post_s.append(time.perf_counter() - start)
    if status != 200 or not json.loads(body).get("accepted"):
        raise HTTPError(f"{site.name}: the result was answered {status} {body[:200]!r}")


async def _wait_idle(pid: int, limit: float) -> None:
    """Wait until the coordinator has used almost no CPU for 0.3 s: every poll is parked."""
    deadline = time.perf_counter() + limit
    last = process_cpu_s(pid)
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.3)
        now = process_cpu_s(pid)
        if now - last < 0.02:
            return
        last = now
    raise HTTPError(f"the coordinator was still busy {limit:g} s after the polls were sent")


async def _one_run(
    sites: Sequence[SimSite], dave: Connection, vh: str, coord_keys: dict[str, str], pid: int
) -> RunFigures:
    """Park every site's long poll, start a run at all of them, wait for every result."""
    parked: asyncio.Queue[None] = asyncio.Queue()
    start_park = time.perf_counter()
    deadline = start_park + PARK_LIMIT_S + RUN_LIMIT_S
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def cycle(site: SimSite) -> None:
        if not site.conn.connected:
            async with gate:  # the first run connects, a few at a time
                await site.conn.connect()
        await _cycle(site, coord_keys, parked, deadline)

    async def all_parked() -> None:
        for _ in sites:
            await parked.get()

    tasks = [asyncio.create_task(cycle(s)) for s in sites]
    try:
        await asyncio.wait_for(all_parked(), PARK_LIMIT_S)
        await _wait_idle(pid, PARK_LIMIT_S)
        park_s = time.perf_counter() - start_park
        cpu0, server0 = time.process_time(), process_cpu_s(pid)
        t0 = time.perf_counter()
        body = canonical_json(
            {"study": STUDY, "version_hash": vh, "parameters": {"n": 2}, "sites": None, "deadline_s": 600}
        )
        status, answer = await dave.request("POST", f"{API}/runs", body)
        start_run_s = time.perf_counter() - t0
        if status != 201:
            raise HTTPError(f"POST /runs answered {status} {answer[:300]!r}")
        run_id = json.loads(answer)["run_id"]
        await asyncio.wait_for(asyncio.gather(*tasks), RUN_LIMIT_S)
        total_s = time.perf_counter() - t0
        client_cpu, server_cpu = time.process_time() - cpu0, process_cpu_s(pid) - server0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    status, answer = await dave.request("GET", f"{API}/runs/{run_id}")
    got = json.loads(answer)
    if status != 200 or got["state"] != "done" or got["counts"] != {"succeeded": len(sites)}:
        raise HTTPError(f"run {run_id} is not done with {len(sites)} results: {got.get('counts')}")
    return RunFigures(
        total_s,
        start_run_s,
        park_s,
        [s.claim_at[-1] - t0 for s in sites],
        [s.post_s[-1] for s in sites],
        server_cpu,
        client_cpu,
    )


def _setup(root: Path, n: int) -> tuple[CoordinatorProcess, list[tuple[str, SigningKey, str]], str, str]:
    """A coordinator folder with n enrolled sites: (coord, [(site, key, token)], dave's token, version)."""
    coord = init_coordinator(root)
    cfg = load_coordinator_config(coord.config_path)
    # setting up is not measured: no fsync per enrolment here (the server runs with FULL)
    svc = Service(Database(cfg.database_file, synchronous="NORMAL"), SigningKey.load(cfg.key_file), cfg)
    try:
        names = [f"sim-{i:05d}" for i in range(n)]
        tokens, tickets = populate(svc, names)
        sites = []
        for name in names:
            key = SigningKey.generate()
            sites.append((name, key, str(svc.enrol(name, tickets[name], key.public_b64)["site_token"])))
        alice, bob, carol = (svc.get_user(u) for u in ("alice", "bob", "carol"))
        assert alice is not None and bob is not None and carol is not None
        vh = str(svc.submit_notebook(alice, STUDY, trivial_notebook())["version_hash"])
        svc.review(bob, vh, "approve")
        svc.review(carol, vh, "approve")
    finally:
        svc.close()
    return coord, sites, tokens["dave"], vh


async def _measure(
    coord: CoordinatorProcess,
    enrolled: Sequence[tuple[str, SigningKey, str]],
    dave_token: str,
    vh: str,
    runs: int,
    ctx: Context,
) -> list[RunFigures]:
    url = urlsplit(coord.url)
    host, port = str(url.hostname), int(url.port or 80)
    assert coord.proc is not None
    pid = coord.proc.pid
    dave = Connection(host, port, dave_token)
    status, answer = await dave.request("GET", f"{API}/keys")
    if status != 200:
        raise HTTPError(f"GET /keys answered {status}")
    coord_keys: dict[str, str] = json.loads(answer)["keys"]
    sites = [SimSite(name, key, Connection(host, port, token)) for name, key, token in enrolled]
    figures = []
    try:
        for r in range(runs):
            ctx.say(f"run {r + 1}/{runs}: {len(sites)} long polls parked, then POST /runs")
            figures.append(await _one_run(sites, dave, vh, coord_keys, pid))
            ctx.say(f"  {figures[-1].total_s:.2f} s")
    finally:
        for s in sites:
            s.conn.close()
        dave.close()
    return figures


@contextmanager
def _open_files(needed: int) -> Iterator[None]:
    """Raise the soft limit on open files to ``needed`` (at most the hard limit), then restore it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _quantile(values: Sequence[float], q: float) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def run(ctx: Context) -> list[Table]:
    n, runs = ctx.sizes.scale_sites, ctx.sizes.scale_runs
    title = f"{TITLE} ({plural(n, 'site')}, {plural(runs, 'run')})"
    ctx.say(f"registering and enrolling {n:,} sites in-process")
    start = time.perf_counter()
    coord, enrolled, dave_token, vh = _setup(ctx.folder("coordinator"), n)
    setup_s = time.perf_counter() - start
    with _open_files(n + 256):  # this process's connections and the coordinator's (it inherits it)
        coord.start(timeout=60)
        try:
            figures = asyncio.run(_measure(coord, enrolled, dave_token, vh, runs, ctx))
        finally:
            coord.stop()
    claims = [x for f in figures for x in f.claim_s]
    posts = [x for f in figures for x in f.post_s]
    total = median([f.total_s for f in figures])
    table = Table(title)
    table.add(
        Row("one run: POST /runs -> last result accepted", total, "s", target=Target("<", GOAL_S, "figure"))
    )
    table.add(Row("jobs per second", n / total, "jobs/s"))
    table.add(
        Row(
            "POST /runs (creates the jobs, wakes the polls)",
            1000 * median([f.start_run_s for f in figures]),
            "ms",
        )
    )
    table.add(Row("claim latency p50 (run start -> envelope)", 1000 * _quantile(claims, 0.5), "ms"))
    table.add(Row("claim latency p99 (run start -> envelope)", 1000 * _quantile(claims, 0.99), "ms"))
    table.add(Row("result POST latency p50", 1000 * _quantile(posts, 0.5), "ms"))
    table.add(Row("result POST latency p99", 1000 * _quantile(posts, 0.99), "ms"))
    table.add(Row("coordinator CPU during the run", median([f.server_cpu_s for f in figures]), "s"))
    table.add(
        Row(
            "client CPU during the run (all simulated runners)",
            median([f.client_cpu_s for f in figures]),
            "s",
        )
    )
    table.notes.append(
        f"{n:,} sites enrolled in-process in {setup_s:.1f} s (each its own Ed25519 key and token); "
        f"{os.cpu_count()} CPUs shared by the coordinator process and this one-loop client; "
        f"polls parked in {median([f.park_s for f in figures]):.1f} s "
        "(connect + GET, until the coordinator is idle)"
    )
    table.notes.append(
        "each simulated runner checks the coordinator's signature on its envelope and signs its result "
        "(one count record) with its own key; claim latency runs from sending POST /runs, as every poll "
        "was parked before; latencies pooled over all runs, times are medians over runs "
        f"(fastest {min(f.total_s for f in figures):.2f} s, slowest {max(f.total_s for f in figures):.2f} s)"
    )
    return [table]
