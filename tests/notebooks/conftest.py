"""Fixtures for the vetted notebooks' tests.

- ``archive`` (session): a synthetic site written by :func:`jipkit.data.synth.generate_archive`
  (10 patients, CT 48x96x96 and a thicker second reconstruction, seed 0: 21 CT series,
  at least 5 per scanner model and per slice thickness, so that every count the
  notebooks record passes the default k = 5), indexed; its manifest and the
  ``ground_truth.csv`` written beside it.
- ``matcher`` (session): the site's identifying values, for the output checks.
- ``runner`` (session): runs a shipped notebook as the site's runner does: papermill in
  the ``jip`` kernel, in the sandbox where this machine provides it
  (:data:`SANDBOX_AVAILABLE`), a site's data served over the data channel;
  ``outcome_of`` (session) runs it on ``archive``, each parameter set once.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from jipkit.config import SiteConfig
from jipkit.data.site import Site
from jipkit.data.synth import generate_archive
from jipkit.protocol.notebook import canonical_notebook
from jipkit.site.disclosure import IdentifierMatcher
from jipkit.site.execute import Outcome, run_notebook
from jipkit.site.fedconfig import SandboxConfig
from jipkit.site.sandbox import probe

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
#: Whether kernels can run in the sandbox here (root, bubblewrap, a memory cgroup).
SANDBOX_AVAILABLE = probe(SandboxConfig(), [sys.executable]).available
#: The largest relative error of a lung or body volume against the ground truth.
TOLERANCE = 0.02


@dataclass(frozen=True)
class Archive:
    """A synthetic site: its configuration, manifest and ground truth."""

    root: Path
    config: SiteConfig
    toml: Path
    manifest: pd.DataFrame
    truth: pd.DataFrame

    def site(self) -> Site:
        return Site(self.config)


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    root = tmp_path_factory.mktemp("nb-archive")
    manifest = generate_archive(
        root / "dicom", n_patients=10, seed=0, ct_shape=(48, 96, 96), mr_shape=(8, 16, 16)
    )
    config = SiteConfig(name="site-a", index_path=root / "index.sqlite", cache_dir=root / "cache", workers=1)
    toml = root / "site.toml"
    toml.write_text(
        f'name = "site-a"\nindex_path = "{root}/index.sqlite"\ncache_dir = "{root}/cache"\nworkers = 1\n',
        encoding="utf-8",
    )
    site = Site(config)
    site.index_paths([root / "dicom"], progress=False)
    site.index.close()
    truth = pd.read_csv(root / "dicom" / "ground_truth.csv", dtype={"PatientID": str})
    return Archive(root, config, toml, manifest, truth)


@pytest.fixture(scope="session")
def matcher(archive: Archive) -> IdentifierMatcher:
    return IdentifierMatcher.from_index(archive.config.index_path)


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``jip`` kernelspec made from ``kernels/jip/kernel.json`` with this interpreter."""
    root = tmp_path_factory.mktemp("kernels")
    spec = (ROOT / "kernels" / "jip" / "kernel.json").read_text(encoding="utf-8")
    (root / "jip").mkdir()
    (root / "jip" / "kernel.json").write_text(spec.replace("@VENV_PYTHON@", sys.executable), encoding="utf-8")
    return root


def canon(name: str) -> dict[str, Any]:
    """The canonical form of ``notebooks/<name>.ipynb``."""
    return canonical_notebook((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))


def source(name: str) -> str:
    """The code of ``notebooks/<name>.ipynb`` (what the output checks match record names against)."""
    return "\n\n".join(c["source"] for c in canon(name)["cells"] if c["cell_type"] == "code")


Runner = Callable[..., Outcome]


@pytest.fixture(scope="session")
def runner(kernel_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """``runner(name, parameters, data=site, protected=folder)``: run a shipped notebook."""
    runs = tmp_path_factory.mktemp("nb-runs")
    probed = (
        probe(SandboxConfig(memory_bytes=3 * 2**30, scratch_bytes=256 * 2**20), [sys.executable])
        if SANDBOX_AVAILABLE
        else None
    )

    def run(name: str, parameters: dict[str, Any], *, data: Site, protected: Path) -> Outcome:
        support = None if probed is None else dataclasses.replace(probed, protected=(protected,))
        return run_notebook(
            canon(name),
            parameters,
            workdir=runs,
            deadline_s=240,
            kernel_dirs=[kernel_dir],
            # one thread: torch waits at every step for threads that a busy machine deschedules
            extra_env={"OMP_NUM_THREADS": "1"},
            sandbox=support,
            data=data,
            label=name,
        )

    return run


@pytest.fixture(scope="session")
def outcome_of(archive: Archive, runner: Runner) -> Callable[[str, dict[str, Any]], Outcome]:
    """Run a shipped notebook on ``archive`` with these parameters (each combination once)."""
    done: dict[str, Outcome] = {}

    def run(name: str, parameters: dict[str, Any]) -> Outcome:
        key = f"{name} {sorted(parameters.items())}"
        if key not in done:
            done[key] = runner(name, parameters, data=archive.site(), protected=archive.root)
        return done[key]

    return run
