"""Fixtures for the sandbox and data channel tests.

- ``archive`` (session): a small indexed site: a CT series and a two-echo MR series
  written by :func:`jipkit.data.synth.write_series`, and an index of them.
- ``support``: the sandbox, probed with small limits, protecting the ``site`` fixture's
  key, token, state, runs folder and index.
- ``sandboxed``: a marker that skips a test where the sandbox cannot run here.
"""

from __future__ import annotations

import dataclasses
import secrets
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jipkit.config import SiteConfig
from jipkit.data.site import Site
from jipkit.data.synth import SeriesInfo, write_series
from jipkit.protocol.notebook import canonical_notebook
from jipkit.site.execute import Outcome, run_notebook
from jipkit.site.fedconfig import SandboxConfig
from jipkit.site.sandbox import SandboxSupport, probe
from tests.site.conftest import SANDBOX_AVAILABLE

NOTEBOOKS = Path(__file__).parent / "notebooks"
MEMORY = 768 * 2**20
SCRATCH = 16 * 2**20

sandboxed = pytest.mark.skipif(
    not SANDBOX_AVAILABLE,
    reason="the sandbox cannot run here: it needs root, bubblewrap (apt-get install bubblewrap), "
    "util-linux's setpriv and a writable memory cgroup",
)


def load_canon(name: str) -> dict[str, Any]:
    """The canonical form of ``tests/site/sandbox/notebooks/<name>.ipynb``."""
    return canonical_notebook((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Archive:
    """A small site: its configuration, and what was written."""

    config: SiteConfig
    ct: SeriesInfo
    mr: SeriesInfo
    folder: Path

    def site(self) -> Site:
        return Site(self.config)


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    root = tmp_path_factory.mktemp("archive")
    patient = {"PatientName": "Müller^Jürgen", "PatientID": "00012345", "PatientBirthDate": "19500101"}
    ct = write_series(root / "dicom" / "ct", shape=(6, 24, 20), patient=patient, seed=1)
    mr = write_series(
        root / "dicom" / "mr", shape=(4, 16, 16), modality="MR", echoes=2, patient=patient, seed=2
    )
    config = SiteConfig(name="site-a", index_path=root / "index.sqlite", cache_dir=root / "cache", workers=1)
    Site(config).index_paths([root / "dicom"], progress=False)
    return Archive(config, ct, mr, root / "dicom")


@pytest.fixture(scope="session")
def probed() -> SandboxSupport:
    """The sandbox with small limits (probed once: about 50 ms)."""
    return probe(SandboxConfig(memory_bytes=MEMORY, scratch_bytes=SCRATCH), [sys.executable])


@pytest.fixture
def support(probed: SandboxSupport, tmp_path: Path) -> SandboxSupport:
    """``probed``, protecting what the runner of a site under ``tmp_path`` holds."""
    # a tag of its own: the test's checks for left-over run groups see only its own groups,
    # not those of another test session on the same machine
    return dataclasses.replace(probed, protected=(tmp_path,), tag=f"t{secrets.token_hex(4)}")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path (Unix socket paths hold at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="jip-t-") as d:
        yield Path(d)


def run(
    name: str,
    tmp_path: Path,
    kernel_dir: Path,
    *,
    support: SandboxSupport | None,
    data: Site | None = None,
    parameters: dict[str, Any] | None = None,
    **kw: Any,
) -> Outcome:
    """Run ``notebooks/<name>.ipynb`` (sandboxed when ``support`` is given)."""
    kw.setdefault("deadline_s", 60)
    kw.setdefault("label", name)
    return run_notebook(
        load_canon(name) if name in {p.stem for p in NOTEBOOKS.glob("*.ipynb")} else _site_canon(name),
        parameters or {},
        workdir=tmp_path / "runs",
        kernel_dirs=[kernel_dir],
        sandbox=support,
        data=data,
        **kw,
    )


def _site_canon(name: str) -> dict[str, Any]:
    from tests.site.conftest import load_canon as site_canon

    return site_canon(name)


def stdout_of(outcome: Outcome) -> str:
    """Everything the run printed, in order."""
    return "".join(
        "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
        for cell in outcome.outputs
        for o in cell["outputs"]
        if o.get("output_type") == "stream"
    )
