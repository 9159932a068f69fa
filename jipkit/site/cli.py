"""``jip site ...``: enrol a site, run its runner, approve versions locally, check its log,
release held results, show a result's provenance.

::

    jip site release list [--all] [--format table|json]
    jip site release show JOB [--save-images DIR]
    jip site release approve JOB --by NAME [--comment TEXT] [--no-upload]
    jip site release reject JOB --by NAME --comment TEXT [--no-upload]
    jip site provenance JOB [--format text|json]

``JOB`` is a job ID or a unique prefix of one.

:func:`register` adds the ``site`` command to the ``jip`` parser.  Commands raise
:class:`~jipkit.errors.JipError` subclasses on failure; ``jip`` prints them as one message.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from jipkit.errors import ConfigError, JipError
from jipkit.protocol.messages import redaction_line

__all__ = ["main", "register"]


def _config(args: argparse.Namespace) -> Any:
    from jipkit.config import load_config

    return load_config(getattr(args, "config", None))


def _log_to_stderr(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per long poll otherwise


def cmd_enrol(args: argparse.Namespace) -> int:
    """Make the site key, enrol with the coordinator, pin its keys, store the site token."""
    from jipkit.site.enrol import enrol
    from jipkit.site.fedconfig import federation_of

    cfg = _config(args)
    fed = federation_of(cfg)
    token = os.environ.get(args.enrol_token_env, "").strip()
    if not token and sys.stdin.isatty():
        token = getpass.getpass("One-time enrol token: ").strip()
    if not token:
        raise ConfigError(
            f"No enrol token: set {args.enrol_token_env} to the one-time token from the coordinator's "
            "administrator (it is not accepted on the command line, where other users could see it)."
        )
    done = enrol(fed, cfg.name, token, args.coordinator_fingerprint)
    print(f"site {done.site} enrolled with {fed.coordinator_url}")
    print(f"site key {done.key_id} ({'new' if done.new_key else 'existing'}): {fed.key_path}")
    print(f"  fingerprint {done.fingerprint} (give it to the coordinator's administrator to compare)")
    print(f"site token: {done.token_path} (mode 0600)")
    print(f"pinned coordinator keys: {', '.join(done.pinned)} in {done.keys_path}")
    served = ", ".join(f'"{k}"' for k in done.pinned)
    print("To serve this coordinator, add to [federation.policy] in the site configuration:")
    print(f"  coordinators = [{served}]")
    print('  studies = ["<study names this site takes part in>"]')
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the site runner: forever (until SIGTERM/Ctrl-C), or one poll with --once."""
    from jipkit.site.runner import Runner

    _log_to_stderr(args)
    with Runner(_config(args)) as runner:
        if not args.once:
            runner.run()
            return 0
        report = runner.run_once(args.wait)
    if report is None:
        print("no job")
    else:
        delivered = "delivered" if report.delivered else "not delivered"
        print(
            f"job {report.job_id} attempt {report.attempt}: {report.status} {report.reason or ''} ({delivered})"
        )
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    """Approve a notebook version for this site (with federation.policy.local_approval)."""
    from jipkit.site.fedconfig import federation_of
    from jipkit.site.state import RunnerState

    fed = federation_of(_config(args))
    with RunnerState(fed.state_db) as state:
        state.approve(args.version_hash, args.by or getpass.getuser(), args.note)
    print(f"approved {args.version_hash} for this site")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Check the site audit log's hash chain and print its last entries."""
    from jipkit.site.fedconfig import federation_of
    from jipkit.site.state import RunnerState

    fed = federation_of(_config(args))
    with RunnerState(fed.state_db) as state:
        n = state.verify_audit()
        entries = list(state.audit_entries())[-args.last :] if args.last else []
    for e in entries:
        print(f"{e.seq:>6} {e.at} {e.event:<20} {e.job_id or '-'} {e.detail}")
    print(f"site audit log {fed.state_db}: {n} entries, hash chain intact")
    return 0


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").split("\n"))


def _record_line(rec: dict[str, Any]) -> str:
    value = "suppressed" if rec.get("suppressed") else json.dumps(rec.get("value"), ensure_ascii=False)
    extra = " ".join(f"{k}={rec[k]}" for k in ("unit", "n", "sd", "of") if rec.get(k) is not None)
    return f"{rec.get('name')} ({rec.get('kind')}) = {value} {extra}".rstrip()


def _show_outputs(doc: dict[str, Any], images: Any) -> list[str]:
    """The outputs that would leave, as text; images saved to ``images`` (a folder) when given."""
    import base64

    from jipkit.protocol.records import RECORD_MIME

    lines: list[str] = []
    for cell in doc.get("outputs", []):
        lines.append(f"  cell {cell.get('cell')}:")
        for i, out in enumerate(cell.get("outputs", [])):
            kind = out.get("output_type")
            if kind == "stream":
                lines.append(f"   [{out.get('name', 'stream')}]")
                lines.append(_indent(_text(out.get("text", "")), "      "))
                continue
            data = out.get("data", {}) or {}
            if RECORD_MIME in data:
                lines.append(f"   [record] {_record_line(data[RECORD_MIME])}")
                continue
            for mime, value in data.items():
                if mime.startswith("image/"):
                    raw = _text(value)
                    size = len(raw.encode()) if mime == "image/svg+xml" else len(raw) * 3 // 4
                    where = ""
                    if images is not None:
                        ext = {"image/png": "png", "image/svg+xml": "svg", "image/jpeg": "jpg"}.get(
                            mime, "bin"
                        )
                        path = images / f"cell{cell.get('cell')}-{i}.{ext}"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_bytes(raw.encode() if ext == "svg" else base64.b64decode(raw))
                        where = f", saved to {path}"
                    lines.append(f"   [{mime}] an image of about {size} bytes{where}")
                elif mime == "text/plain" or "text/html" not in data:
                    lines.append(f"   [{mime}]")
                    lines.append(_indent(_text(value), "      "))
                else:
                    lines.append(f"   [{mime}] {len(_text(value))} characters (shown in its text/plain form)")
    return lines


def _release_row(rec: Any) -> dict[str, Any]:
    return {
        "job": rec.job_id,
        "attempt": rec.attempt,
        "run": rec.run_id,
        "study": rec.study,
        "version": (rec.version_hash or "")[:12],
        "held_at": rec.held_at,
        "reasons": ", ".join(rec.reasons),
        "approvals": f"{len(rec.approvals)}/{rec.stewards_needed}",
        "status": rec.status,
        "coordinator": rec.notice,
        "sent": "yes" if rec.sealed else "no",
    }


def cmd_release_list(args: argparse.Namespace) -> int:
    """``jip site release list``: results waiting for a steward (all held results with --all)."""
    from jipkit.site.fedconfig import federation_of
    from jipkit.site.state import RunnerState

    fed = federation_of(_config(args))
    with RunnerState(fed.state_db) as state:
        recs = state.releases(None if args.all else "pending")
    rows = [_release_row(r) for r in recs]
    if args.format == "json":
        print(json.dumps(rows, indent=1, ensure_ascii=False))
        return 0
    if not rows:
        print("no result waits for release" if not args.all else "no held results")
        return 0
    for r in rows:
        print(
            f"{r['job']}  {r['status']:<8} approvals {r['approvals']}  run {r['run']}  study {r['study']}  "
            f"version {r['version']}  held {r['held_at']}  ({r['reasons']})"
        )
    return 0


def cmd_release_show(args: argparse.Namespace) -> int:
    """``jip site release show JOB``: the outputs, the records, the notebook source, the redaction report."""
    from pathlib import Path

    from jipkit.site.fedconfig import federation_of
    from jipkit.site.state import RunnerState

    fed = federation_of(_config(args))
    with RunnerState(fed.state_db) as state:
        rec = state.find_release(args.job)
        notebook = state.notebook(rec.version_hash) if rec.version_hash else None
    doc = rec.document
    print(f"job {rec.job_id} attempt {rec.attempt} of run {rec.run_id}, study {rec.study}")
    print(f"version {rec.version_hash}")
    print(f"held since {rec.held_at} because: {', '.join(rec.reasons)}")
    approvals = ", ".join(rec.approvals) or "none yet"
    print(f"status: {rec.status} (approvals {len(rec.approvals)} of {rec.stewards_needed}: {approvals})")
    print(f"coordinator told it is held: {rec.notice}; result sent: {'yes' if rec.sealed else 'no'}")
    for d in rec.decisions:
        print(f"  {d.at} {d.steward}: {d.decision}" + (f" ({d.comment})" if d.comment else ""))
    print()
    print(f"result: {doc.get('status')}, run {doc.get('started_at')} to {doc.get('finished_at')}")
    print("outputs (what leaves when released):")
    lines = _show_outputs(doc, Path(args.save_images) if args.save_images else None)
    print("\n".join(lines) if lines else "  (none)")
    print("records:")
    for r in doc.get("records", []):
        print(f"  {_record_line(r)}")
    if not doc.get("records"):
        print("  (none)")
    print("redaction report:")
    if not rec.redactions:
        print(
            "  (none: the output checks removed nothing)"
            if rec.redactions == []
            else "  (no output checks ran)"
        )
    for red in rec.redactions or []:
        print(f"  {redaction_line(red)}")
    print()
    print(f"notebook source (version {rec.version_hash}):")
    if notebook is None:
        print("  (not kept here)")
    else:
        for i, cell in enumerate(notebook.get("cells", [])):
            tags = f" [{', '.join(cell.get('tags', []))}]" if cell.get("tags") else ""
            print(f"--- cell {i}: {cell.get('cell_type')}{tags}")
            print(cell.get("source", ""))
    return 0


def _decide(args: argparse.Namespace, decision: str) -> int:
    from jipkit.site.fedconfig import federation_of
    from jipkit.site.state import RunnerState

    cfg = _config(args)
    fed = federation_of(cfg)
    with RunnerState(fed.state_db) as state:
        rec = state.find_release(args.job)
        rec = state.decide(rec.job_id, args.by, decision, args.comment or "")
        if rec.status == "pending":
            print(
                f"job {rec.job_id}: approved by {args.by}; {rec.stewards_needed - len(rec.approvals)} more "
                f"approval(s) needed from other stewards ({len(rec.approvals)} of {rec.stewards_needed})"
            )
            return 0
        print(f"job {rec.job_id}: {'released' if rec.status == 'approved' else 'rejected'} by {args.by}")
        if args.no_upload:
            print("the runner signs and sends it on its next poll")
            return 0
        outcome = _send(fed, state, rec.job_id)
    if outcome == "acknowledged":
        what = (
            "the result"
            if rec.status == "approved"
            else "the rejection (reason release_rejected, no content)"
        )
        print(f"{what} was signed and the coordinator acknowledged it")
    elif outcome == "rejected":
        print("the coordinator refused the result (see the log above); it is kept here")
    else:
        print("the coordinator was not reached: the runner sends it on its next poll")
    return 0


def _send(fed: Any, state: Any, job_id: str) -> str:
    """Sign the decided release and try once to upload it."""
    from jipkit.protocol.signing import SigningKey
    from jipkit.site.client import CoordinatorClient
    from jipkit.site.release import deliver, seal_decided

    seal_decided(state, SigningKey.load(fed.key_path), [job_id])
    client = CoordinatorClient(fed, fed.site_token())
    try:
        return deliver(state, client, [job_id])[job_id]
    finally:
        client.close()


def cmd_release_approve(args: argparse.Namespace) -> int:
    """``jip site release approve JOB --by NAME``: approve a held result (release it with enough approvals)."""
    return _decide(args, "approve")


def cmd_release_reject(args: argparse.Namespace) -> int:
    """``jip site release reject JOB --by NAME --comment TEXT``: only the reason code leaves."""
    return _decide(args, "reject")


def cmd_provenance(args: argparse.Namespace) -> int:
    """``jip site provenance JOB``: what a result says it used, with the salt and UIDs kept here."""
    import hashlib

    from jipkit.site.fedconfig import federation_of
    from jipkit.site.provenance import salted_uid
    from jipkit.site.state import RunnerState

    fed = federation_of(_config(args))
    with RunnerState(fed.state_db) as state:
        job = state.find_job(args.job)
        manifest = state.manifest(job.job_id)
        held = state.release(job.job_id)
    doc: dict[str, Any] = {}
    if job.result is not None:
        doc = json.loads(job.result)
    elif held is not None:
        doc = held.document
    prov = doc.get("provenance") or {}
    data = prov.get("data") or {}
    salted = data.get("uids") or []
    salt = manifest.salt if manifest is not None else b""
    kept = manifest.uids if manifest is not None else []
    hashed = [salted_uid(salt, u) for u in kept]
    uids = [{"uid": u, "salted": h, "in_result": h in salted} for u, h in zip(kept, hashed, strict=True)]
    proven = manifest is not None and (
        hashlib.sha256(salt).hexdigest() == data.get("salt_sha256") and sorted(hashed) == sorted(salted)
    )
    out: dict[str, Any] = {
        "job_id": job.job_id,
        "attempt": job.attempt,
        "state": job.state,
        "version_hash": prov.get("version_hash"),
        "parameters_sha256": prov.get("parameters_sha256"),
        "environment": prov.get("environment"),
        "series": data.get("series"),
        "salt_sha256": data.get("salt_sha256"),
        "salt": salt.hex() if manifest is not None else None,
        "series_uids": uids,
        "audit": prov.get("audit"),
        "manifest_matches": proven,
    }
    if args.format == "json":
        print(json.dumps(out, indent=1, ensure_ascii=False))
        return 0
    print(f"job {job.job_id} attempt {job.attempt}: {job.state}")
    print(f"version hash:      {out['version_hash']}")
    print(f"parameters SHA-256: {out['parameters_sha256']}")
    env = out["environment"] or {}
    print(
        f"environment:       {env.get('digest')} (Python {env.get('python')}, {env.get('packages')} packages)"
    )
    section = out["audit"] or {}
    if section:
        print(
            f"site audit log:    entries {section.get('first_seq')} to "
            f"{section.get('first_seq', 1) + len(section.get('hashes', [])) - 1} in the signed result"
        )
    print(f"series read:       {out['series']}")
    print(f"salt (keep secret): {out['salt']}")
    print(f"salt SHA-256:      {out['salt_sha256']}")
    for s in out["series_uids"]:
        print(f"  {s['uid']}  ->  {s['salted']}{'' if s['in_result'] else '  (NOT in the result)'}")
    print(
        "the result's data manifest "
        + ("matches the salt and UIDs kept here" if proven else "does NOT match what is kept here")
    )
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``jip site`` and its subcommands to the ``jip`` command line.

    Parameters
    ----------
    subparsers
        What ``ArgumentParser.add_subparsers()`` returned.

    Returns
    -------
    argparse.ArgumentParser
        The ``site`` parser.
    """
    site: argparse.ArgumentParser = subparsers.add_parser(
        "site", help="this site's runner: enrol with a coordinator, run jobs"
    )
    sub = site.add_subparsers(dest="site_command", required=True, metavar="SITE_COMMAND")

    s = sub.add_parser(
        "enrol",
        help="make the site key, enrol with the coordinator, pin its keys",
        description="Reads federation.coordinator_url from the site configuration and the one-time enrol "
        "token from $JIP_ENROL_TOKEN (or a prompt).",
    )
    s.add_argument(
        "--coordinator-fingerprint",
        action="append",
        required=True,
        metavar="SHA256:HEX",
        help="the coordinator key's fingerprint, obtained out of band (repeat for several keys)",
    )
    s.add_argument(
        "--enrol-token-env", default="JIP_ENROL_TOKEN", metavar="VAR", help="variable holding the enrol token"
    )
    s.set_defaults(func=cmd_enrol)

    s = sub.add_parser("run", help="pull and run jobs until SIGTERM or Ctrl-C")
    s.add_argument("--once", action="store_true", help="poll once, handle the job if any, and exit")
    s.add_argument("--wait", type=float, default=None, help="seconds the poll waits for a job (at most 25)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("approve", help="approve a notebook version for this site (local approval)")
    s.add_argument("version_hash")
    s.add_argument("--by", help="who approves (default: the current user)")
    s.add_argument("--note", default="", help="why, or what was checked")
    s.set_defaults(func=cmd_approve)

    s = sub.add_parser("audit", help="check the site audit log's hash chain")
    s.add_argument("--last", type=int, default=20, help="print this many of the latest entries")
    s.set_defaults(func=cmd_audit)

    rel = sub.add_parser(
        "release",
        help="results held for a data steward's release: list, show, approve, reject",
        description="Results held by federation.policy (release_required, release_studies) or by the "
        "output checks wait here until data stewards decide. Approved (by release_stewards different "
        "stewards): the result is signed and sent. Rejected: only the reason release_rejected leaves.",
    )
    rsub = rel.add_subparsers(dest="release_command", required=True, metavar="RELEASE_COMMAND")
    s = rsub.add_parser("list", help="results waiting for a steward (--all: decided ones too)")
    s.add_argument("--all", action="store_true", help="also the approved and rejected ones")
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.set_defaults(func=cmd_release_list)
    s = rsub.add_parser("show", help="a held result: outputs, records, notebook source, redaction report")
    s.add_argument("job", help="the job ID (or a unique prefix)")
    s.add_argument(
        "--save-images", metavar="DIR", help="write the image outputs to this folder to look at them"
    )
    s.set_defaults(func=cmd_release_show)
    for name, func, help_text in (
        ("approve", cmd_release_approve, "approve a held result (released once enough stewards approved)"),
        ("reject", cmd_release_reject, "reject a held result: only the reason code release_rejected leaves"),
    ):
        s = rsub.add_parser(name, help=help_text)
        s.add_argument("job", help="the job ID (or a unique prefix)")
        s.add_argument("--by", required=True, metavar="NAME", help="the data steward deciding")
        s.add_argument(
            "--comment",
            required=name == "reject",
            default="",
            help="why (kept at the site; required to reject)",
        )
        s.add_argument(
            "--no-upload", action="store_true", help="do not send it now: the runner signs and sends it"
        )
        s.set_defaults(func=func)

    s = sub.add_parser(
        "provenance",
        help="a result's provenance, with the salt and series UIDs kept here",
        description="Shows what a result's signed provenance says, and the salt and SeriesInstanceUIDs "
        "behind its salted data manifest (they never leave the site), checked against the result.",
    )
    s.add_argument("job", help="the job ID")
    s.add_argument("--format", choices=["text", "json"], default="text")
    s.set_defaults(func=cmd_provenance)
    return site


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jipkit.site.cli [--config FILE] site ...``: the same commands outside ``jip``."""
    p = argparse.ArgumentParser(prog="jip", description="JIP site runner commands.")
    p.add_argument(
        "--config", help="site configuration file (default: $JIP_CONFIG, then the user's site.toml)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    register(p.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = p.parse_args(argv)
    try:
        return int(args.func(args))
    except JipError as err:
        print(f"jip site {args.site_command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
