"""``samfusion run-batch``: the whole pipeline over a cohort, one case per row of a CSV.

``CASES.csv`` (paths relative to the CSV's folder, or absolute):

    case,ct,xray,prompts[,truth]
    patient-001,p001/CT.nrrd,p001/X-ray.nrrd,p001/CT_ROI.mrk.json;p001/X-ray_ROI.mrk.json[,p001/truth.json]

``prompts`` is a ``;``-separated list of Slicer markups files, assigned as ``samfusion run`` does
(``scene.case_files``). ``truth`` (optional) is a JSON of landmark pairs in the frames of the
written transform: ``points_mm`` (N, 2) on the CT's projection and ``expected_mm`` (N, 2), where
they truly lie on the X-ray; with it the summary gives the TRE. ``samfusion sample-cohort`` writes
such a cohort from the default case's generator.

Each case is one unit of work (``run_case``): its folder ``OUT/<case>/`` is written as ``samfusion
run`` writes one, all or nothing, by whichever process ran it (on a cluster, OUT and the inputs
must be on a file system every worker sees). This process alone writes ``summary.csv`` (one row a
case: verdict, reason, TRE, timings) and ``failures.json``, from every case folder present, so a
re-run after an interruption runs only the cases without a folder and its summary covers all.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from SAMFusionLib.errors import Cancelled, SamFusionError
from SAMFusionLib.imaging.atomic import atomic_path

REQUIRED_COLUMNS = ("case", "ct", "xray", "prompts")
SUMMARY_COLUMNS = ("case", "verdict", "reason", "reference", "tre_mm", "segment_s", "register_s", "fuse_s", "total_s", "model")


@dataclass(frozen=True)
class CaseRow:
    name: str
    ct: Path
    xray: Path
    prompts: tuple[Path, ...]
    truth: Path | None = None


def read_cases(csv_path: Path) -> list[CaseRow]:
    """The rows of a cohort CSV; one-line errors for a missing file or column, an unsafe or repeated name."""
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise SamFusionError(f"cannot read the cases file {csv_path}: {getattr(error, 'strerror', None) or error}") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise SamFusionError(f"{csv_path.name}: missing column(s) {', '.join(missing)}; needs {','.join(REQUIRED_COLUMNS)}[,truth]")
    base, rows, seen = csv_path.resolve().parent, [], set()
    for line, record in enumerate(reader, 2):
        name = (record["case"] or "").strip()
        if not name or name.startswith(".") or any(c in name for c in "/\\\0") or name != Path(name).name:
            raise SamFusionError(f"{csv_path.name} line {line}: case name {name!r} must be a plain folder name")
        if name in seen:
            raise SamFusionError(f"{csv_path.name} line {line}: case {name!r} appears twice")
        seen.add(name)
        prompts = tuple(base / p.strip() for p in (record["prompts"] or "").split(";") if p.strip())
        if not prompts:
            raise SamFusionError(f"{csv_path.name} line {line}: case {name!r} has no prompt files")
        truth = (record.get("truth") or "").strip()
        rows.append(CaseRow(name, base / record["ct"].strip(), base / record["xray"].strip(), prompts, base / truth if truth else None))
    if not rows:
        raise SamFusionError(f"{csv_path.name}: no cases")
    return rows


def run_case(row: CaseRow, segmenter, options, out_root: Path) -> dict:
    """Run the pipeline on one case into ``out_root/<case>``; returns its summary row."""
    from SAMFusionLib.scene import mrml
    from SAMFusionLib.scene.case_files import landmark_tre_mm, load_file_case, model_report, source_copies, write_outputs
    from SAMFusionLib.scene.run import run_on_scene

    for path in (row.ct, row.xray, *row.prompts, *([row.truth] if row.truth else [])):
        if not path.exists():
            raise SamFusionError(f"{path.name} not found")
    started = time.perf_counter()
    core = mrml.headless_scene()
    nodes = load_file_case(core.scene, row.ct, row.xray, list(row.prompts))
    _, result = run_on_scene(core.scene, nodes, segmenter, options, copy_ct=False)  # the case's own scene: nothing else changes it
    report = result.report
    report["model"] = model_report(segmenter)
    if row.truth is not None:
        report["case"] = {"name": row.name, "registration_tre_mm": round(landmark_tre_mm(result.registration.sitk_transform, row.truth), 3)}
    report["case_seconds"] = round(time.perf_counter() - started, 2)
    write_outputs(core.scene, result, report, Path(out_root) / row.name, copies=source_copies(nodes, row.ct))
    return summary_row(row.name, report)


def summary_row(name: str, report: dict) -> dict:
    registration, timings = report["registration"], report.get("timings_s", {})
    step = lambda *names: round(sum(timings.get(n, 0.0) for n in names), 3)  # noqa: E731
    return {"case": name, "verdict": "passed" if registration["passed"] else "failed", "reason": registration["reason"],
            "reference": registration.get("reference", ""), "tre_mm": report.get("case", {}).get("registration_tre_mm", ""),
            "segment_s": step("segment CT", "segment X-ray"), "register_s": step("register"), "fuse_s": step("fuse"),
            "total_s": report.get("total_s", ""), "model": report["model"]["id"]}


def serial_runner(segmenter, options, out_root: Path) -> Callable[[list[CaseRow]], Iterator]:
    """A ``runner`` that runs the cases here, one after another."""

    def run(rows: list[CaseRow]) -> Iterator:
        for row in rows:
            try:
                yield row, run_case(row, segmenter, options, out_root), None
            except Cancelled:
                raise
            except SamFusionError as error:
                yield row, None, f"{row.name}: {error}"

    return run


@dataclass
class CohortSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # a complete folder from an earlier run
    failures: dict[str, str] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # summary.csv, in the CSV's order


def run_cohort(rows: list[CaseRow], out: Path, runner: Callable, progress: bool = True) -> CohortSummary:
    """Every case without a complete folder in ``out`` through ``runner``; then ``summary.csv`` and
    ``failures.json`` over all cases (see the module docstring)."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = CohortSummary()
    pending = [row for row in rows if not (out / row.name / "report.json").exists()]
    summary.skipped = [row.name for row in rows if row not in pending]
    for row, _, failure in tqdm(runner(pending), total=len(pending), desc="run-batch", unit="case", disable=not progress):
        if failure is not None:
            summary.failures[row.name] = failure
        else:
            summary.done.append(row.name)
    _remove_stale_staging(out, rows)
    for row in rows:
        report_path = out / row.name / "report.json"
        if report_path.exists():
            summary.rows.append(summary_row(row.name, json.loads(report_path.read_text())))
        else:
            summary.rows.append({"case": row.name, "verdict": "error", "reason": summary.failures.get(row.name, "not run")})
    with atomic_path(out / "summary.csv", suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as stream:
            writer = csv.DictWriter(stream, SUMMARY_COLUMNS, restval="")
            writer.writeheader()
            writer.writerows(summary.rows)
    with atomic_path(out / "failures.json") as tmp:
        tmp.write_text(json.dumps(summary.failures, indent=1))
    return summary


def _remove_stale_staging(out: Path, rows: list[CaseRow]) -> None:
    """A worker killed while writing a case leaves its hidden staging folder; the case ran again
    elsewhere, and this process holds OUT's lock, so no one else is writing there."""
    for row in rows:
        for stale in out.glob(f".{row.name}.*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)


def write_sample_cohort(folder: Path, count: int, first_seed: int = 5) -> Path:
    """``count`` generated cases (the default case's generator, seeds ``first_seed``...) as files,
    each with its truth, and their ``CASES.csv``; returns the CSV's path."""
    from SAMFusionLib.cases.demo_case import make_demo_case
    from SAMFusionLib.scene.case_files import write_case_files

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["case,ct,xray,prompts,truth"]
    for seed in range(first_seed, first_seed + count):
        name = f"case-{seed:03d}"
        files = write_case_files(make_demo_case(seed), folder / name)
        prompts = ";".join(f"{name}/{path.name}" for path in files["prompts"])
        lines.append(f"{name},{name}/CT.nrrd,{name}/X-ray.nrrd,{prompts},{name}/truth.json")
    (folder / "CASES.csv").write_text("\n".join(lines) + "\n")
    return folder / "CASES.csv"
