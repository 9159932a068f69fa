"""Fixtures for the adversarial notebook corpus: a realistic site, its runner, and the runs.

- ``hospital`` (session): a synthetic hospital archive (:func:`jipkit.data.synth.generate_archive`,
  60 patients: accented, very short, Japanese, Korean, Chinese, Greek and Hebrew names,
  some in ISO 2022 character sets; 8-digit MRNs, accession numbers, birth dates, two
  institutions) and the :data:`TARGETS` written with fixed identifiers by
  :func:`jipkit.data.synth.write_series` (``Ñúñez^José``, ``Müller^Jürgen``, ``Li^Bo``,
  ``佐藤^花子`` in ``ISO_IR 192``), dated in the busiest CT year so that every count of
  the shipped notebooks stays at or above k.
- ``corpus_site`` (session): a site around that archive as an operator sets it up: its
  key, token file, configuration file, pinned coordinator key, state database, runs
  folder (with another run's files planted in it), index, cache and a folder source.
- ``listeners`` (session): a TCP and a UDP socket on 127.0.0.1 that notebooks try to reach.
- ``corpus`` (session): a :class:`Corpus` that runs a notebook through the real
  :class:`jipkit.site.runner.Runner` (signature checks, sandboxed kernel with the data
  channel, the output checks, the release queue, the signed upload) against a fake
  coordinator, once per notebook, and returns a :class:`CorpusRun`.

Each notebook of ``notebooks/`` holds one attempt per code cell, tagged
``attempt:<name>`` and ``expect:<rule>`` (a rule of the redaction report that must name
that cell), ``expect:release`` (the image stays and the result waits for a data
steward) or ``expect:refused`` (the sandbox refused it: the cell prints ``blocked:``).
Tags are part of the canonical notebook, so they are signed with it.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from jipkit.config import FolderSourceConfig, SiteConfig
from jipkit.data.site import Site
from jipkit.data.synth import generate_archive, write_series
from jipkit.protocol.canonical import canonical_json
from jipkit.protocol.notebook import canonical_notebook
from jipkit.protocol.records import RECORD_MIME
from jipkit.protocol.signing import SigningKey, verify_document
from jipkit.site.disclosure import IdentifierMatcher, cached_matcher, index_values
from jipkit.site.runner import JobReport, Runner
from jipkit.site.state import ReleaseRecord
from tests.site.conftest import SANDBOX_AVAILABLE, SiteFixture, make_envelope, write_site_toml
from tests.site.fakes import FakeCoordinator

NOTEBOOKS = Path(__file__).parent / "notebooks"
ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Target:
    """A patient of the archive whose identifiers the corpus knows in advance."""

    name: str
    patient_id: str
    birth_date: str
    accession: str
    institution: str
    charset: str | None
    shape: tuple[int, int, int] = (4, 24, 20)


#: Patients written with fixed identifiers (the hard-coded attempts use them).
TARGETS: tuple[Target, ...] = (
    Target(
        "Ñúñez^José", "04711230", "19621103", "A20240117", "Clínica Santa Úrsula", "ISO_IR 192", (12, 40, 32)
    ),
    Target(
        "Müller^Jürgen", "00012345", "19500101", "3300917245", "Universitätsklinikum Synthstadt", "ISO_IR 100"
    ),
    Target("Li^Bo", "00480015", "19880229", "ACC-20240311-7", "St. Synthetic Hospital", None),
    Target("佐藤^花子", "31415926", "19750704", "JP-88120034", "Clínica Santa Úrsula", "ISO_IR 192"),
)


@dataclass(frozen=True)
class Hospital:
    """The archive: its DICOM folder, its index, and every identifying value in it."""

    dicom: Path
    index: Path
    values: list[tuple[str, str]]
    busy_year: str


@pytest.fixture(scope="session")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Hospital:
    root = tmp_path_factory.mktemp("hospital")
    dicom = root / "dicom"
    manifest = generate_archive(
        dicom / "archive", n_patients=60, seed=3, ct_shape=(6, 16, 16), mr_shape=(4, 16, 16)
    )
    ct = manifest[manifest.Modality == "CT"]
    busy_year = str(ct.StudyDate.str[:4].value_counts().idxmax())
    for i, t in enumerate(TARGETS):
        patient: dict[str, object] = {
            "PatientName": t.name,
            "PatientID": t.patient_id,
            "IssuerOfPatientID": "SYNTH-MRN",
            "PatientBirthDate": t.birth_date,
            "PatientSex": "F" if i % 2 else "M",
        }
        if t.charset is not None:
            patient["SpecificCharacterSet"] = t.charset
        study = {
            "StudyDate": f"{busy_year}06{10 + i:02d}",
            "AccessionNumber": t.accession,
            "InstitutionName": t.institution,
            "StudyDescription": "CT Thorax",
        }
        write_series(
            dicom / "targets" / str(i),
            shape=t.shape,
            spacing=(2.5, 22.5, 22.5),  # as the archive's CT: no group of the shipped notebooks below k
            patient=patient,
            study=study,
            seed=100 + i,
        )
    index = root / "index.sqlite"
    config = SiteConfig(name="hospital", index_path=index, cache_dir=root / "cache", workers=1)
    Site(config).index_paths([dicom], progress=False)
    return Hospital(dicom, index, sorted(set(index_values(index))), busy_year)


@dataclass
class Listeners:
    """A TCP and a UDP socket on the host's 127.0.0.1 and an abstract Unix socket (all
    non-blocking), for exfiltration attempts."""

    tcp: socket.socket
    udp: socket.socket
    unix: socket.socket
    abstract: str

    @property
    def parameters(self) -> dict[str, Any]:
        """The network notebook's parameters: where to send."""
        return {
            "port": self.tcp.getsockname()[1],
            "udp_port": self.udp.getsockname()[1],
            "abstract": self.abstract,
        }

    def received(self) -> list[str]:
        """What reached any of the sockets (empty when nothing did)."""
        got: list[str] = []
        for listener, kind in ((self.tcp, "tcp"), (self.unix, "unix")):
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                got.append(f"a {kind} connection")
                conn.close()
        while True:
            try:
                data, peer = self.udp.recvfrom(65536)
            except BlockingIOError:
                break
            got.append(f"udp datagram of {len(data)} bytes from {peer}")
        return got


@pytest.fixture(scope="session")
def listeners() -> Iterator[Listeners]:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract = f"jip-adversarial-{uuid.uuid4().hex}"
    with tcp, udp, unix:
        tcp.bind(("127.0.0.1", 0))
        udp.bind(("127.0.0.1", 0))
        unix.bind("\0" + abstract)
        for s in (tcp, unix):
            s.listen(16)
        for s in (tcp, udp, unix):
            s.setblocking(False)
        yield Listeners(tcp, udp, unix, abstract)


@dataclass(frozen=True)
class CorpusSite:
    """The site the corpus runs at, and what its runner must keep from every kernel."""

    fixture: SiteFixture
    config: SiteConfig
    secrets: dict[str, str]
    """A text each protected file holds (``key``, ``token``, ``config``, ``other_run``)."""
    paths: dict[str, str]
    """Where the site keeps them (what a hostile notebook would try to read)."""


@pytest.fixture(scope="session")
def corpus_site(
    tmp_path_factory: pytest.TempPathFactory,
    hospital: Hospital,
    coordinator_key: SigningKey,
    kernel_dir: Path,
) -> CorpusSite:
    root = tmp_path_factory.mktemp("site")
    fx = SiteFixture(root, SigningKey.generate(), coordinator_key, kernel_dir)
    fx.key.save(root / "site-key.pem")
    fd = os.open(root / "site-token", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(fx.token + "\n")
    fed = fx.federation()
    config_marker = f"config-canary-{uuid.uuid4().hex}"
    toml = write_site_toml(root / "site.toml", fx.name, fed, hospital.index)
    toml.write_text(toml.read_text(encoding="utf-8") + f"# {config_marker}\n", encoding="utf-8")
    toml.chmod(0o600)
    other_run = root / "runs" / "job-earlier-a1-x1y2z3"  # another job's run folder, as the runner leaves it
    other_run.mkdir(parents=True, mode=0o700)
    run_marker = f"other-run-canary-{uuid.uuid4().hex}"
    (other_run / "executed.ipynb").write_text(json.dumps({"canary": run_marker}), encoding="utf-8")
    config = SiteConfig(
        name=fx.name,
        index_path=hospital.index,
        cache_dir=root / "cache",
        workers=1,
        sources=[FolderSourceConfig(name="archive", path=hospital.dicom)],
        federation=fed,
        path=toml,
    )
    key_line = next(
        line for line in (root / "site-key.pem").read_text().splitlines() if line and not line.startswith("-")
    )
    dicom_file = next(p for p in sorted(hospital.dicom.rglob("*.dcm")))
    assert fed.state_db is not None
    return CorpusSite(
        fx,
        config,
        secrets={"key": key_line, "token": fx.token, "config": config_marker, "other_run": run_marker},
        paths={
            "key": str(fed.key_path),
            "token": str(root / "site-token"),
            "config": str(toml),
            "state": str(fed.state_db),
            "index": str(hospital.index),
            "cache": str(config.cache_dir),
            "runs": str(fed.workdir),
            "other_run": str(other_run / "executed.ipynb"),
            "dicom_file": str(dicom_file),
            "dicom_folder": str(hospital.dicom),
            "site_root": str(root),
        },
    )


class _Coordinator(FakeCoordinator):
    """The fake coordinator, also answering ``POST /site/jobs/{id}/held``."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        if (
            request.url.path.endswith("/held")
            and request.headers.get("authorization") == f"Bearer {self.token}"
        ):
            return self._answer(200, {"held": True})
        return super().handle(request)


@dataclass(frozen=True)
class Attempt:
    """One attempt: a code cell of a corpus notebook and what must become of it."""

    notebook: str
    cell: int
    name: str
    expect: frozenset[str]

    @property
    def id(self) -> str:
        return f"{self.notebook}:{self.name}"


def load_notebook(path: Path) -> dict[str, Any]:
    """The canonical form of a notebook file."""
    return canonical_notebook(path.read_text(encoding="utf-8"))


def attempts_of(path: Path) -> list[Attempt]:
    """The attempts of a corpus notebook, read from its cell tags."""
    canon = load_notebook(path)
    out = []
    for i, cell in enumerate(canon["cells"]):
        names = [t.split(":", 1)[1] for t in cell["tags"] if t.startswith("attempt:")]
        if names:
            expect = frozenset(t.split(":", 1)[1] for t in cell["tags"] if t.startswith("expect:"))
            out.append(Attempt(path.stem, i, names[0], expect))
    return out


@dataclass
class CorpusRun:
    """A notebook's run through the runner, and what left the site."""

    name: str
    canon: dict[str, Any]
    report: JobReport
    document: dict[str, Any]
    """The result as uploaded (signature verified); for a held result, as uploaded after release."""
    body: bytes
    held: ReleaseRecord | None
    """The release queue's record, when the result was held."""
    executed: dict[str, Any] | None
    """The executed notebook the site keeps (original outputs; never leaves)."""
    record_cells: list[int] = field(default_factory=list)
    """The cell each record came from, in record order."""

    @property
    def redactions(self) -> list[dict[str, Any]]:
        return list(self.document.get("redactions") or [])

    def cell_of(self, place: Mapping[str, Any]) -> int | None:
        """The cell a redaction's place is in (records are mapped to the cell that made them)."""
        if "cell" in place:
            return int(place["cell"])
        if "record" in place and int(place["record"]) < len(self.record_cells):
            return self.record_cells[int(place["record"])]
        return None

    def rules_at(self, cell: int) -> dict[str, list[dict[str, Any]]]:
        """The redaction report's entries at a cell, by rule."""
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in self.redactions:
            if self.cell_of(entry["place"]) == cell:
                out[entry["rule"]].append(entry)
        return dict(out)

    def outputs_at(self, cell: int) -> list[dict[str, Any]]:
        """The outputs of a cell as they left the site."""
        return [o for c in self.document["outputs"] if c["cell"] == cell for o in c["outputs"]]

    def original_outputs_at(self, cell: int) -> list[dict[str, Any]]:
        """The outputs of a cell as the kernel wrote them (kept at the site)."""
        assert self.executed is not None
        for c in self.executed["cells"]:
            if c.get("id") == f"cell-{cell}":
                return list(c.get("outputs", []))
        return []

    def stdout_at(self, cell: int) -> str:
        """The stdout of a cell as it left the site."""
        return "".join(
            "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
            for o in self.outputs_at(cell)
            if o.get("output_type") == "stream"
        )


def _record_cells(executed: Mapping[str, Any]) -> list[int]:
    cells = []
    for c in executed["cells"]:
        cell_id = str(c.get("id", ""))
        if c.get("cell_type") != "code" or not cell_id.startswith("cell-"):
            continue
        for o in c.get("outputs", []):
            if o.get("output_type") in ("display_data", "execute_result") and RECORD_MIME in o.get(
                "data", {}
            ):
                cells.append(int(cell_id.removeprefix("cell-")))
    return cells


class Corpus:
    """Runs corpus notebooks through the site's runner, each once (results are kept)."""

    def __init__(self, site: CorpusSite, coordinator_key: SigningKey):
        self.site = site
        self.coordinator_key = coordinator_key
        self.fake = _Coordinator(site.fixture.key.public_b64, site.fixture.token)
        self.runner = Runner(site.config, transport=self.fake.transport(), rng=random.Random(0))
        self.runs: dict[str, CorpusRun] = {}

    def close(self) -> None:
        self.runner.close()

    @property
    def matcher(self) -> IdentifierMatcher:
        """The identifier matcher the runner checks with."""
        p = self.site.config.federation.policy.output  # type: ignore[union-attr]
        return cached_matcher(
            self.site.config.index_path,
            min_length=p.min_identifier_length,
            min_numeric_length=p.min_numeric_identifier_length,
        )

    def run(self, path: Path, parameters: dict[str, Any] | None = None) -> CorpusRun:
        """Run ``path`` (a notebook file) as a signed job; the first call's run is kept."""
        key = str(path)
        if key in self.runs:
            return self.runs[key]
        canon = load_notebook(path)
        env = make_envelope(
            self.coordinator_key,
            canon,
            site=self.site.fixture.name,
            parameters=parameters or {},
            deadline_s=180,
        )
        self.fake.offer(env)
        report = self.runner.run_once(wait_s=0)
        assert report is not None and report.job_id == env["job_id"]
        held = None
        if report.status == "held":
            held = self.runner.state.release(env["job_id"])
            assert held is not None
            self.runner.state.decide(env["job_id"], "steward", "approve", "corpus check")
            self.runner.flush_releases()
            self.runner.flush_pending()
        body = self.fake.accepted[env["job_id"]]
        doc = json.loads(body)
        fx = self.site.fixture
        assert verify_document(doc, {fx.key.key_id: fx.key.public_b64}) == fx.key.key_id
        runs = sorted(Path(self.site.paths["runs"]).glob(f"{env['job_id']}-a1-*/executed.ipynb"))
        executed = json.loads(runs[0].read_text(encoding="utf-8")) if runs else None
        run = CorpusRun(
            path.stem,
            canon,
            report,
            doc,
            body,
            held,
            executed,
            _record_cells(executed) if executed is not None else [],
        )
        self.runs[key] = run
        return run


@pytest.fixture(scope="session")
def corpus(corpus_site: CorpusSite, coordinator_key: SigningKey) -> Iterator[Corpus]:
    c = Corpus(corpus_site, coordinator_key)
    try:
        yield c
    finally:
        c.close()


def sandbox_only() -> pytest.MarkDecorator:
    """Skip where the kernel cannot run in the sandbox (the attempt would really escape)."""
    return pytest.mark.skipif(
        not SANDBOX_AVAILABLE,
        reason="the sandbox cannot run here (it needs root, bubblewrap, setpriv and a writable memory "
        "cgroup); unisolated, a kernel reaches the network and the site's files, so these attempts "
        "are not run",
    )


def index_rows(index: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on the site's index."""
    con = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def document_text(doc: Mapping[str, Any]) -> str:
    """A result document as one text (its canonical JSON, non-ASCII as written)."""
    return canonical_json(doc).decode("utf-8")
