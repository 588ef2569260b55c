"""``samfusion run-batch`` and ``samfusion sample-cohort`` argument handling (the work is in
``batch.cohort``)."""

from __future__ import annotations

import sys
from pathlib import Path

from SAMFusionLib.cli.common import (
    EXIT_QUALITY_FAILED,
    EXIT_SOME_FILES_FAILED,
    add_cluster_options,
    add_model_options,
    add_pipeline_options,
    dask_client,
    holding_out_folder,
    load_model_from_args,
    pipeline_options,
)
from SAMFusionLib.errors import SamFusionError


@holding_out_folder
def cmd_run_batch(args) -> int:
    from SAMFusionLib.batch import cohort

    out = Path(args.out)  # checked, and locked, by holding_out_folder
    rows = cohort.read_cases(args.cases)
    options = pipeline_options(args)
    if args.workers is None and args.scheduler is None:
        from SAMFusionLib.sam.segmenter import Segmenter

        summary = cohort.run_cohort(rows, out, cohort.serial_runner(Segmenter(load_model_from_args(args)), options, out))
    else:
        from SAMFusionLib.batch import cluster

        with dask_client(args, "run-batch") as client:
            summary = cohort.run_cohort(rows, out.resolve(), cluster.cohort_runner(client, options, out.resolve()))
    for reason in summary.failures.values():
        print(f"samfusion: failed: {reason}", file=sys.stderr)
    failed = sum(row["verdict"] == "failed" for row in summary.rows)
    print(f"samfusion run-batch: {len(summary.done)} run, {len(summary.skipped)} already done, {len(summary.failures)} failed to run, "
          f"{failed} registration(s) failed their check; summary in {out / 'summary.csv'}")
    if summary.failures:
        return EXIT_SOME_FILES_FAILED
    return EXIT_QUALITY_FAILED if failed else 0


def cmd_sample_cohort(args) -> int:
    from SAMFusionLib.batch.cohort import write_sample_cohort
    from SAMFusionLib.imaging.io import check_out_folder

    if args.cases < 1:
        raise SamFusionError("--cases needs at least 1")
    check_out_folder(args.folder)
    print(write_sample_cohort(args.folder, args.cases, args.seed))
    return 0


def add_parsers(commands) -> None:
    batch = commands.add_parser("run-batch", help="the whole pipeline over a cohort (CASES.csv: case,ct,xray,prompts[,truth]), on Dask if asked")
    batch.add_argument("cases", type=Path, help="CSV, one row a case: case,ct,xray,prompts (';'-separated .mrk.json)[,truth]")
    batch.add_argument("--out", type=Path, required=True, help="output folder: one folder per case, summary.csv, failures.json (resumable)")
    add_pipeline_options(batch)
    add_model_options(batch)
    add_cluster_options(batch)
    batch.set_defaults(func=cmd_run_batch)

    sample = commands.add_parser("sample-cohort", help="write generated cases with their truth, and their CASES.csv, for run-batch")
    sample.add_argument("folder", type=Path)
    sample.add_argument("--cases", type=int, default=4, help="number of cases (default 4)")
    sample.add_argument("--seed", type=int, default=5, help="first case's seed (default 5: the default case)")
    sample.set_defaults(func=cmd_sample_cohort)
