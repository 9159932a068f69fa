"""The coordinator's commands for the ``jip`` command line.

:func:`register` adds them to jip's subcommands::

    jip coordinator init        make the data folder, the signing key and the database
    jip coordinator serve       run the web service (uvicorn)
    jip coordinator create-admin NAME   the first admin (password prompted; never a default)
    jip coordinator add-user NAME [--study S --role R ...]
    jip coordinator add-study NAME [--quorum N]
    jip coordinator add-site SITE --study S    prints a one-time enrol token
    jip coordinator login NAME  print an API token for the user commands
    jip coordinator verify-audit

    jip notebook submit NB.ipynb --study S
    jip notebook review HASH --approve|--reject [--comment TEXT]
    jip notebook list --study S
    jip run --study S --notebook HASH|NB.ipynb [-p NAME=VALUE ...] [--site SITE ...] [--wait]
    jip results RUN [--format table|csv|json] [--long]

The ``coordinator`` commands act on the local data folder (run them on the
coordinator's machine); the others call the coordinator over HTTP with a user's token
(``--token`` or ``$JIP_COORDINATOR_TOKEN``) at ``--url`` or ``$JIP_COORDINATOR_URL``.
Every failure raises a :class:`~jipkit.errors.JipError`, which ``jip`` prints as one line.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from jipkit.coordinator.db import FINAL_JOB_STATES
from jipkit.errors import JipError
from jipkit.protocol.messages import redaction_line

__all__ = ["main", "register"]

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


# ---------------------------------------------------------------------- helpers


def _config(args: argparse.Namespace) -> Any:
    from jipkit.coordinator.config import load_coordinator_config

    return load_coordinator_config(
        args.coordinator_config,
        data_dir=args.data_dir,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
    )


def _service(args: argparse.Namespace) -> Any:
    from jipkit.coordinator.service import Service

    return Service.open(_config(args))


def _read_password(args: argparse.Namespace, *, confirm: bool) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise JipError("--password-stdin: expected the password on standard input, found nothing.")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise JipError(
            "No terminal to ask for the password: pass it on standard input with --password-stdin."
        )
    first = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Password again: ") != first:
        raise JipError("The two passwords differ. Run the command again.")
    return first


def _client(args: argparse.Namespace) -> Any:
    from jipkit.coordinator.client import CoordinatorClient

    return CoordinatorClient.from_env(args.url, args.token, verify=args.ca_bundle)


def _parse_value(text: str) -> Any:
    """A ``-p`` value as JSON when it parses (``-500``, ``true``, ``[1, 2]``), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.parameters_json:
        try:
            loaded = json.loads(args.parameters_json)
        except ValueError as err:
            raise JipError(f"--parameters-json: expected a JSON object, found invalid JSON ({err}).") from err
        if not isinstance(loaded, dict):
            raise JipError("--parameters-json: expected a JSON object of name: value.")
        params.update(loaded)
    for pair in args.parameter or ():
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise JipError(
                f"Expected a parameter as NAME=VALUE (for example -p threshold=-500), found {pair!r}."
            )
        params[name.strip()] = _parse_value(value)
    return params


def _resolve_version(client: Any, study: str, ref: str) -> str:
    """A version hash from a full hash, a unique prefix, or a notebook file."""
    path = Path(ref)
    if ref.endswith(".ipynb") or path.is_file():
        from jipkit.protocol.notebook import version_hash

        try:
            return version_hash(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise JipError(f"Cannot read the notebook {path}: {err.strerror}.") from err
    if len(ref) == 64:
        return ref
    matches = [v["version_hash"] for v in client.list_notebooks(study) if v["version_hash"].startswith(ref)]
    if len(matches) != 1:
        found = "none" if not matches else f"{len(matches)}"
        raise JipError(f"Expected one version of study {study!r} starting with {ref!r}, found {found}.")
    return str(matches[0])


def _write_frame(df: Any, fmt: str, out: TextIO) -> None:
    if fmt == "csv":
        df.to_csv(out)
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", 500, "display.width", 200):
            out.write((df.to_string(na_rep="missing") if len(df) else "(nothing)") + "\n")


def _job_label(job: dict[str, Any]) -> str:
    state = str(job["state"])
    if state == "leased":
        return f"running (attempt {job['attempt']})"
    if state == "held":
        return "held at site (waits for a data steward's release)"
    if job.get("reason") == "release_rejected":
        return "rejected at site (release_rejected)"
    if job.get("reason") and state != "succeeded":
        return f"{state}: {job['reason']}"
    release = job.get("release")
    if state == "succeeded" and isinstance(release, dict) and release.get("decision") == "approved":
        n = release.get("stewards")
        return f"succeeded (released at site by {n} steward{'s' if n != 1 else ''})"
    return state


def _short(value: Any, n: int = 12) -> str:
    return "-" if value is None else str(value)[:n]


def provenance_frame(res: dict[str, Any]) -> Any:
    """One row per site: what its result says it ran, with what, on which data, and the checks."""
    import pandas as pd

    rows = []
    for s in res["sites"]:
        p = s.get("provenance") or {}
        audit = p.get("audit") or {}
        match = p.get("parameters_match")
        release = s.get("release") or {}
        rows.append(
            {
                "site": s["site"],
                "state": _job_label(s),
                "version": _short(p.get("version_hash")),
                "parameters": _short(p.get("parameters_sha256"))
                + ("" if match is None else " (run's)" if match else " (NOT the run's)"),
                "environment": _short(p.get("environment_digest")),
                "series": "-" if p.get("series") is None else p["series"],
                "isolation": s.get("isolation") or "-",
                "redactions": len(s.get("redactions") or []) if p else "-",
                "signature": "-" if not p else "ok" if (p.get("signature") or {}).get("ok") else "INVALID",
                "audit": audit.get("status", "-") if p else "-",
                "release": release.get("decision", "-"),
            }
        )
    return pd.DataFrame(rows).set_index("site") if rows else pd.DataFrame()


_ISOLATION = {
    "sandbox": "ran in the site's sandbox",
    "none": "ran UNISOLATED (the site's policy allows it)",
}


def checks_lines(res: dict[str, Any]) -> list[str]:
    """Per site: how its kernel ran and its redaction report (rule, place, count; never content)."""
    lines = []
    for s in res["sites"]:
        if s.get("status") is None:
            continue
        how = _ISOLATION.get(str(s.get("isolation")), "did not run" if s.get("status") == "refused" else "-")
        reds = s.get("redactions") or []
        lines.append(f"{s['site']}: {how}; " + (f"{len(reds)} redactions:" if reds else "no redactions"))
        lines.extend(f"  {redaction_line(r)}" for r in reds)
    return lines


def _warnings(res: dict[str, Any]) -> list[str]:
    return [
        f"{s['site']}: {w}" for s in res["sites"] for w in ((s.get("provenance") or {}).get("warnings") or [])
    ]


def _progress(out: TextIO) -> Callable[[dict[str, Any]], None]:
    start = time.monotonic()
    last: list[str] = [""]

    def show(run: dict[str, Any]) -> None:
        jobs = run["jobs"]
        done = sum(1 for j in jobs if j["state"] in FINAL_JOB_STATES)
        if len(jobs) <= 12:
            detail = "  ".join(f"{j['site']}: {_job_label(j)}" for j in jobs)
        else:
            detail = "  ".join(f"{n} {state}" for state, n in sorted(run["counts"].items()))
        line = f"{done}/{len(jobs)} done  {detail}"
        if line != last[0]:
            out.write(f"[{time.monotonic() - start:5.0f} s] {line}\n")
            out.flush()
            last[0] = line

    return show


def _cell(rec: dict[str, Any] | None) -> str:
    """How one record shows in the results table: suppressed is neither 0 nor missing."""
    if rec is None:
        return "-"
    if rec.get("suppressed") or rec.get("value") is None:
        return "suppressed" if rec.get("suppressed") else "-"
    value = rec["value"]
    if rec["kind"] == "measure":
        return f"{value:.6g}" + (f" {rec['unit']}" if rec.get("unit") else "")
    if rec["kind"] == "table":
        return f"table of {len(value.get('rows', []))} rows"
    return str(value)


def _display_frame(res: dict[str, Any], states: Any) -> Any:
    import pandas as pd

    frame = pd.DataFrame({"state": states})
    frame.index.name = "site"
    names = list(dict.fromkeys(r["name"] for s in res["sites"] for r in s["records"]))
    for name in names:
        column = {}
        for s in res["sites"]:
            recs = [r for r in s["records"] if r["name"] == name] if s["state"] == "succeeded" else []
            column[s["site"]] = _cell(recs[-1] if recs else None)
        frame[name] = pd.Series(column)
    return frame


def print_results(res: dict[str, Any], fmt: str, out: TextIO, *, long: bool = False) -> None:
    import pandas as pd

    from jipkit.coordinator.aggregate import records_frame, records_long

    if fmt == "json":
        out.write(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
        return
    per_site = {s["site"]: s["records"] if s["state"] == "succeeded" else None for s in res["sites"]}
    if long:
        _write_frame(records_long(per_site).set_index("site"), fmt, out)
        if fmt != "csv":
            out.write("\nprovenance\n")
            _write_frame(provenance_frame(res), fmt, out)
            out.write("\nchecks at the sites (isolation, redaction report)\n")
            out.write("\n".join(checks_lines(res)) + "\n")
            for w in _warnings(res):
                out.write(f"provenance warning: {w}\n")
        return
    states = pd.Series({s["site"]: _job_label(s) for s in res["sites"]}, name="state")
    if fmt == "csv":  # numbers as numbers (empty when missing or suppressed); tables: use --long or json
        frame = records_frame(per_site)
        kinds = {r["name"]: r["kind"] for s in res["sites"] for r in s["records"]}
        frame = frame[[c for c in frame.columns if kinds.get(c) != "table"]]
        frame.insert(0, "state", states.reindex(frame.index))
        _write_frame(frame, fmt, out)
        return
    out.write(
        f"run {res['run_id']} ({res['state']}), study {res['study']}, version {res['version_hash'][:12]}\n"
    )
    _write_frame(_display_frame(res, states), fmt, out)
    pooled_records = [c for c in res["combined"] if c["kind"] in ("count", "measure")]
    if pooled_records:
        rows = []
        for c in pooled_records:
            pooled = c["pooled"] or {}
            value = pooled.get("total", pooled.get("mean"))
            extra = f"sd {pooled['sd']:.4g}" if pooled.get("sd") is not None else ""
            if "n" in pooled:
                extra = f"n {pooled['n']} {extra}".strip()
            rows.append(
                {
                    "record": c["name"],
                    "kind": c["kind"],
                    "pooled": ""
                    if value is None
                    else (f"{value:.6g}" if isinstance(value, float) else value),
                    "detail": extra,
                    "sites": c["sites"],
                    "missing": ", ".join(c["missing_sites"]),
                }
            )
        out.write("\ncombined\n")
        out.write(pd.DataFrame(rows).to_string(index=False) + "\n")
    checks = checks_lines(res)
    if checks:
        out.write("\nchecks at the sites (isolation, redaction report)\n" + "\n".join(checks) + "\n")
    for w in _warnings(res):
        out.write(f"provenance warning: {w} (details: --long)\n")


# ---------------------------------------------------------------------- coordinator (local)


def cmd_init(args: argparse.Namespace) -> int:
    """``jip coordinator init``: the data folder (mode 700), the signing key (mode 600), the database."""
    from jipkit.coordinator.db import Database
    from jipkit.protocol.signing import SigningKey, fingerprint

    cfg = _config(args)
    cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if cfg.key_file.exists():
        key = SigningKey.load(cfg.key_file)
        made = "kept the existing"
    else:
        key = SigningKey.generate()
        key.save(cfg.key_file)
        made = "made a new"
    Database(cfg.database_file, synchronous=cfg.sqlite_synchronous).close()
    print(f"coordinator data folder: {cfg.data_dir}")
    print(f"database: {cfg.database_file}")
    print(f"signing key: {cfg.key_file} ({made} key)")
    print(f"key id: {key.key_id}")
    print(f"key fingerprint: {fingerprint(key.public_b64)}")
    print("next: jip coordinator create-admin NAME")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``jip coordinator serve``: the web service under uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    from jipkit.coordinator.app import create_app
    from jipkit.coordinator.service import Service

    cfg = _config(args)
    svc = Service.open(cfg)
    if not svc.has_admin():
        print("note: no admin yet: jip coordinator create-admin NAME", file=sys.stderr)
    base = cfg.url
    print(f"dashboard: {base}/ui/  (API: {base}/api/v1, OpenAPI: {base}/openapi.json)", file=sys.stderr)
    try:
        uvicorn.run(
            create_app(cfg, service=svc),
            host=cfg.host,
            port=cfg.port,
            log_level=args.log_level,
            access_log=args.access_log,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=2,
            backlog=4096,
        )
    finally:
        svc.close()
    return 0


def cmd_create_admin(args: argparse.Namespace) -> int:
    """``jip coordinator create-admin``: the first admin; its password is asked for, never a default."""
    svc = _service(args)
    try:
        if svc.has_admin():
            raise JipError(
                "An admin exists already. Add more users with: jip coordinator add-user NAME --admin"
            )
        svc.create_user(args.username, _read_password(args, confirm=True), admin=True)
    finally:
        svc.close()
    print(f"created admin {args.username}")
    return 0


def cmd_add_user(args: argparse.Namespace) -> int:
    """``jip coordinator add-user``: create a user (password asked for) and/or give it roles in a study."""
    svc = _service(args)
    try:
        if args.role and not args.study:
            raise JipError("--role needs --study: roles are given per study.")
        if svc.get_user(args.username) is None:
            svc.create_user(args.username, _read_password(args, confirm=True), admin=args.admin)
            print(f"created user {args.username}" + (" (admin)" if args.admin else ""))
        elif args.admin:
            raise JipError(f"User {args.username} exists; an existing user cannot be made admin here.")
        for role in args.role or ():
            svc.grant_role(args.study, args.username, role)
            print(f"{args.username} is {role} in study {args.study}")
    finally:
        svc.close()
    return 0


def cmd_add_study(args: argparse.Namespace) -> int:
    """``jip coordinator add-study``: create a study."""
    svc = _service(args)
    try:
        study = svc.create_study(args.name, review_quorum=args.quorum)
    finally:
        svc.close()
    print(f"created study {study['name']} (review quorum {study['review_quorum']})")
    return 0


def cmd_add_site(args: argparse.Namespace) -> int:
    """``jip coordinator add-site``: register a site in a study; print its one-time enrol token."""
    svc = _service(args)
    try:
        ticket = svc.add_site(args.site, study=args.study, reissue=args.reissue)
        url = svc.config.url
    finally:
        svc.close()
    print(f"site {ticket.site} takes part in study {args.study}")
    if ticket.enrol_token is None:
        print("the site exists: no new enrol token (use --reissue to make one)")
    else:
        print(f"enrol token (shown once, valid until {ticket.expires_at}): {ticket.enrol_token}")
        print(f"coordinator: {url}")
    print(f"coordinator key {ticket.coordinator_key_id}, fingerprint {ticket.coordinator_fingerprint}")
    print("give the site's operator the token and the fingerprint by separate channels: jip site enrol")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    """``jip coordinator login``: print a new API token for a user."""
    from jipkit.coordinator.client import CoordinatorClient

    with CoordinatorClient.from_env(args.url, verify=args.ca_bundle) as client:
        token = client.login(args.username, _read_password(args, confirm=False))
    print(token)
    print("export it for the other commands: export JIP_COORDINATOR_TOKEN=<token>", file=sys.stderr)
    return 0


def cmd_verify_audit(args: argparse.Namespace) -> int:
    """``jip coordinator verify-audit``: check the audit log's hash chain."""
    svc = _service(args)
    try:
        check = svc.verify_audit()
    finally:
        svc.close()
    if not check.ok:
        raise JipError(f"The audit log is broken at entry {check.bad_id}: {check.problem}.")
    print(f"audit log intact: {check.entries} entries, head {check.head}")
    return 0


# ---------------------------------------------------------------------- users (HTTP)


def cmd_notebook_submit(args: argparse.Namespace) -> int:
    """``jip notebook submit``: submit a notebook file to a study."""
    with _client(args) as client:
        out = client.submit_notebook(args.study, args.notebook)
    note = " (submitted before)" if out.get("existing") else ""
    print(f"version {out['version_hash']} of study {args.study}: {out['state']}{note}")
    for name, spec in out["parameters"].items():
        print(f"  parameter {name}: {spec['type']} = {json.dumps(spec['default'])}")
    return 0


def cmd_notebook_review(args: argparse.Namespace) -> int:
    """``jip notebook review``: approve or reject a version."""
    with _client(args) as client:
        vh = _resolve_version(client, args.study, args.version) if args.study else args.version
        out = client.review(vh, "approve" if args.approve else "reject", args.comment or "")
    print(
        f"version {out['version_hash'][:12]}: {out['state']} "
        f"({out['approvals']} of {out['review_quorum']} approvals, {out['rejections']} rejections)"
    )
    return 0


def cmd_notebook_list(args: argparse.Namespace) -> int:
    """``jip notebook list``: a study's versions and their review state."""
    import pandas as pd

    with _client(args) as client:
        versions = client.list_notebooks(args.study)
    if args.format == "json":
        print(json.dumps(versions, indent=1, ensure_ascii=False))
        return 0
    rows = [
        {
            "version": v["version_hash"] if args.format == "csv" else v["version_hash"][:12],
            "title": v["title"],
            "author": v["author"],
            "state": v["state"],
            "approvals": f"{v['approvals']}/{v['review_quorum']}",
            "parameters": ", ".join(v["parameters"]),
            "submitted_at": v["submitted_at"],
        }
        for v in versions
    ]
    df = pd.DataFrame(
        rows, columns=["version", "title", "author", "state", "approvals", "parameters", "submitted_at"]
    )
    if args.format == "csv":
        df.to_csv(sys.stdout, index=False)
    else:
        print(df.to_string(index=False) if len(df) else "(no versions)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``jip run``: start a run; with ``--wait``, follow it per site and print its results (exit 1 unless all succeeded)."""
    params = _parameters(args)
    with _client(args) as client:
        vh = _resolve_version(client, args.study, args.notebook)
        out = client.start_run(args.study, vh, params, args.site or None, args.deadline)
        print(f"run {out['run_id']}: {len(out['jobs'])} jobs ({', '.join(j['site'] for j in out['jobs'])})")
        if not args.wait:
            print(f"follow it: jip results {out['run_id']}")
            return 0
        quiet = bool(getattr(args, "quiet", False))
        run = client.wait_run(
            out["run_id"], timeout=args.timeout, on_progress=None if quiet else _progress(sys.stderr)
        )
        print_results(client.results(out["run_id"]), args.format, sys.stdout)
    states = {j["state"] for j in run["jobs"]}
    return 0 if states == {"succeeded"} else 1


def cmd_results(args: argparse.Namespace) -> int:
    """``jip results``: a run's per-site and combined results as a table, CSV or JSON."""
    with _client(args) as client:
        res = client.results(args.run_id)
    print_results(res, args.format, sys.stdout, long=args.long)
    return 0


# ---------------------------------------------------------------------- parser


def _local_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "-c",
        "--coordinator-config",
        metavar="TOML",
        help="coordinator configuration (default: $JIP_COORD_CONFIG, then the user's coordinator.toml)",
    )
    p.add_argument(
        "--data-dir", type=Path, help="the coordinator's data folder (overrides the configuration)"
    )
    return p


def _http_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--url", help="the coordinator's URL (default: $JIP_COORDINATOR_URL)")
    p.add_argument("--token", help="a user's API token (default: $JIP_COORDINATOR_TOKEN)")
    p.add_argument("--ca-bundle", help="CA certificates (PEM) for TLS (default: $JIP_COORDINATOR_CA_BUNDLE)")
    return p


def _password_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")


def register(subparsers: Subparsers) -> None:
    """Add ``coordinator``, ``notebook``, ``run`` and ``results`` to jip's subcommands.

    Parameters
    ----------
    subparsers
        What ``ArgumentParser.add_subparsers()`` returned for ``jip``.
    """
    local, http = _local_options(), _http_options()

    coord = subparsers.add_parser("coordinator", help="set up and run a coordinator (on its machine)")
    csub = coord.add_subparsers(dest="coordinator_command", required=True, metavar="COMMAND")

    s = csub.add_parser("init", parents=[local], help="make the data folder, signing key and database")
    s.set_defaults(func=cmd_init)

    s = csub.add_parser("serve", parents=[local], help="run the web service")
    s.add_argument("--host", help="interface to listen on (default from the configuration: 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default from the configuration: 8750)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--access-log", action="store_true", help="log every request (slow with many runners)")
    s.set_defaults(func=cmd_serve)

    s = csub.add_parser("create-admin", parents=[local], help="create the first admin (asks for a password)")
    s.add_argument("username")
    _password_option(s)
    s.set_defaults(func=cmd_create_admin)

    s = csub.add_parser("add-user", parents=[local], help="create a user and/or give roles in a study")
    s.add_argument("username")
    s.add_argument("--study", help="the study of --role")
    s.add_argument(
        "--role", action="append", choices=["scientist", "reviewer", "coordinator"], help="repeat for several"
    )
    s.add_argument("--admin", action="store_true", help="a global admin")
    _password_option(s)
    s.set_defaults(func=cmd_add_user)

    s = csub.add_parser("add-study", parents=[local], help="create a study")
    s.add_argument("name")
    s.add_argument("--quorum", type=int, help="approvals a version needs (default from the configuration: 2)")
    s.set_defaults(func=cmd_add_study)

    s = csub.add_parser(
        "add-site", parents=[local], help="register a site in a study; prints a one-time enrol token"
    )
    s.add_argument("site")
    s.add_argument("--study", required=True)
    s.add_argument("--reissue", action="store_true", help="a new enrol token for an existing site")
    s.set_defaults(func=cmd_add_site)

    s = csub.add_parser("login", parents=[http], help="print an API token for a user")
    s.add_argument("username")
    _password_option(s)
    s.set_defaults(func=cmd_login)

    s = csub.add_parser("verify-audit", parents=[local], help="check the audit log's hash chain")
    s.set_defaults(func=cmd_verify_audit)

    nb = subparsers.add_parser("notebook", help="submit, review and list notebook versions")
    nsub = nb.add_subparsers(dest="notebook_command", required=True, metavar="COMMAND")

    s = nsub.add_parser("submit", parents=[http], help="submit a notebook to a study")
    s.add_argument("notebook", help="an .ipynb file")
    s.add_argument("--study", required=True)
    s.set_defaults(func=cmd_notebook_submit)

    s = nsub.add_parser("review", parents=[http], help="approve or reject a version")
    s.add_argument("version", help="the version hash (or a unique prefix, with --study)")
    s.add_argument("--study", help="resolve a hash prefix in this study")
    choice = s.add_mutually_exclusive_group(required=True)
    choice.add_argument("--approve", action="store_true")
    choice.add_argument("--reject", action="store_true")
    s.add_argument("--comment")
    s.set_defaults(func=cmd_notebook_review)

    s = nsub.add_parser("list", parents=[http], help="a study's versions and their review state")
    s.add_argument("--study", required=True)
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.set_defaults(func=cmd_notebook_list)

    s = subparsers.add_parser("run", parents=[http], help="start a run of an approved notebook version")
    s.add_argument("--study", required=True)
    s.add_argument("--notebook", required=True, help="version hash, unique prefix, or the .ipynb file")
    s.add_argument(
        "-p", "--parameter", action="append", metavar="NAME=VALUE", help="VALUE is JSON, else text"
    )
    s.add_argument("--parameters-json", help="parameters as one JSON object")
    s.add_argument("--site", action="append", help="a target site (repeat; default: every site of the study)")
    s.add_argument("--deadline", type=int, default=600, help="seconds each site gives the notebook")
    s.add_argument("--wait", action="store_true", help="follow the run per site, then print its results")
    s.add_argument("--timeout", type=float, help="with --wait: stop waiting after this many seconds")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.set_defaults(func=cmd_run)

    s = subparsers.add_parser("results", parents=[http], help="a run's per-site and combined results")
    s.add_argument("run_id")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.add_argument(
        "--long", action="store_true", help="one row per site and record, then each site's provenance"
    )
    s.set_defaults(func=cmd_results)


def main(argv: Sequence[str] | None = None) -> int:
    """These commands alone (``python -m jipkit.coordinator.cli coordinator serve ...``)."""
    parser = argparse.ArgumentParser(prog="jip")
    parser.add_argument("-q", "--quiet", action="store_true")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except JipError as err:
        print(f"jip {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
