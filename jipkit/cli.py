"""The ``jip`` command line.  It holds no logic of its own: each command calls jipkit.

Errors from jipkit are printed as one message (what failed, what to do) with a
non-zero exit status; never a bare traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jipkit.errors import JipError

__all__ = ["main"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _site(args: argparse.Namespace) -> Any:
    from jipkit.data.site import connect

    return connect(args.config)


def _parse_keys(pairs: Sequence[str]) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise JipError(f"Expected query keys as KEYWORD=VALUE (for example Modality=CT), found {pair!r}.")
        k, _, v = pair.partition("=")
        keys[k.strip()] = v.split(",") if "," in v and not v.startswith('"') else v
    return keys


def _print_table(df: Any, fmt: str, out: Any = None) -> None:
    out = out or sys.stdout
    if fmt == "csv":
        df.to_csv(out, index=False)
    elif fmt == "json":
        out.write(df.to_json(orient="records", force_ascii=False, indent=1) + "\n")
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", 200, "display.max_columns", 20, "display.width", 200):
            out.write((df.to_string(index=False) if len(df) else "(no matches)") + "\n")


def cmd_index(args: argparse.Namespace) -> int:
    site = _site(args)
    report = site.index_paths(args.paths, progress=not args.quiet)
    print(report)
    for path, reason, detail in report.failed[: args.show_failed]:
        print(f"  not indexed: {path}: {reason} ({detail})", file=sys.stderr)
    if len(report.failed) > args.show_failed:
        print(
            f"  ... and {len(report.failed) - args.show_failed} more: `jip errors` lists all", file=sys.stderr
        )
    counts = site.index.counts()
    print(
        f"index {site.config.index_path}: {counts['patients']} patients, {counts['studies']} studies, "
        f"{counts['series']} series, {counts['instances']} instances"
    )
    return 0


_DEFAULT_COLUMNS = {
    "patient": [
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
    ],
    "study": [
        "PatientID",
        "PatientName",
        "StudyDate",
        "StudyDescription",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "StudyInstanceUID",
    ],
    "series": [
        "PatientID",
        "StudyDate",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "NumberOfSeriesRelatedInstances",
        "SeriesInstanceUID",
    ],
    "instance": ["SeriesInstanceUID", "InstanceNumber", "SOPInstanceUID", "ImagePositionPatient", "location"],
}


def cmd_query(args: argparse.Namespace) -> int:
    site = _site(args)
    keys = _parse_keys(args.keys)
    finder = {
        "patient": site.find_patients,
        "study": site.find_studies,
        "series": site.find_series,
        "instance": site.find_instances,
    }[args.level]
    df = finder(live=args.live, source=args.source, ignore_case=args.ignore_case, **keys)
    if args.columns:
        df = df[[c.strip() for c in args.columns.split(",")]]
    elif args.format == "table" and not args.all_columns:
        df = df[[c for c in _DEFAULT_COLUMNS[args.level] if c in df.columns]]
    _print_table(df, args.format)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    site = _site(args)
    names = [args.source] if args.source else [s.name for s in site.config.sources if s.kind != "folder"]
    if not names:
        raise JipError("No PACS source configured: add a [[sources]] table of kind dicomweb or dimse.")
    for name in names:
        print(site.sync(name, progress=not args.quiet))
    return 0


def cmd_errors(args: argparse.Namespace) -> int:
    _print_table(_site(args).index_errors(), args.format)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    site = _site(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = site.load_series(args.series_uid)
    print(vol)
    for w in caught:
        print(f"  note: {w.message}", file=sys.stderr)
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from jipkit.data import synth

    shape = (300, 512, 512) if args.full else (48, 96, 96)
    manifest = synth.generate_archive(
        Path(args.dest), n_patients=args.patients, seed=args.seed, ct_shape=shape, progress=not args.quiet
    )
    print(f"wrote {len(manifest)} series of {manifest.PatientID.nunique()} patients to {args.dest}")
    print(f"ground truth: {Path(args.dest) / 'ground_truth.csv'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from jipkit.demo import run_demo

    return run_demo(args)


def cmd_config(args: argparse.Namespace) -> int:
    from jipkit.config import load_config

    cfg = load_config(args.config)
    print(f"# read from: {cfg.path or 'embedded defaults'}")
    print(json.dumps(cfg.model_dump(mode="json", exclude={"path"}), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jip", description="JIP: the Joint Imaging Platform.")
    p.add_argument(
        "--config", help="site configuration file (default: $JIP_CONFIG, then the user's site.toml)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("index", help="index DICOM files and folders (incremental, parallel)")
    s.add_argument("paths", nargs="+")
    s.add_argument("--show-failed", type=int, default=10, help="list at most this many unreadable files")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser(
        "query",
        help="query the index (or a PACS with --live)",
        description="Query keys are DICOM keywords: jip query series Modality=CT StudyDate=2020 "
        "'SeriesDescription=*thorax*'. Comma-separated values are lists.",
    )
    s.add_argument("level", choices=["patient", "study", "series", "instance"])
    s.add_argument("keys", nargs="*", metavar="KEYWORD=VALUE")
    s.add_argument("--live", action="store_true", help="ask the PACS instead of the index")
    s.add_argument("--source", help="the PACS source for --live (default: the first configured)")
    s.add_argument("--ignore-case", action="store_true", help="match all text case-insensitively")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.add_argument("--columns", help="comma-separated columns to show")
    s.add_argument("--all-columns", action="store_true", help="show every column in table format")
    s.set_defaults(func=cmd_query)

    s = sub.add_parser("sync", help="fill the index from PACS sources (incremental)")
    s.add_argument("--source", help="only this source")
    s.set_defaults(func=cmd_sync)

    s = sub.add_parser("errors", help="list files that could not be indexed")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.set_defaults(func=cmd_errors)

    s = sub.add_parser("load", help="load a series and describe the volume")
    s.add_argument("series_uid")
    s.set_defaults(func=cmd_load)

    s = sub.add_parser("demo-data", help="write a synthetic archive (never real patient data)")
    s.add_argument("dest")
    s.add_argument("--patients", type=int, default=6)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--full", action="store_true", help="full-size CT (512x512x300) instead of 96x96x48")
    s.set_defaults(func=cmd_demo_data)

    s = sub.add_parser("demo", help="the main job: a coordinator and three sites on this machine")
    s.add_argument("--workdir", help="an empty folder for the demo's files (default: a temporary one)")
    s.add_argument("--patients", type=int, default=8, help="patients per site")
    s.add_argument("--full", action="store_true", help="full-size CT volumes (512x512x300)")
    s.add_argument("--no-pacs", action="store_true", help="folder sources even where Orthanc is installed")
    s.add_argument("--exit-when-done", action="store_true", help="exit after printing the results")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("config", help="show the site configuration in effect")
    s.set_defaults(func=cmd_config)

    from jipkit.coordinator.cli import register as register_coordinator
    from jipkit.site.cli import register as register_site

    register_coordinator(sub)
    register_site(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jip`` command line; return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except JipError as err:
        print(f"jip {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"jip {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
