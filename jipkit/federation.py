"""The federation from a notebook: ``jip.Coordinator`` for scientists and coordinators.

>>> import jipkit as jip
>>> fed = jip.Coordinator("https://jip.example.org", token)  # doctest: +SKIP
>>> fed.studies()                                            # doctest: +SKIP
>>> v = fed.submit("lung", "notebooks/lung_volume.ipynb")    # doctest: +SKIP
>>> run = fed.run("lung", v, {"max_series": 20})             # doctest: +SKIP
>>> res = run.wait()                                         # a progress bar per site
>>> res.records                                              # site x record, NaN where suppressed
>>> res.pooled                                               # totals, weighted means, pooled sd

Everything goes through the coordinator's HTTP API with the caller's token, so the
coordinator's rules apply unchanged: only members of a study see it, nobody approves
their own notebook, only approved versions run.  What comes back is what the sites
released after their disclosure checks; a suppressed value is *missing* (NaN or None),
never 0, and every pooled figure says how many sites it is missing from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jipkit.coordinator.client import CoordinatorClient
from jipkit.coordinator.db import FINAL_JOB_STATES
from jipkit.errors import CoordinatorError
from jipkit.protocol.messages import redaction_place

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Coordinator", "Run", "RunResults"]


_LABELS = {
    "queued": "queued",
    "leased": "running",
    "held": "held at site",
    "succeeded": "done",
}


def job_label(job: Mapping[str, Any]) -> str:
    """A site's state as people say it: queued, running, held at site, done, refused (reason).

    Examples
    --------
    >>> job_label({"state": "refused", "reason": "policy_study"})
    'refused (policy_study)'
    >>> job_label({"state": "leased", "reason": None})
    'running'
    """
    state = str(job.get("state"))
    label = _LABELS.get(state, state)
    reason = job.get("reason")
    return f"{label} ({reason})" if reason and reason != state and state != "succeeded" else label


def _frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=list(columns))


class Coordinator:
    """A coordinator, as the user behind ``token`` sees it.

    Parameters
    ----------
    url : str, optional
        The coordinator's base URL; default ``$JIP_COORDINATOR_URL``.
    token : str, optional
        An API token (``jip coordinator login`` prints one); default
        ``$JIP_COORDINATOR_TOKEN``.
    verify : str or bool, optional
        A CA bundle for TLS; default ``$JIP_COORDINATOR_CA_BUNDLE`` or the system's.
    timeout : float
        Seconds to wait for each answer.

    Raises
    ------
    CoordinatorError
        No URL given or set, or a URL that is not http(s).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        verify: str | bool | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not (url or os.environ.get("JIP_COORDINATOR_URL")):
            raise CoordinatorError(
                "Expected the coordinator's URL: pass jip.Coordinator(url, token) or set JIP_COORDINATOR_URL."
            )
        self.client = CoordinatorClient.from_env(url, token, verify=verify, timeout=timeout)
        self.url = self.client.url

    def __repr__(self) -> str:
        return f"Coordinator({self.url!r})"

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self.client.close()

    # ------------------------------------------------------------------ studies and notebooks

    def studies(self) -> pd.DataFrame:
        """The studies you are a member of: name, your roles, review quorum, sites."""
        rows = [
            {**s, "roles": ", ".join(s.get("roles") or []), "sites": ", ".join(s.get("sites") or [])}
            for s in self.client.list_studies()
        ]
        return _frame(rows, ["name", "roles", "review_quorum", "sites"])

    def versions(self, study: str) -> pd.DataFrame:
        """A study's notebook versions with their review state, newest first."""
        columns = ["version_hash", "title", "author", "state", "approvals", "rejections", "review_quorum"]
        return _frame(self.client.list_notebooks(study), [*columns, "submitted_at"])

    def notebook(self, version_hash: str) -> dict[str, Any]:
        """One version: its summary, canonical notebook, parameters schema and reviews."""
        return self.client.get_notebook(version_hash)

    def submit(self, study: str, notebook: Mapping[str, Any] | str | os.PathLike[str]) -> str:
        """Submit a notebook (a path to an .ipynb, or its JSON) for review; its version hash.

        Submitting the same notebook again returns the same version (nothing new to review).
        """
        return str(self.client.submit_notebook(study, notebook)["version_hash"])

    def review(self, version_hash: str, approve: bool, comment: str = "") -> dict[str, Any]:
        """Approve or reject a version (reviewers of its study; never its author)."""
        return self.client.review(version_hash, "approve" if approve else "reject", comment)

    # ------------------------------------------------------------------ runs

    def run(
        self,
        study: str,
        version_hash: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        sites: Sequence[str] | None = None,
        deadline_s: int = 600,
    ) -> Run:
        """Start a run of an approved version at the study's sites (or ``sites``).

        The parameters are checked against the notebook's parameters schema by the
        coordinator; a wrong name or type is refused with what was expected.
        """
        out = self.client.start_run(study, version_hash, parameters, sites, deadline_s)
        return Run(self, str(out["run_id"]))

    def runs(self, study: str) -> pd.DataFrame:
        """A study's runs, newest first: run_id, version, state, who started it, when."""
        rows = self.client.list_runs(study)
        return _frame(rows, ["run_id", "version_hash", "state", "created_by", "created_at", "finished_at"])

    def get_run(self, run_id: str) -> Run:
        """A run started earlier (by its id)."""
        self.client.get_run(run_id)  # fails clearly when unknown or not yours to see
        return Run(self, run_id)


@dataclass
class Run:
    """A run: its sites' states, waiting for it, its results."""

    coordinator: Coordinator
    run_id: str

    def __repr__(self) -> str:
        return f"Run({self.run_id!r})"

    def info(self) -> dict[str, Any]:
        """The run as the coordinator has it (state, parameters, jobs)."""
        return self.coordinator.client.get_run(self.run_id)

    def status(self) -> pd.DataFrame:
        """One row per site: state (queued, running, held at site, done, refused or failed with
        its reason code) and attempt."""
        jobs = self.info()["jobs"]
        frame = _frame([{**j, "status": job_label(j)} for j in jobs], ["site", "status", "attempt"])
        return frame.set_index("site")

    def cancel(self) -> dict[str, Any]:
        """Cancel the run's unfinished jobs (coordinators)."""
        return self.coordinator.client.cancel_run(self.run_id)

    def wait(self, timeout: float | None = None, *, progress: bool = True, poll_s: float = 1.0) -> RunResults:
        """Wait until every site has answered; then the results.

        Parameters
        ----------
        timeout : float, optional
            Give up after this many seconds (the run goes on; call again later).
        progress : bool
            A progress bar per site (in a notebook, as widgets).
        poll_s : float
            The most seconds between polls.

        Raises
        ------
        CoordinatorError
            ``wait_timeout`` when the run has not finished within ``timeout``.
        """
        bars: dict[str, Any] = {}
        try:
            self.coordinator.client.wait_run(
                self.run_id,
                timeout=timeout,
                poll_s=poll_s,
                on_progress=(lambda run: self._show(run, bars)) if progress else None,
            )
        except CoordinatorError as err:
            if getattr(err, "reason", None) != "wait_timeout":
                raise
            run = self.info()
            late = CoordinatorError(
                f"Run {self.run_id} has not finished after {timeout:g} s "
                f"({', '.join(f'{n} {s}' for s, n in sorted(run['counts'].items()))}). "
                f"It goes on: call wait() again later, or jip results {self.run_id}."
            )
            late.reason = "wait_timeout"
            raise late from None
        finally:
            for bar in bars.values():
                bar.close()
        return self.results()

    @staticmethod
    def _show(run: Mapping[str, Any], bars: dict[str, Any]) -> None:
        from jipkit.progress import tqdm

        width = max((len(j["site"]) for j in run["jobs"]), default=4)
        for pos, job in enumerate(run["jobs"]):
            bar = bars.get(job["site"])
            if bar is None:
                bar = bars[job["site"]] = tqdm(
                    total=1,
                    desc=job["site"].ljust(width),
                    position=pos,
                    leave=True,
                    bar_format="{desc} {bar} {postfix}",
                )
            done = job["state"] in FINAL_JOB_STATES
            if done and bar.n < 1:
                bar.update(1)
            bar.set_postfix_str(job_label(job), refresh=True)

    def results(self) -> RunResults:
        """What the sites sent so far (a site that has not answered is missing)."""
        return RunResults.from_api(self.coordinator.client.results(self.run_id))


@dataclass(frozen=True)
class RunResults:
    """A run's results: per-site records, pooled figures, the sites' checks.

    Attributes
    ----------
    run_id, study, version_hash, state : str
        The run.
    sites : pandas.DataFrame
        One row per site: status, isolation (``sandbox`` or ``none``), number of
        redactions, signature check, environment digest.
    records : pandas.DataFrame
        Site x record name: counts and measures as floats, NaN where suppressed or not
        reported; texts and tables as they came.
    pooled : pandas.DataFrame
        One row per count or measure: ``total`` (counts), ``mean``, ``n``, ``sd``,
        ``variance`` (measures, pooled exactly from the sites' means, sds and ns),
        ``sites`` that contributed and ``missing_sites``.
    redactions : pandas.DataFrame
        The sites' redaction reports: site, rule, place, count, detail.
    raw : dict
        The coordinator's answer as it came.
    """

    run_id: str
    study: str
    version_hash: str
    state: str
    sites: pd.DataFrame
    records: pd.DataFrame
    pooled: pd.DataFrame
    redactions: pd.DataFrame
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_api(cls, res: Mapping[str, Any]) -> RunResults:
        """Build from the results API's answer (``GET /runs/{id}/results``)."""
        from jipkit.coordinator.aggregate import records_frame

        site_rows = []
        red_rows = []
        for s in res["sites"]:
            prov = s.get("provenance") or {}
            site_rows.append(
                {
                    "site": s["site"],
                    "status": job_label(s),
                    "isolation": s.get("isolation"),
                    "redactions": len(s.get("redactions") or []),
                    "signature_ok": (prov.get("signature") or {}).get("ok") if prov else None,
                    "environment_digest": prov.get("environment_digest"),
                    "series_read": prov.get("series"),
                }
            )
            for r in s.get("redactions") or []:
                place = redaction_place(r)
                row = {"site": s["site"], "rule": r.get("rule"), "place": place, "count": r.get("count", 1)}
                red_rows.append({**row, "detail": r.get("detail")})
        per_site = {s["site"]: s["records"] if s["state"] == "succeeded" else None for s in res["sites"]}
        pooled_rows = []
        for c in res.get("combined", []):
            if c["kind"] not in ("count", "measure"):
                continue
            p = c.get("pooled") or {}
            pooled_rows.append(
                {
                    "name": c["name"],
                    "kind": c["kind"],
                    "of": c.get("of"),
                    "unit": c.get("unit"),
                    "total": p.get("total"),
                    "mean": p.get("mean"),
                    "n": p.get("n"),
                    "sd": p.get("sd"),
                    "variance": p.get("variance"),
                    "sites": c["sites"],
                    "missing_sites": ", ".join(c["missing_sites"]),
                }
            )
        pooled = _frame(
            pooled_rows,
            ["name", "kind", "of", "unit", "total", "mean", "n", "sd", "variance", "sites", "missing_sites"],
        ).set_index("name")
        for col in ("total", "mean", "n", "sd", "variance"):
            pooled[col] = pooled[col].astype(float)  # None -> NaN: missing, never 0
        return cls(
            run_id=str(res["run_id"]),
            study=str(res["study"]),
            version_hash=str(res["version_hash"]),
            state=str(res["state"]),
            sites=_frame(
                site_rows,
                [
                    "site",
                    "status",
                    "isolation",
                    "redactions",
                    "signature_ok",
                    "environment_digest",
                    "series_read",
                ],
            ).set_index("site"),
            records=records_frame(per_site),
            pooled=pooled,
            redactions=_frame(red_rows, ["site", "rule", "place", "count", "detail"]),
            raw=dict(res),
        )

    def table(self, name: str) -> pd.DataFrame:
        """A table record from every site that sent it, one frame with a ``site`` column.

        Suppressed cells are missing (NaN), never 0.

        Raises
        ------
        KeyError
            No site sent a table of that name.
        """
        import pandas as pd

        parts = []
        for s in self.raw["sites"]:
            if s["state"] != "succeeded":
                continue
            for r in s["records"]:
                if r.get("name") == name and r.get("kind") == "table" and isinstance(r.get("value"), dict):
                    part = pd.DataFrame(r["value"]["rows"], columns=r["value"]["columns"])
                    part.insert(0, "site", s["site"])
                    parts.append(part)
        if not parts:
            sent = sorted(
                {r["name"] for s in self.raw["sites"] for r in s["records"] if r.get("kind") == "table"}
            )
            raise KeyError(f"No site sent a table record {name!r}; tables sent: {sent or 'none'}.")
        frame = pd.concat(parts, ignore_index=True)
        for col in frame.columns[1:]:
            if frame[col].map(lambda v: v is None or isinstance(v, int | float)).all():
                frame[col] = frame[col].astype(float)
        return frame

    def plot(self, names: Sequence[str] | None = None) -> Any:
        """Bar charts of counts and measures per site (suppressed: marked, not drawn as 0).

        Returns
        -------
        matplotlib.figure.Figure
        """
        import matplotlib.pyplot as plt

        numeric = [n for n in (names or self.pooled.index) if n in self.records.columns]
        fig, axes = plt.subplots(len(numeric) or 1, 1, figsize=(6, 1.8 * max(len(numeric), 1)), squeeze=False)
        for ax, name in zip(axes[:, 0], numeric, strict=False):
            values = self.records[name]
            ax.barh(values.index, values.fillna(0).to_numpy(), color="tab:blue")
            for i, v in enumerate(values):
                if v != v:  # NaN: suppressed or not reported
                    ax.text(0, i, " suppressed or missing", va="center", fontsize=8, color="tab:red")
            unit = self.pooled.at[name, "unit"]
            ax.set_title(f"{name}" + (f" ({unit})" if isinstance(unit, str) else ""), fontsize=9)
        fig.tight_layout()
        return fig
