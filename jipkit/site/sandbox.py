"""The sandbox a job's kernel runs in: bubblewrap, an unprivileged user, a memory cgroup.

The runner (as root) starts each sandboxed kernel through a per-run kernelspec whose
command is::

    /bin/sh -c 'join the run's cgroups; hand the connection file to the sandbox user; exec bwrap'
    bwrap --die-with-parent --new-session --unshare-{ipc,pid,net,uts,cgroup-try} ...
          -- setpriv --reuid=UID --regid=GID --clear-groups --inh-caps=-all --bounding-set=-all
             --no-new-privs -- <the kernelspec's own argv: python -m ipykernel_launcher -f ...>

What the kernel gets
--------------------
- Namespaces of its own: network (only its own loopback, no route anywhere: no DNS, no
  HTTP, nothing on the host's 127.0.0.1), PID (it sees only its own processes), IPC,
  UTS (host name ``jip-sandbox``) and, where the kernel allows, cgroup.
- A real unprivileged user: ``uid``/``gid`` of :class:`~jipkit.site.fedconfig.SandboxConfig`
  (default 2000000000, used by nothing else), no supplementary groups, no capabilities,
  an empty bounding set, ``no_new_privs``.  Not a user namespace: bubblewrap's
  ``--unshare-user --uid`` run by root maps the sandbox user to root outside, which
  still owns, and so reads, every root-owned file it can see.
- A read-only view of only what it needs: ``/usr`` (and ``/bin``, ``/sbin``, ``/lib*`` as
  on the host), a few files of ``/etc`` (:data:`ETC_FILES`) plus a ``passwd``, ``group``
  and ``hosts`` written for the run, its Python (the kernelspec's interpreter, its venv,
  its base prefix and the packages its ``sys.path`` and editable installs name), and
  ``ro_paths``.  Not ``/root``, ``/home``, ``/var``, ``/srv``, ``/run``, ``/sys`` or
  the rest of ``/etc``; not the runner's key, token, state, configuration, index, cache
  or runs folder (:func:`probe` refuses a view that would show one of them).
- ``/proc`` of its own PID namespace and a minimal ``/dev`` (null, zero, full, random,
  urandom, tty, pts), plus the machine's NVIDIA device nodes (``/dev/nvidia*``) unless
  ``gpu = "none"``: torch in the kernel then finds the GPUs (the driver's libraries come
  with the read-only system view; a driver installed outside ``/usr`` needs its folder in
  ``ro_paths`` and ``LD_LIBRARY_PATH`` in the federation's ``kernel_env``).
- Writable: ``/tmp``, a tmpfs of ``scratch_bytes`` that is its home and working
  directory; ``/dev/shm``, a tmpfs of the same size; and the run's runtime folder
  (connection file, IPC sockets, the data socket of :mod:`jipkit.site.dataserver`),
  which it owns (the runner makes it in the host's ``/dev/shm``, so that what the kernel
  writes there is memory charged to its cgroup, not disk).  The tmpfs mounts live in the
  run's mount namespace and are gone when its last process is.
- A memory cgroup per run (``memory_bytes``, swap included where swap is accounted),
  and a pids limit where the controller can be used; the tmpfs pages count against it.
  Past the limit the kernel's OOM killer ends the kernel: the run fails with
  ``kernel_died`` and the site's log says the memory limit was reached.  The wall-clock
  limit stays the runner's watchdog.  After the run every process left in the group is
  killed and the group removed.

What it does not do: no seccomp filter (system calls are those of an unprivileged
process), no CPU or disk I/O limits, no limit on GPU memory, and no filtering of
what the kernel sends back through its Jupyter channels (that is the disclosure
control's work).  It needs root (for the cgroups and the change of user), bubblewrap,
util-linux's ``setpriv``, and a writable memory cgroup: with cgroup v1, the runner's own
memory cgroup; with v2, a delegated one (``cgroup_parent``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from jipkit.errors import ConfigError
from jipkit.site.fedconfig import SandboxConfig

__all__ = [
    "ETC_FILES",
    "SCRATCH",
    "CgroupPlace",
    "Interpreter",
    "RunGroup",
    "Sandbox",
    "SandboxError",
    "SandboxSupport",
    "bwrap_argv",
    "find_cgroup_place",
    "kernel_interpreter",
    "probe",
    "sweep_groups",
]

log = logging.getLogger("jipkit.site")

#: The kernel's scratch folder inside the sandbox: ``HOME``, ``TMPDIR`` and working directory.
SCRATCH: Final = Path("/tmp")
#: Host name inside the sandbox.
HOSTNAME: Final = "jip-sandbox"
#: Files and folders of the host's ``/etc`` the kernel sees (when they exist): the dynamic
#: loader's cache, time zone, MIME types, name-service switch, fonts.  Nothing that holds
#: users, hosts, credentials or service configuration.
ETC_FILES: Final = (
    "alternatives",
    "debian_version",
    "fonts",
    "gai.conf",
    "host.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "protocols",
    "services",
    "timezone",
)
_TOP_LEVEL: Final = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: Folders never shown whole, even when the kernel's ``sys.path`` names them.
_TOO_BROAD: Final = frozenset(
    Path(p) for p in ("/", "/root", "/home", "/etc", "/var", "/srv", "/run", "/tmp", "/mnt", "/media", "/opt")
)
_PROBE_TIMEOUT_S: Final = 30.0
_SH_SCRIPT: Final = (
    # $1: memory cgroup.procs, $2: pids cgroup.procs or "", $3: uid:gid, $4: the connection
    # file (written by the runner, mode 0600), then bwrap's argv.  No braces: jupyter_client
    # substitutes {name} in every argument.
    'set -e; echo $$ > "$1"; if [ -n "$2" ]; then echo $$ > "$2"; fi; chown -h "$3" "$4"; shift 4; exec "$@"'
)
_INTERPRETER_SCRIPT: Final = """
import importlib.util, json, os, sys
roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
         os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
paths = [p for p in sys.path if p and os.path.isdir(p)]
extra = []
for name, mod in list(sys.modules.items()):
    if name.startswith("__editable__") and isinstance(getattr(mod, "MAPPING", None), dict):
        extra += [str(v) for v in mod.MAPPING.values()]
spec = importlib.util.find_spec("jipkit")
if spec is not None and spec.submodule_search_locations:
    extra += list(spec.submodule_search_locations)
print(json.dumps({"roots": sorted(roots), "paths": paths, "packages": extra}))
"""


class SandboxError(ConfigError):
    """The sandbox cannot be set up on this machine, or for this run."""

    reason = "sandbox_unavailable"


# -- the kernel's Python ------------------------------------------------------------------


@dataclass(frozen=True)
class Interpreter:
    """The Python a kernelspec runs, and the folders it needs to see.

    Attributes
    ----------
    executable : str
        ``argv[0]`` of the kernelspec, as an absolute path.
    roots : tuple of Path
        Folders to show read-only (real paths, and the paths the interpreter names
        them by where a symbolic link lies between), none inside another.
    """

    executable: str
    roots: tuple[Path, ...]


def _outermost(paths: Iterable[Path]) -> tuple[Path, ...]:
    """``paths`` without duplicates and without those inside another, sorted."""
    out: list[Path] = []
    for p in sorted(set(paths), key=lambda q: (len(q.parts), str(q))):
        if not any(p == o or o in p.parents for o in out):
            out.append(p)
    return tuple(sorted(out))


@functools.lru_cache(maxsize=8)
def kernel_interpreter(argv0: str) -> Interpreter:
    """Ask the kernel's interpreter which folders it loads code from.

    Parameters
    ----------
    argv0 : str
        The kernelspec's ``argv[0]`` (absolute, or a name looked up on ``PATH``).

    Raises
    ------
    SandboxError
        The interpreter cannot be found or run.
    """
    exe = argv0 if os.path.isabs(argv0) else shutil.which(argv0)
    if exe is None or not os.access(exe, os.X_OK):
        raise SandboxError(f"The kernel's interpreter {argv0!r} cannot be found or run.")
    try:
        done = subprocess.run(
            [exe, "-I", "-c", _INTERPRETER_SCRIPT],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
            env={"PATH": os.defpath, "PYTHONNOUSERSITE": "1"},
            check=True,
        )
        found = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        raise SandboxError(f"The kernel's interpreter {exe} could not be asked for its paths: {err}") from err
    named = [Path(p) for p in [*found["roots"], *found["paths"], *found["packages"]]]
    named.append(Path(exe).parent.parent)
    every: list[Path] = []
    for p in named:
        if not p.is_absolute() or not p.exists():
            continue
        real = p.resolve()
        every.append(real)
        if Path(os.path.abspath(p)) != real:  # keep the name the interpreter uses too
            every.append(Path(os.path.abspath(p)))
    return Interpreter(exe, _outermost(every))


# -- cgroups ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupPlace:
    """Where a run's cgroups are made.

    Attributes
    ----------
    version : {1, 2}
    memory : Path
        The parent folder of the run groups (v1: in the memory hierarchy; v2: unified).
    pids : Path or None
        v1: the parent folder in the pids hierarchy, when it can be used.  v2: ``memory``
        when the pids controller is enabled there.  None: no pids limit.
    """

    version: Literal[1, 2]
    memory: Path
    pids: Path | None


def _mounts() -> list[tuple[str, str, list[str]]]:
    out = []
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4:
                out.append((parts[1].replace("\\040", " "), parts[2], parts[3].split(",")))
    return out


def _own_cgroups() -> dict[str, str]:
    """``{controller: path}`` of this process (``""`` for the v2 unified hierarchy)."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def _writable_group(parent: Path, files: Mapping[str, str]) -> None:
    """Make and remove a test group under ``parent``, writing ``files`` in it."""
    test = parent / f"jip-probe-{os.getpid()}-{secrets.token_hex(3)}"
    test.mkdir()
    try:
        for name, value in files.items():
            (test / name).write_text(value)
    finally:
        test.rmdir()


def find_cgroup_place(config: SandboxConfig) -> CgroupPlace:
    """Find (and test) where this runner can make a memory cgroup per run.

    Raises
    ------
    SandboxError
    """
    mounts = _mounts()
    own = _own_cgroups()
    v1_memory = next((m for m, t, o in mounts if t == "cgroup" and "memory" in o), None)
    v1_pids = next((m for m, t, o in mounts if t == "cgroup" and "pids" in o), None)
    unified = next((m for m, t, _ in mounts if t == "cgroup2"), None)
    if v1_memory is not None:
        parent = config.cgroup_parent or Path(v1_memory) / own.get("memory", "/").lstrip("/")
        try:
            _writable_group(parent, {"memory.limit_in_bytes": str(config.memory_bytes)})
        except OSError as err:
            raise SandboxError(f"Cannot make a memory cgroup under {parent}: {err.strerror}.") from err
        pids: Path | None = None
        if v1_pids is not None and config.pids_max is not None:
            candidate = Path(v1_pids) / own.get("pids", "/").lstrip("/")
            try:
                _writable_group(candidate, {"pids.max": str(config.pids_max)})
                pids = candidate
            except OSError:
                log.info("the pids cgroup controller cannot be used here: no process limit per run")
        return CgroupPlace(1, parent, pids)
    if unified is not None:
        parent = config.cgroup_parent or Path(unified) / own.get("", "/").lstrip("/")
        try:
            enabled = (parent / "cgroup.subtree_control").read_text().split()
            if "memory" not in enabled:
                (parent / "cgroup.subtree_control").write_text("+memory")
            _writable_group(parent, {"memory.max": str(config.memory_bytes)})
        except OSError as err:
            raise SandboxError(
                f"The memory controller cannot be used under {parent} ({err.strerror}): set "
                "federation.sandbox.cgroup_parent to a cgroup delegated to the runner (systemd: "
                "Delegate=yes) with memory in its cgroup.subtree_control."
            ) from err
        has_pids = config.pids_max is not None
        if has_pids and "pids" not in (parent / "cgroup.subtree_control").read_text().split():
            try:
                (parent / "cgroup.subtree_control").write_text("+pids")
            except OSError:
                has_pids = False
        return CgroupPlace(2, parent, parent if has_pids else None)
    raise SandboxError("No cgroup file system is mounted: no memory limit can be set.")


class RunGroup:
    """One run's cgroups (memory, and pids where possible): made, read, emptied, removed.

    Parameters
    ----------
    place : CgroupPlace
    name : str
        The group's folder name.
    memory_bytes : int
    pids_max : int or None
    """

    def __init__(self, place: CgroupPlace, name: str, memory_bytes: int, pids_max: int | None):
        self.place = place
        self.memory = place.memory / name
        self.pids = place.pids / name if place.pids is not None and pids_max is not None else None
        self.memory.mkdir()
        try:
            if place.version == 1:
                (self.memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
                with contextlib.suppress(OSError):  # no swap accounting: nothing to limit
                    (self.memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
                if self.pids is not None:
                    self.pids.mkdir()
                    (self.pids / "pids.max").write_text(str(pids_max))
            else:
                (self.memory / "memory.max").write_text(str(memory_bytes))
                with contextlib.suppress(OSError):
                    (self.memory / "memory.swap.max").write_text("0")
                if self.pids is not None:
                    (self.memory / "pids.max").write_text(str(pids_max))
        except BaseException:
            self.close()
            raise

    @property
    def procs_files(self) -> tuple[str, str]:
        """The ``cgroup.procs`` files a new process writes its PID to (``""``: none)."""
        pids = self.pids / "cgroup.procs" if self.place.version == 1 and self.pids is not None else ""
        return str(self.memory / "cgroup.procs"), str(pids)

    def oom_kills(self) -> int:
        """How many processes the OOM killer ended in this group."""
        name = "memory.oom_control" if self.place.version == 1 else "memory.events"
        try:
            text = (self.memory / name).read_text()
        except OSError:
            return 0
        m = re.search(r"^oom_kill (\d+)$", text, re.M)
        return int(m.group(1)) if m else 0

    def pids_in(self) -> list[int]:
        """The processes in the group now."""
        try:
            return [int(p) for p in (self.memory / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def close(self, timeout: float = 5.0) -> None:
        """Kill whatever is left in the group, then remove it (and the pids group)."""
        deadline = time.monotonic() + timeout
        if self.place.version == 2:
            with contextlib.suppress(OSError):
                (self.memory / "cgroup.kill").write_text("1")
        while self.memory.is_dir():
            for pid in self.pids_in():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            try:
                self.memory.rmdir()
            except FileNotFoundError:
                break
            except OSError as err:
                if time.monotonic() > deadline:
                    log.error("cannot remove the run's cgroup %s: %s", self.memory, err.strerror)
                    break
                time.sleep(0.02)
        if self.pids is not None and self.place.version == 1:
            while self.pids.is_dir():
                try:
                    self.pids.rmdir()
                except FileNotFoundError:
                    break
                except OSError as err:
                    if time.monotonic() > deadline:
                        log.error("cannot remove the run's cgroup %s: %s", self.pids, err.strerror)
                        break
                    time.sleep(0.02)


def sweep_groups(support: SandboxSupport) -> int:
    """Empty and remove the run groups a killed runner of this ``tag`` left behind.

    Returns
    -------
    int
        How many were removed.
    """
    if support.place is None:
        return 0
    place, n = support.place, 0
    for folder in sorted(place.memory.glob(f"jip-{support.tag}-*")):
        if folder.is_dir():
            group = RunGroup.__new__(RunGroup)
            group.place, group.memory = place, folder
            group.pids = place.pids / folder.name if place.version == 1 and place.pids is not None else None
            log.warning("removing the cgroup %s left by an earlier runner (and its processes)", folder)
            group.close()
            n += 1
    return n


# -- the bwrap command --------------------------------------------------------------------


def _ancestors(path: Path) -> list[Path]:
    return list(reversed(path.parents))[1:]  # without "/"


#: Where the machine's device nodes are (a test points it elsewhere).
DEV: Path = Path("/dev")


def gpu_device_nodes() -> list[Path]:
    """This machine's NVIDIA device nodes: ``nvidia0``..., ``nvidiactl``, ``nvidia-uvm``...
    and the ``nvidia-caps`` folder (empty where there is no NVIDIA GPU or driver)."""
    try:
        return sorted(p for p in DEV.iterdir() if p.name.startswith("nvidia"))
    except OSError:
        return []


def bwrap_argv(
    config: SandboxConfig,
    interpreter: Interpreter,
    *,
    etc_dir: Path,
    runtime: Path | None,
) -> list[str]:
    """bubblewrap's argv up to and including ``--``, then ``setpriv``'s, then ``--``.

    Parameters
    ----------
    config : SandboxConfig
    interpreter : Interpreter
        The folders of the kernel's Python (shown read-only).
    etc_dir : Path
        A folder holding the run's ``passwd``, ``group`` and ``hosts``.
    runtime : Path, optional
        The run's runtime folder, shown read-write at the same path.

    Returns
    -------
    list of str
        Append the command to run.
    """
    a: list[str] = [str(config.bwrap), "--die-with-parent", "--new-session"]
    # Not --unshare-all: as root it also makes a user namespace, in which the change of
    # user below is impossible (and a namespace's root still owns root's files).
    a += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    a += ["--hostname", HOSTNAME]
    a += ["--ro-bind", "/usr", "/usr"]
    made = {Path("/"), Path("/usr")}
    for name in _TOP_LEVEL:
        p = Path("/") / name
        if p.is_symlink():
            a += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            a += ["--ro-bind", str(p), str(p)]
            made.add(p)
    a += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC_FILES:
        if os.path.lexists(f"/etc/{name}"):
            a += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for name in ("passwd", "group", "hosts"):
        a += ["--ro-bind", str(etc_dir / name), f"/etc/{name}"]
    a += ["--proc", "/proc", "--dev", "/dev"]
    if config.gpu == "auto":
        for node in gpu_device_nodes():
            a += ["--dev-bind", str(node), str(node)]
    a += ["--size", str(config.scratch_bytes), "--perms", "1777", "--tmpfs", str(SCRATCH)]
    a += ["--size", str(config.scratch_bytes), "--perms", "1777", "--tmpfs", "/dev/shm"]
    made |= {Path("/etc"), Path("/proc"), Path("/dev"), SCRATCH}
    system = {Path("/usr"), *(Path("/") / n for n in _TOP_LEVEL)}
    shown = _outermost([*interpreter.roots, *(p.resolve() for p in config.ro_paths)])
    for src in shown:
        if any(src == s or s in src.parents for s in system):
            continue  # already shown with the system
        for anc in _ancestors(src):
            if anc not in made:
                a += ["--perms", "0755", "--dir", str(anc)]
                made.add(anc)
        a += ["--ro-bind", str(src), str(src)]
        made.add(src)
    if runtime is not None:
        for anc in _ancestors(runtime):
            if anc not in made:
                a += ["--perms", "0755", "--dir", str(anc)]
                made.add(anc)
        a += ["--bind", str(runtime), str(runtime)]
    a += ["--chdir", str(SCRATCH)]
    # ipykernel exits when its parent looks like init, and in its PID namespace it is: the
    # runner's PID means nothing there.  PID 1 turns the parent poller off.
    a += ["--setenv", "JPY_PARENT_PID", "1"]
    a += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP", "--"]
    a += [
        str(config.setpriv),
        f"--reuid={config.uid}",
        f"--regid={config.gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--pdeathsig=KILL",
        "--",
    ]
    return a


def _exposed(shown: Iterable[Path], protected: Iterable[Path]) -> list[str]:
    """What of ``protected`` a read-only view of ``shown`` would expose."""
    out = []
    for p in protected:
        real = Path(os.path.abspath(p)).resolve()
        for s in shown:
            if real == s or s in real.parents or real in s.parents:
                out.append(f"{p} (through {s})")
    return out


def write_etc(etc_dir: Path, config: SandboxConfig) -> None:
    """Write the sandbox's ``passwd``, ``group`` and ``hosts`` into ``etc_dir``."""
    etc_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "passwd": f"root:x:0:0:root:/:/usr/sbin/nologin\njip:x:{config.uid}:{config.gid}:JIP sandbox:{SCRATCH}:/usr/sbin/nologin\n",
        "group": f"root:x:0:\njip:x:{config.gid}:\n",
        "hosts": f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    }
    for name, text in files.items():
        (etc_dir / name).write_text(text, encoding="utf-8")
        (etc_dir / name).chmod(0o644)


# -- probing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxSupport:
    """Whether this machine can run a kernel in the sandbox, and what for.

    Attributes
    ----------
    config : SandboxConfig
    available : bool
    problems : tuple of str
        Why not, when not (for the site's log; they may name paths).
    place : CgroupPlace or None
    interpreter : Interpreter or None
    protected : tuple of Path
        Paths the kernel must never see (checked against every read-only view).
    tag : str
        Names this runner's run groups (``jip-<tag>-...``), so that :func:`sweep_groups`
        finds those a killed runner left behind.
    """

    config: SandboxConfig
    available: bool
    problems: tuple[str, ...] = ()
    place: CgroupPlace | None = None
    interpreter: Interpreter | None = None
    protected: tuple[Path, ...] = field(default=())
    tag: str = "run"

    def describe(self) -> str:
        """One line for the site's log."""
        if self.available:
            return f"sandbox available (bwrap {self.config.bwrap}, cgroup v{self.place.version if self.place else '?'})"
        return "sandbox unavailable: " + "; ".join(self.problems)


def probe(
    config: SandboxConfig,
    kernel_argv: Sequence[str],
    *,
    protected: Iterable[Path | None] = (),
    trial: bool = True,
    tag: str = "run",
) -> SandboxSupport:
    """Check that the sandbox can be used here for this kernel.

    Checks, in order: the sandbox is enabled; the runner is root; ``bwrap`` and
    ``setpriv`` exist; a memory cgroup can be made; the kernel's interpreter answers; the
    read-only view shows none of ``protected``; and (``trial``) the interpreter starts in
    the sandbox as the sandbox user (about 50 ms).

    Parameters
    ----------
    config : SandboxConfig
    kernel_argv : sequence of str
        The kernelspec's argv (its ``argv[0]`` is the interpreter).
    protected : iterable of Path
        The runner's key, token, state, configuration, index, cache and runs folder.
    trial : bool
        Run the interpreter in the sandbox once.
    tag : str
        For the names of the run groups (letters, digits, ``_`` and ``.``).

    Returns
    -------
    SandboxSupport
    """
    prot = tuple(p for p in protected if p is not None)
    tag = re.sub(r"[^A-Za-z0-9_.]", "_", tag)[:24] or "run"

    def no(*why: str) -> SandboxSupport:
        return SandboxSupport(config, False, why, protected=prot, tag=tag)

    if not config.enabled:
        return no("federation.sandbox.enabled is false")
    if os.geteuid() != 0:
        return no("the runner does not run as root (needed to change the kernel's user and make cgroups)")
    missing = [str(p) for p in (config.bwrap, config.setpriv) if not os.access(p, os.X_OK)]
    if missing:
        return no(f"not found or not executable: {', '.join(missing)} (Debian: apt-get install bubblewrap)")
    try:
        place = find_cgroup_place(config)
        interp = kernel_interpreter(kernel_argv[0])
    except SandboxError as err:
        return no(str(err))
    broad = [str(p) for p in interp.roots if p in _TOO_BROAD]
    if broad:
        return no(f"the kernel's Python loads code from {', '.join(broad)}: too much to show it")
    exposed = _exposed([*interp.roots, *(p.resolve() for p in config.ro_paths)], prot)
    if exposed:
        return no("the kernel's read-only view would show " + ", ".join(exposed))
    support = SandboxSupport(config, True, (), place, interp, prot, tag)
    if trial:
        problem = _trial(support)
        if problem:
            return no(problem)
    return support


def _trial(support: SandboxSupport) -> str | None:
    """Start the interpreter once in the sandbox; a problem, or None."""
    assert support.interpreter is not None
    import tempfile

    with tempfile.TemporaryDirectory(prefix="jip-probe-") as tmp:
        etc = Path(tmp) / "etc"
        write_etc(etc, support.config)
        argv = bwrap_argv(support.config, support.interpreter, etc_dir=etc, runtime=None)
        code = f"import os, sys; sys.exit(0 if os.getuid() == {support.config.uid} else 3)"
        try:
            done = subprocess.run(
                [*argv, support.interpreter.executable, "-c", code],
                capture_output=True,
                text=True,
                timeout=_PROBE_TIMEOUT_S,
                env={"PATH": os.defpath},
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as err:
            return f"bwrap could not be started: {err}"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return f"a trial kernel did not start in the sandbox: {why}"
    return None


# -- one run ------------------------------------------------------------------------------


class Sandbox:
    """One run's sandbox: its cgroups, its ``/etc`` files and its kernelspec.

    Parameters
    ----------
    support : SandboxSupport
        An available one (from :func:`probe`).
    base_spec : mapping
        The site kernelspec's ``kernel.json`` (argv, language, env, ...).
    kernel_name : str
        The name the per-run kernelspec gets (the same as the site's).
    run_dir : Path
        The run's record folder (outside the sandbox): the kernelspec and ``/etc`` files
        are written under ``run_dir/sandbox``.
    runtime : Path
        The run's runtime folder (shown read-write; handed to the sandbox user).
    label : str
        For the cgroup's name.

    Raises
    ------
    SandboxError
        The cgroup cannot be made, or the view would show a protected path.
    """

    def __init__(
        self,
        support: SandboxSupport,
        base_spec: Mapping[str, Any],
        *,
        kernel_name: str,
        run_dir: Path,
        runtime: Path,
        label: str,
    ):
        if not support.available or support.place is None:
            raise SandboxError("The sandbox is not available: " + "; ".join(support.problems))
        self.config = support.config
        argv = [str(x) for x in base_spec["argv"]]
        interp = (
            support.interpreter
            if support.interpreter is not None and support.interpreter.executable == argv[0]
            else kernel_interpreter(argv[0])
        )
        shown = [*interp.roots, *(p.resolve() for p in self.config.ro_paths)]
        exposed = _exposed([*shown, runtime.resolve()], support.protected)
        if exposed:
            raise SandboxError("The kernel's view would show " + ", ".join(exposed))
        self.bin_dir = Path(argv[0]).parent
        self.root = run_dir / "sandbox"
        self.kernels_dir = self.root / "kernels"
        self.runtime = runtime
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:40] or "run"
        self.group = RunGroup(
            support.place,
            f"jip-{support.tag}-{safe}-{secrets.token_hex(4)}",
            self.config.memory_bytes,
            self.config.pids_max,
        )
        try:
            write_etc(self.root / "etc", self.config)
            os.chown(runtime, self.config.uid, self.config.gid)
            runtime.chmod(0o700)
            mem, pids = self.group.procs_files
            wrapped = [
                "/bin/sh",
                "-c",
                _SH_SCRIPT,
                "jip-sandbox",
                mem,
                pids,
                f"{self.config.uid}:{self.config.gid}",
                "{connection_file}",
                *bwrap_argv(self.config, interp, etc_dir=self.root / "etc", runtime=runtime),
                *argv,
            ]
            spec = {k: v for k, v in base_spec.items() if k != "argv"}
            spec["argv"] = wrapped
            spec.setdefault("metadata", {})["jip_sandbox"] = {
                "uid": self.config.uid,
                "memory_bytes": self.config.memory_bytes,
                "scratch_bytes": self.config.scratch_bytes,
            }
            folder = self.kernels_dir / kernel_name
            folder.mkdir(parents=True)
            (folder / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
        except BaseException:
            self.group.close()
            raise

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` adjusted for the sandbox: a ``PATH`` of the kernel's venv and the system."""
        out = dict(env)
        out["PATH"] = os.pathsep.join([str(self.bin_dir), "/usr/local/bin", "/usr/bin", "/bin"])
        out["USER"] = out["LOGNAME"] = "jip"
        return out

    def oom_killed(self) -> bool:
        """Whether the memory limit was reached (the OOM killer ended a process)."""
        return self.group.oom_kills() > 0

    def close(self) -> None:
        """Kill every process left in the run's cgroups and remove them."""
        self.group.close()
