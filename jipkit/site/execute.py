"""Run a canonical notebook headless with papermill in the site's JIP kernel.

Each run gets

- a fresh working directory under the runner's ``workdir`` (mode 0700): the kernel's own
  stdout and stderr (``kernel.log``) and the executed notebook (``executed.ipynb``), kept
  as the site's record of the run; without the sandbox also the kernel's ``HOME`` and
  current directory, ``TMPDIR``, IPython's and Jupyter's directories;
- with ``sandbox`` (see :mod:`jipkit.site.sandbox`): a kernel confined by bubblewrap, as
  an unprivileged user without network, seeing only the system and its Python read-only,
  with a size-limited scratch ``/tmp`` as its home, in a memory cgroup of its own; its
  per-run kernelspec is kept in ``<run>/sandbox/kernels``;
- with ``data``: the site's data served to the kernel over a Unix socket in the runtime
  folder (:mod:`jipkit.site.dataserver`); ``jip.connect()`` in the kernel uses it, and the
  outcome lists the series the run read;
- a kernel environment built from an allow-list (:func:`kernel_environment`): no
  ``JIP_*`` secrets, no tokens, nothing of the runner's environment that is not named;
- kernel channels over Unix sockets (``ipc``) in a private runtime folder, not TCP;
- a wall-clock watchdog: at the deadline (or when the caller's :class:`StopFlag` is
  set) the kernel's whole process group is killed (papermill's own time-out is per cell).
  The group is also killed after every run, so nothing a notebook started outlives it.

Only output cells (no sources, no error outputs, no stderr) and typed records come back
in the :class:`Outcome` (what was withheld is counted per cell, for the redaction
report); messages and tracebacks go to the site's log.  A failed run
returns no outputs or records: its status, reason code, failing cell index and (only for
Python built-ins) the exception's class name.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import nbformat
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager

from jipkit.data.remote import DATA_SOCKET_ENV
from jipkit.errors import ConfigError, NotebookError
from jipkit.protocol.messages import builtin_exception_name, utcnow_iso
from jipkit.protocol.notebook import to_nbformat
from jipkit.protocol.records import extract_records
from jipkit.site.sandbox import SCRATCH, Sandbox, SandboxError, SandboxSupport

if TYPE_CHECKING:
    from jipkit.data.site import Site

__all__ = [
    "BASE_ENV",
    "DATA_ENV",
    "Outcome",
    "StopFlag",
    "check_kernel",
    "kernel_environment",
    "run_notebook",
]

log = logging.getLogger("jipkit.site")

#: Variables of the runner's environment that the kernel sees (when set).
BASE_ENV: Final = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ")
#: ``JIP_*`` variables that may reach the kernel: where the site's data is, no secrets.
DATA_ENV: Final = frozenset({"JIP_CONFIG", "JIP_NAME", "JIP_INDEX_PATH", "JIP_CACHE_DIR"})

_CELL_ID = re.compile(r"^cell-(\d+)$")
_GIVE_UP_S: Final = 30.0


class StopFlag:
    """Ask a running notebook to stop; the first reason given wins.  Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._linked: list[threading.Event] = []
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        """Stop, for ``reason`` (e.g. ``cancelled``, ``lease_lost``, ``stopping``)."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
            linked = list(self._linked)
        self._event.set()
        for event in linked:
            event.set()

    def link(self, event: threading.Event) -> None:
        """Also set ``event`` when a stop is asked for (now, if it already was)."""
        with self._lock:
            self._linked.append(event)
            if self.reason is not None:
                event.set()

    def is_set(self) -> bool:
        """Whether a stop was asked for."""
        return self._event.is_set()

    def wait(self, timeout: float | None) -> bool:
        """Wait until a stop is asked for, at most ``timeout`` seconds; return whether it was."""
        return self._event.wait(timeout)


@dataclass(frozen=True)
class Outcome:
    """What became of a run.

    Attributes
    ----------
    status : {"succeeded", "failed"}
    reason : str or None
        A code from :data:`jipkit.protocol.messages.FAILURE_REASONS` when it failed.
    failed_cell : int or None
        The index (in the canonical notebook) of the cell that raised.
    exception : str or None
        The exception's class name, only when it is a Python built-in.
    outputs : list of dict
        ``[{"cell": index, "outputs": [nbformat outputs]}]``: only cells with outputs.
    records : list of dict
        The typed records, in order.
    started_at, finished_at : str
        ISO 8601 UTC.
    kernel : str
        The kernelspec that ran it.
    run_dir : Path
        The run's working directory (the site's record of the run).
    isolation : {"sandbox", "none"}
        Whether the kernel ran in the sandbox.
    series_read : tuple of str
        SeriesInstanceUIDs the run read through the data channel (for provenance; stays
        at the site).
    withheld : tuple of dict
        What of a succeeded run's outputs never left here, as redaction report entries
        (``{"rule": "stream_stderr", "place": {"cell": 3}, "count": 2}``): stream output
        other than stdout (``stream_stderr``) and error outputs (``error_output``), counted
        per cell, so that the result's redaction report names them too.
    """

    status: Literal["succeeded", "failed"]
    reason: str | None
    failed_cell: int | None
    exception: str | None
    outputs: list[dict[str, Any]]
    records: list[dict[str, Any]]
    started_at: str
    finished_at: str
    kernel: str
    run_dir: Path = field(compare=False)
    isolation: Literal["sandbox", "none"] = "none"
    series_read: tuple[str, ...] = ()
    withheld: tuple[dict[str, Any], ...] = field(default=(), compare=False)


def _kernel_spec_manager(kernel_dirs: Iterable[Path] | None) -> KernelSpecManager:
    dirs = [str(d) for d in kernel_dirs or ()] or [str(Path(sys.prefix) / "share" / "jupyter" / "kernels")]
    return KernelSpecManager(kernel_dirs=dirs)


def check_kernel(kernel_name: str, kernel_dirs: Iterable[Path] | None = None) -> Path:
    """The folder of the kernelspec ``kernel_name``; raise when it is not installed.

    Parameters
    ----------
    kernel_name : str
    kernel_dirs : iterable of Path, optional
        Where to look (default: ``<sys.prefix>/share/jupyter/kernels``, the runner's venv,
        so that no user-level kernelspec of the same name can take its place).

    Raises
    ------
    ConfigError
    """
    ksm = _kernel_spec_manager(kernel_dirs)
    try:
        return Path(ksm.get_kernel_spec(kernel_name).resource_dir)
    except NoSuchKernel as err:
        raise ConfigError(
            f"The kernel {kernel_name!r} is not installed in {', '.join(ksm.kernel_dirs)}. "
            "Run kernels/install.sh (deploy/install.sh does), or set federation.kernel_dirs."
        ) from err


def kernel_environment(
    run_dir: Path,
    runtime_dir: Path,
    *,
    extra: Mapping[str, str] | None = None,
    passthrough: Iterable[str] = (),
    base: Mapping[str, str] | None = None,
    scratch: Path | None = None,
) -> dict[str, str]:
    """The kernel's whole environment, built from an allow-list.

    Parameters
    ----------
    run_dir : Path
        The run's working directory: ``HOME``, ``TMPDIR`` and the IPython and Jupyter
        directories point into it.
    runtime_dir : Path
        ``JUPYTER_RUNTIME_DIR`` (connection file and IPC sockets).
    extra : mapping, optional
        Variables to set, e.g. ``JIP_CONFIG`` so that ``jip.connect()`` finds the site's
        data; ``JIP_*`` names other than :data:`DATA_ENV` are refused.
    passthrough : iterable of str
        Further names copied from ``base`` (the site's ``federation.kernel_env``); never
        ``JIP_*``.
    base : mapping, optional
        The runner's environment (default ``os.environ``).
    scratch : Path, optional
        The kernel's home, as the kernel sees it (the sandbox's ``/tmp``): ``HOME``,
        ``TMPDIR`` and the IPython and Jupyter directories point into it, not ``run_dir``.

    Raises
    ------
    ConfigError
        ``extra`` or ``passthrough`` names a ``JIP_*`` variable that may hold a secret.
    """
    base = os.environ if base is None else base
    names = [*BASE_ENV, *passthrough]
    secret = [n for n in [*passthrough, *(extra or {})] if n.upper().startswith("JIP_") and n not in DATA_ENV]
    if secret:
        raise ConfigError(
            f"The kernel may not see {sorted(secret)}: JIP_* variables hold the site's secrets."
        )
    env = {n: base[n] for n in names if n in base}
    env.setdefault("PATH", os.defpath)
    home = run_dir / "home" if scratch is None else scratch
    here = run_dir if scratch is None else scratch
    env.update(
        HOME=str(home),
        TMPDIR=str(run_dir / "tmp" if scratch is None else scratch),
        IPYTHONDIR=str(here / "ipython"),
        JUPYTER_CONFIG_DIR=str(here / "jupyter" / "config"),
        JUPYTER_DATA_DIR=str(here / "jupyter" / "data"),
        JUPYTER_RUNTIME_DIR=str(runtime_dir),
        MPLCONFIGDIR=str(here / "matplotlib"),
        MPLBACKEND="agg",
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        PYTHONNOUSERSITE="1",
    )
    env.update(extra or {})
    return env


class _Run:
    """What the watchdog and the kernel manager share about one run."""

    def __init__(self, env: dict[str, str], cwd: Path, log_path: Path, ksm: KernelSpecManager, runtime: Path):
        self.env, self.cwd, self.log_path, self.ksm, self.runtime = env, cwd, log_path, ksm, runtime
        self.lock = threading.Lock()
        self.pgid: int | None = None
        self.fired: str | None = None

    def kill(self) -> None:
        """Kill the kernel's process group, if it started (call with ``lock`` held)."""
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)

    def fire(self, reason: str) -> None:
        with self.lock:
            if self.fired is None:
                self.fired = reason
            self.kill()


def _manager_class(run: _Run) -> type[AsyncKernelManager]:
    """A kernel manager class bound to one run (nbclient makes and owns the instance)."""

    class _RunKernelManager(AsyncKernelManager):
        def __init__(self, **kw: Any) -> None:
            kw.update(
                transport="ipc",
                kernel_spec_manager=run.ksm,
                connection_file=str(run.runtime / "kernel.json"),
            )
            super().__init__(**kw)

        async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
            with run.log_path.open("ab") as out:
                kw.update(env=dict(run.env), cwd=str(run.cwd), stdout=out, stderr=out)
                await super().start_kernel(**kw)
            provisioner = self.provisioner
            with run.lock:
                run.pgid = getattr(provisioner, "pgid", None) or getattr(provisioner, "pid", None)
                if run.fired:
                    run.kill()

    return _RunKernelManager


def _make_run_dir(workdir: Path, label: str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:60] or "run"
    run_dir = Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=workdir))
    for sub in ("home", "tmp", "ipython", "jupyter/config", "jupyter/data", "matplotlib"):
        (run_dir / sub).mkdir(parents=True, mode=0o700)
    return run_dir


def _collect_outputs(
    nb: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Outputs of the canonical cells (no injected cells, no error outputs, no stderr), the
    records, and what was withheld (see :attr:`Outcome.withheld`)."""
    outputs: list[dict[str, Any]] = []
    withheld: list[dict[str, Any]] = []
    canonical_cells = []
    for cell in nb["cells"]:
        m = _CELL_ID.match(str(cell.get("id", "")))
        if m is None or cell.get("cell_type") != "code":
            continue
        kept, dropped = [], {"error_output": 0, "stream_stderr": 0}
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                dropped["error_output"] += 1
            elif o.get("output_type") == "stream" and o.get("name") != "stdout":
                dropped["stream_stderr"] += 1
            else:
                kept.append(dict(o))
        canonical_cells.append({"outputs": kept})
        index = int(m.group(1))
        if kept:
            outputs.append({"cell": index, "outputs": _plain(kept)})
        withheld.extend(
            {"rule": rule, "place": {"cell": index}, "count": n} for rule, n in dropped.items() if n
        )
    return outputs, extract_records(canonical_cells), withheld


def _plain(value: Any) -> Any:
    """NotebookNodes as plain dicts and lists (JSON-ready)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _check_injected(nb: Any, parameters: Mapping[str, Any]) -> None:
    """Check that papermill's injected cell assigns exactly ``parameters``, as literals.

    Run parameters are chosen when a run starts, after review: they must never become code.

    Raises
    ------
    NotebookError
    """
    cells = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise NotebookError(f"expected one injected parameters cell, found {len(cells)}")
    got: dict[str, Any] = {}
    try:
        for node in ast.parse(cells[0].source).body:
            if not (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                raise NotebookError("the injected parameters cell holds more than assignments")
            got[node.targets[0].id] = ast.literal_eval(node.value)
    except (SyntaxError, ValueError) as err:
        raise NotebookError(f"the injected parameters cell is not literal assignments ({err})") from err
    if got != dict(parameters):
        raise NotebookError("the injected parameters cell does not assign exactly the run's parameters")


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a worker thread's event loop (its self-pipe would otherwise leak)."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _canonical_index(nb: Any, index: int | None) -> int | None:
    if index is None or not 0 <= index < len(nb.cells):
        return None
    m = _CELL_ID.match(str(nb.cells[index].get("id", "")))
    return int(m.group(1)) if m else None


def run_notebook(
    canon: Mapping[str, Any],
    parameters: Mapping[str, Any],
    *,
    workdir: Path,
    deadline_s: float,
    kernel_name: str = "jip",
    kernel_dirs: Iterable[Path] | None = None,
    extra_env: Mapping[str, str] | None = None,
    env_passthrough: Iterable[str] = (),
    stop: StopFlag | None = None,
    label: str = "run",
    start_timeout: float = 60,
    sandbox: SandboxSupport | None = None,
    data: Site | None = None,
) -> Outcome:
    """Execute a canonical notebook with papermill; never raises for what the notebook does.

    Parameters
    ----------
    canon : mapping
        The canonical notebook (already verified against its version hash).
    parameters : mapping
        Parameter values (already checked against the version's schema).
    workdir : Path
        The folder under which this run's fresh working directory is made.
    deadline_s : float
        Wall-clock seconds for the whole run, kernel start included.
    kernel_name : str
        The kernelspec to run in.
    kernel_dirs : iterable of Path, optional
        Where kernelspecs are looked up (see :func:`check_kernel`).
    extra_env, env_passthrough
        See :func:`kernel_environment`.
    stop : StopFlag, optional
        Set by another thread to stop the run (lease lost, run cancelled, runner stopping):
        the kernel is killed and the outcome is ``failed`` / ``cancelled``.
    label : str
        A name for the run's folder and log lines (the job ID).
    start_timeout : float
        Seconds to wait for the kernel to start.
    sandbox : SandboxSupport, optional
        Run the kernel in the sandbox (an available one, from
        :func:`jipkit.site.sandbox.probe`); default: a plain kernel (``isolation`` none).
    data : Site, optional
        Serve this site's index queries and series reads to the kernel over the data
        channel (``$JIPKIT_DATA_SOCKET``).

    Returns
    -------
    Outcome
    """
    import papermill  # type: ignore[import-untyped]
    from jupyter_core.utils import ensure_event_loop
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError  # type: ignore[import-untyped]
    from papermill.iorw import load_notebook_node  # type: ignore[import-untyped]
    from papermill.parameterize import parameterize_notebook  # type: ignore[import-untyped]

    from jipkit.site.dataserver import DataServer

    started, t0 = utcnow_iso(), time.monotonic()
    isolation: Literal["sandbox", "none"] = "none" if sandbox is None else "sandbox"
    run_dir = _make_run_dir(workdir, label)
    server: DataServer | None = None

    def failed(reason: str, cell: int | None = None, exception: str | None = None) -> Outcome:
        return Outcome(
            "failed",
            reason,
            cell,
            exception,
            [],
            [],
            started,
            utcnow_iso(),
            kernel_name,
            run_dir,
            isolation,
            tuple(server.series_read) if server is not None else (),
        )

    nb = load_notebook_node(nbformat.from_dict(to_nbformat(canon)))  # type: ignore[no-untyped-call]
    if parameters:
        nb = parameterize_notebook(nb, dict(parameters), kernel_name=kernel_name, language=canon["language"])
        try:
            _check_injected(nb, parameters)
        except NotebookError as bad:
            log.error("%s: %s; not running it", label, bad)
            return failed("internal_error")
    # Short: Unix socket paths hold <= 107 bytes.  A sandboxed kernel can write into its runtime
    # folder: in /dev/shm (a tmpfs) what it writes counts against its memory cgroup.
    shm = sandbox is not None and os.access("/dev/shm", os.W_OK | os.X_OK)
    runtime = Path(tempfile.mkdtemp(prefix="jip-rt-", dir="/dev/shm" if shm else None))
    socket_path = runtime / "data.sock"
    extra = dict(extra_env or {})
    if data is not None:
        extra[DATA_SOCKET_ENV] = str(socket_path)
    try:
        env = kernel_environment(
            run_dir,
            runtime,
            extra=extra,
            passthrough=env_passthrough,
            scratch=SCRATCH if sandbox is not None else None,
        )
    except BaseException:
        shutil.rmtree(runtime, ignore_errors=True)
        raise
    ksm = _kernel_spec_manager(kernel_dirs)
    box: Sandbox | None = None
    try:
        if sandbox is not None:
            base = ksm.get_kernel_spec(kernel_name).to_dict()
            box = Sandbox(
                sandbox, base, kernel_name=kernel_name, run_dir=run_dir, runtime=runtime, label=label
            )
            ksm = KernelSpecManager(kernel_dirs=[str(box.kernels_dir)])
            env = box.environment(env)
        if data is not None:
            owner = (sandbox.config.uid, sandbox.config.gid) if sandbox is not None else None
            server = DataServer(data, socket_path, owner=owner, label=label).start()
    except (SandboxError, NoSuchKernel, OSError) as setup_error:
        log.error("%s: the run could not be set up: %s", label, setup_error)
        if box is not None:
            box.close()
        shutil.rmtree(runtime, ignore_errors=True)
        return failed("internal_error")
    run = _Run(env, run_dir / "home", run_dir / "kernel.log", ksm, runtime)
    result: dict[str, Any] = {}
    done, wake = threading.Event(), threading.Event()
    if stop is not None:
        stop.link(wake)

    def execute() -> None:
        loop = ensure_event_loop()  # this thread's loop, which nbclient (via jupyter_core) uses
        try:
            result["nb"] = papermill.execute_notebook(
                nb,
                str(run_dir / "executed.ipynb"),
                kernel_name=kernel_name,
                language=canon["language"],
                progress_bar=False,
                request_save_on_cell_execute=False,
                start_timeout=start_timeout,
                kernel_manager_class=_manager_class(run),
                shutdown_kernel="immediate",  # outputs are in; its process group is killed next anyway
            )
        except BaseException as err:  # reported to the watching thread, which classifies it
            result["error"] = err
        finally:
            _close_loop(loop)
            done.set()
            wake.set()

    # papermill runs in its own thread: nbclient replaces SIGINT/SIGTERM handlers when it
    # runs in the main thread, and this thread is the watchdog.
    worker = threading.Thread(target=execute, name=f"jip-run-{label}", daemon=True)
    worker.start()
    oom = False
    try:
        while not done.is_set():
            remaining = deadline_s - (time.monotonic() - t0)
            if run.fired is None and remaining <= 0:
                run.fire("timeout")
            elif run.fired is None and stop is not None and stop.is_set():
                run.fire("cancelled")
            if run.fired is None:
                wake.wait(remaining)
            elif not done.wait(_GIVE_UP_S):
                log.error(
                    "%s: papermill did not return %.0f s after its kernel was killed", label, _GIVE_UP_S
                )
                break
    finally:
        with run.lock:  # whatever the kernel started goes with it
            run.kill()
        if box is not None:
            oom = box.oom_killed()
            box.close()  # every process left in its cgroup, then the cgroup; the scratch goes with them
        if server is not None:
            server.close()
        shutil.rmtree(runtime, ignore_errors=True)

    err = result.get("error")
    if run.fired or not done.is_set():
        log.warning(
            "%s: %s after %.1f s; its kernel's process group was killed",
            label,
            run.fired,
            time.monotonic() - t0,
        )
        return failed(run.fired or "internal_error")
    if oom:
        assert sandbox is not None
        log.warning(
            "%s: the run reached its memory limit (%d bytes) and its kernel was killed",
            label,
            sandbox.config.memory_bytes,
        )
    if isinstance(err, PapermillExecutionError):
        log.warning(
            "%s: cell %s raised %s: %s (see %s)", label, err.cell_index, err.ename, err.evalue, run_dir
        )
        return failed("cell_error", _canonical_index(nb, err.cell_index), builtin_exception_name(err.ename))
    if isinstance(err, DeadKernelError):
        log.warning("%s: the kernel died (see %s)", label, run_dir / "kernel.log")
        return failed("kernel_died")
    if err is not None:
        if oom:  # it died before it could answer
            return failed("kernel_died")
        log.error("%s: the runner failed to run the notebook", label, exc_info=err)
        return failed("internal_error")
    try:
        outputs, records, withheld = _collect_outputs(result["nb"])
    except NotebookError as e:
        log.warning("%s: %s", label, e)
        return failed("output_invalid")
    log.info("%s: succeeded in %.1f s (isolation: %s)", label, time.monotonic() - t0, isolation)
    return Outcome(
        "succeeded",
        None,
        None,
        None,
        outputs,
        records,
        started,
        utcnow_iso(),
        kernel_name,
        run_dir,
        isolation,
        tuple(server.series_read) if server is not None else (),
        tuple(withheld),
    )
