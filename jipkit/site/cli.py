"""``jip site ...``: enrol a site, run its runner, approve versions locally, check its log.

:func:`register` adds the ``site`` command to the ``jip`` parser.  Commands raise
:class:`~jipkit.errors.JipError` subclasses on failure; ``jip`` prints them as one message.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from jipkit.errors import ConfigError, JipError

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
