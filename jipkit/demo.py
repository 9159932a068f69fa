"""`jip demo`: the main job, a whole federation on this machine.

A coordinator and three sites, each with its own synthetic archive (in its own Orthanc
PACS where Orthanc is installed, else a folder), index, keys, runner and working
directories.  For each of the three shipped notebooks (:data:`NOTEBOOKS`: the cohort
overview, the CT quality check and the lung volumes) a scientist submits it, two
reviewers approve it, a coordinator runs it at the three sites, and the per-site and
combined results are printed.  A result that holds plots waits at each site for a data
steward's release, as every image does under the default site policy: the demo's
steward releases it.  Without ``--exit-when-done`` everything keeps running (the
coordinator's URL and the users' passwords are printed) until Ctrl-C stops it cleanly.

Each site's archive keeps its ``ground_truth.csv`` (the phantoms' lung and body
volumes) in ``<workdir>/<site>/archive/``.  With the default 96x96x48 CT volumes the
whole demo takes about a minute on two cores; ``--full`` (512x512x300) takes several
minutes more, most of it writing and indexing the archives.

Everything is set up as an operator would with the ``jip`` command line; the steps are
printed with the commands that do the same by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from jipkit.errors import JipError

__all__ = ["run_demo"]

SITES = ("site-a", "site-b", "site-c")
STUDY = "demo"
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK = NOTEBOOK_DIR / "cohort_overview.ipynb"
#: The shipped notebooks the demo runs, in order, with their run parameters.
NOTEBOOKS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("cohort_overview.ipynb", {"modalities": ["CT", "MR"], "first_year": 2015}),
    ("ct_quality.ipynb", {}),
    ("lung_volume.ipynb", {}),
)
#: With ``--full`` (512x512x300 CTs: 1 to 3 s of CPU each to segment, and as much again to
#: retrieve from the PACS) the notebooks that read pixels read five CTs per site (five: the
#: least that k = 5 lets out).
FULL_SIZE_PARAMETERS: dict[str, dict[str, Any]] = {
    "ct_quality.ipynb": {"max_series": 5},
    "lung_volume.ipynb": {"max_studies": 5},
}
#: The data steward who releases held results at every site (jip site release approve --by).
STEWARD = "erin"
#: user -> role in the study
USERS = {"alice": "scientist", "bob": "reviewer", "carol": "reviewer", "dave": "coordinator"}


def _say(msg: str) -> None:
    print(msg, flush=True)


def _jip() -> list[str]:
    return [sys.executable, "-m", "jipkit.cli"]


def _toml_value(v: Any) -> str:
    return json.dumps(str(v) if isinstance(v, Path) else v, ensure_ascii=False)


@dataclass
class _Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-15:]
            raise JipError(
                f"The {self.name} stopped (status {self.proc.returncode}). Its log ends:\n" + "\n".join(tail)
            )


@dataclass
class Federation:
    """The demo's processes and files; stop everything with :meth:`close`."""

    work: Path
    patients: int
    full: bool
    use_pacs: bool
    processes: list[_Process] = field(default_factory=list)
    stack: ExitStack = field(default_factory=ExitStack)
    url: str = ""
    fingerprint: str = ""
    passwords: dict[str, str] = field(default_factory=dict)
    site_tomls: dict[str, Path] = field(default_factory=dict)

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> _Process:
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops the rest in order
            )
        p = _Process(name, proc, log)
        self.processes.append(p)
        return p

    def close(self) -> None:
        for p in reversed(self.processes):
            p.stop()
        self.stack.close()

    # -- the coordinator -----------------------------------------------------------

    def start_coordinator(self) -> None:
        from jipkit.coordinator.config import load_coordinator_config
        from jipkit.coordinator.service import Service
        from jipkit.orthanc import free_port
        from jipkit.protocol.signing import SigningKey, fingerprint

        root = self.work / "coordinator"
        root.mkdir(parents=True, mode=0o700)
        port = free_port()
        toml = root / "coordinator.toml"
        toml.write_text(f'data_dir = "{root / "data"}"\nhost = "127.0.0.1"\nport = {port}\nlease_s = 30\n')
        _say(
            f"1. Coordinator at http://127.0.0.1:{port} (jip coordinator init / create-admin / add-user / add-study)"
        )
        cfg = load_coordinator_config(toml)
        cfg.data_dir.mkdir(parents=True, mode=0o700)
        key = SigningKey.generate()
        key.save(cfg.key_file)
        self.fingerprint = fingerprint(key.public_b64)
        service = Service.open(cfg)
        try:
            self.passwords = {u: secrets.token_urlsafe(12) for u in ("admin", *USERS)}
            service.create_user("admin", self.passwords["admin"], admin=True)
            service.create_study(STUDY, review_quorum=2)
            for user, role in USERS.items():
                service.create_user(user, self.passwords[user])
                service.grant_role(STUDY, user, role)
            self.tickets = {name: service.add_site(name, study=STUDY) for name in SITES}
        finally:
            service.close()
        self.coordinator = self._spawn("coordinator", [*_jip(), "coordinator", "serve", "-c", str(toml)])
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            self.coordinator.check()
            try:
                if httpx.get(f"{self.url}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise JipError(
                    f"The coordinator did not answer at {self.url} within 60 s; see {self.coordinator.log}."
                )
            time.sleep(0.2)
        _say(f"   signing key fingerprint {self.fingerprint}")

    # -- sites ---------------------------------------------------------------------

    def add_site(self, index: int, name: str) -> None:
        from jipkit.config import load_config
        from jipkit.data import synth
        from jipkit.data.site import Site
        from jipkit.site.enrol import enrol
        from jipkit.site.fedconfig import federation_of

        root = self.work / name
        archive = root / "archive"
        shape = (300, 512, 512) if self.full else (48, 96, 96)
        manifest = synth.generate_archive(archive, n_patients=self.patients, seed=100 + index, ct_shape=shape)
        sources = ""
        where = "a folder source"
        if self.use_pacs:
            from jipkit.orthanc import start_orthanc, stop_orthanc

            env_name = f"ORTHANC_PASSWORD_{name.upper().replace('-', '_')}"
            server = start_orthanc(root / "orthanc", env_name, name=f"jip-demo-{name}")
            self.stack.callback(stop_orthanc, server.process)
            os.environ[env_name] = server.password
            server.upload(sorted(p for p in archive.rglob("*.dcm")))
            sources = (
                "[[sources]]\n"
                f'name = "pacs"\nkind = "dicomweb"\nurl = "{server.dicomweb_url}"\n'
                f'auth = {{ type = "basic", username = "{server.username}", password_env = "{env_name}" }}\n'
            )
            where = f"its own Orthanc ({server.url}, DICOMweb)"
        fed = root / "federation"
        toml = root / "site.toml"
        toml.write_text(
            f"name = {_toml_value(name)}\n"
            f"index_path = {_toml_value(root / 'index.sqlite')}\n"
            f"cache_dir = {_toml_value(root / 'cache')}\n"
            f"{sources}"
            "[federation]\n"
            f"coordinator_url = {_toml_value(self.url)}\n"
            f"key_path = {_toml_value(fed / 'site-key.pem')}\n"
            f"token_file = {_toml_value(fed / 'site-token')}\n"
            f"pinned_keys_file = {_toml_value(fed / 'coordinator-keys.json')}\n"
            f"workdir = {_toml_value(fed / 'runs')}\n"
            f"state_db = {_toml_value(fed / 'runner.sqlite')}\n"
            "poll_wait_s = 10\n"
            'kernel_env = ["OMP_NUM_THREADS"]\n'
            "[federation.policy]\n"
            f"studies = [{_toml_value(STUDY)}]\n"
            f"coordinators = [{_toml_value(self.fingerprint[7:23])}]\n",
            encoding="utf-8",
        )
        self.site_tomls[name] = toml
        site = Site(load_config(toml))
        if self.use_pacs:
            report: Any = site.sync(progress=False)
        else:
            report = site.index_paths([archive], progress=False)
        _say(
            f"2. {name}: {manifest.PatientID.nunique()} patients, {len(manifest)} series in {where}; "
            f"indexed ({report})"
        )
        ticket = self.tickets[name]
        enrol(federation_of(load_config(toml)), name, str(ticket.enrol_token), [self.fingerprint])
        _say("   enrolled with a one-time token, coordinator key pinned; runner started (jip site run)")
        # Three sites share this machine: each kernel computes on its share of the CPUs (torch
        # with more threads than free cores waits on them at every step).
        threads = max(1, (os.cpu_count() or 1) // len(SITES))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self._spawn(f"runner-{name}", [*_jip(), "--config", str(toml), "site", "run"], env=env)

    # -- a run -----------------------------------------------------------------------

    def release_held(self, site: str) -> list[str]:
        """Release the results held at ``site`` as its data steward; return their job IDs.

        What ``jip --config <site.toml> site release approve JOB --by erin`` does.
        """
        from jipkit.config import load_config
        from jipkit.protocol.signing import SigningKey
        from jipkit.site.client import CoordinatorClient as SiteClient
        from jipkit.site.fedconfig import federation_of
        from jipkit.site.release import deliver, seal_decided
        from jipkit.site.state import RunnerState

        fed = federation_of(load_config(self.site_tomls[site]))
        with RunnerState(fed.state_db) as state:
            jobs = [rec.job_id for rec in state.releases("pending")]
            for job in jobs:
                state.decide(job, STEWARD, "approve", "the demo's plots, looked at")
            if jobs:
                seal_decided(state, SigningKey.load(fed.key_path), jobs)
                client = SiteClient(fed, fed.site_token())
                try:
                    deliver(state, client, jobs)
                finally:
                    client.close()
        return jobs

    def run_notebook(self, parameters: dict[str, Any], notebook: Path = NOTEBOOK) -> dict[str, Any]:
        """Submit ``notebook``, have it approved, run it at every site; return its results."""
        from jipkit.coordinator.client import CoordinatorClient

        nb = json.loads(notebook.read_text(encoding="utf-8"))
        with CoordinatorClient(self.url) as alice:
            alice.login("alice", self.passwords["alice"])
            version = alice.submit_notebook(STUDY, nb)["version_hash"]
        _say(f"   alice submitted {notebook.name}: version {version[:12]} (jip notebook submit)")
        for reviewer in ("bob", "carol"):
            with CoordinatorClient(self.url) as c:
                c.login(reviewer, self.passwords[reviewer])
                c.review(version, "approve", "reviewed in the demo")
        _say(
            "   bob and carol approved it (jip notebook review --approve); two reviewers, neither the author"
        )
        with CoordinatorClient(self.url) as dave:
            dave.login("dave", self.passwords["dave"])
            run = dave.start_run(STUDY, version, parameters, sites=list(SITES), deadline_s=600)
            _say(f"   dave started run {run['run_id']} at {', '.join(SITES)} with {parameters} (jip run)")
            last: dict[str, str] = {}
            released: set[str] = set()

            def progress(r: dict[str, Any]) -> None:
                for p in self.processes:
                    p.check()
                states = {j["site"]: j["state"] for j in r["jobs"]}
                if states != last:
                    last.clear()
                    last.update(states)
                    _say("   " + "  ".join(f"{s}: {st}" for s, st in sorted(states.items())))
                for site, state in sorted(states.items()):
                    if state == "held" and site not in released and self.release_held(site):
                        released.add(site)
                        _say(
                            f"   {site}: its result holds a plot, which waits for a data steward; "
                            f"{STEWARD} looked at it and released it (jip site release approve JOB --by {STEWARD})"
                        )

            dave.wait_run(run["run_id"], timeout=900, on_progress=progress)
            return dave.results(run["run_id"])


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo federation; return the exit status."""
    from jipkit.coordinator.cli import print_results
    from jipkit.orthanc import orthanc_installed

    with tempfile.TemporaryDirectory(prefix="jip-demo-") as tmp:
        work = Path(args.workdir).resolve() if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if any(work.iterdir()):
            raise JipError(f"The demo's folder {work} is not empty. Choose an empty or new folder.")
        use_pacs = orthanc_installed() and not args.no_pacs
        fed = Federation(work, args.patients, args.full, use_pacs)
        interrupted = False
        try:
            fed.start_coordinator()
            for i, name in enumerate(SITES):
                fed.add_site(i, name)
            ok = True
            for k, (name, parameters) in enumerate(NOTEBOOKS):
                started = time.monotonic()
                _say(f"{3 + k}. Notebook {k + 1} of {len(NOTEBOOKS)}: {name}")
                if args.full:
                    parameters = {**parameters, **FULL_SIZE_PARAMETERS.get(name, {})}
                results = fed.run_notebook(parameters, NOTEBOOK_DIR / name)
                _say(
                    f"   Results after {time.monotonic() - started:.0f} s "
                    "(only output cells and records left the sites):"
                )
                print_results(results, "table", sys.stdout)
                ok = ok and all(s["state"] == "succeeded" for s in results["sites"])
            if not args.exit_when_done:
                _say(
                    f"\nThe federation keeps running: the dashboard at {fed.url}/ui/ , the API at {fed.url} "
                    f"(users: {', '.join(f'{u} / {p}' for u, p in fed.passwords.items())}); "
                    f"files and logs under {work}.\nPress Ctrl-C to stop."
                )
                while True:
                    for p in fed.processes:
                        p.check()
                    time.sleep(1)
            return 0 if ok else 1
        except KeyboardInterrupt:
            interrupted = True
            return 0
        finally:
            if interrupted:
                _say("\nStopping the runners, the coordinator and the PACS ...")
            fed.close()
            if interrupted:
                _say("Stopped.")
