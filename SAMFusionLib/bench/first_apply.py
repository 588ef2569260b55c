"""``samfusion bench first-apply``: an interactive session's first Apply against its second.

What a user of the Slicer module or of ``samfusion serve`` meets. Each session is a fresh process
that has the front end's own modules imported (MRML and the engine's scene code; not torch, which
Slicer does not load at start). The front end opens; the user loads the embedded default case and
places prompts, which takes ``think_s`` seconds of wall time counted from the opening (the process
waits); then Apply, and Apply again. Apply is the Slicer Logic's own two calls: the loader's
segmenter, then ``run_on_scene`` on a real vtkMRMLScene. The second Apply forgets the first's
embeddings (a new segmenter over the same loaded model), so both do the same work, as a second
case of the same size would.

Three kinds of session, taken in turn: the model loaded on demand at the first Apply (the front
ends before ``sam.preload``); loaded ahead when the front end opens; and loaded ahead with the
X-ray and the CT's slices also encoded ahead once the case is there (``pipeline.encode_ahead_of_run``
on a ``BackgroundJob``, stopped by the Apply, as the web app and the Slicer module do). ``ratio``: first
Apply over second (1.00: the first costs nothing extra; below 1: the first costs less than a run
that encodes everything).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import numpy as np

MODES = ("on demand", "preloaded", "preloaded, encoded ahead")


def session(model_id: str, mode: str, think_s: float) -> dict:
    """One session of kind ``mode`` in this process (call it in a fresh one): the two Applies' seconds and results."""
    import time

    from SAMFusionLib.background import BackgroundJob
    from SAMFusionLib.cases.demo_case import make_demo_case, tre_mm
    from SAMFusionLib.pipeline import PipelineOptions, encode_ahead_of_run
    from SAMFusionLib.sam.preload import SegmenterLoader, memory_segmenter
    from SAMFusionLib.scene import mrml
    from SAMFusionLib.scene.run import add_case_nodes, read_ahead, run_on_scene

    torch_before = "torch" in sys.modules
    opened = time.perf_counter()
    loader = SegmenterLoader(memory_segmenter)
    ready_s = []
    if mode != "on demand":
        loader.preload(model_id).add_done_callback(lambda _: ready_s.append(time.perf_counter() - opened))
    scene = mrml.headless_scene().scene
    case = make_demo_case()
    nodes = add_case_nodes(scene, case.inputs, "phantom CT", "phantom X-ray", "kidney_left")
    ahead = None
    if mode == "preloaded, encoded ahead":
        xray, ct = read_ahead(nodes)
        ahead = BackgroundJob(lambda progress, cancelled: encode_ahead_of_run(loader.get(model_id), xray, ct, PipelineOptions(), progress, cancelled))
    time.sleep(max(0.0, think_s - (time.perf_counter() - opened)))  # the user places prompts meanwhile
    loaded_at_click = loader.ready(model_id)
    ahead_done_at_click = ahead is not None and ahead.done()
    applies = []
    for index in range(2):
        start = time.perf_counter()
        if index == 0 and ahead is not None:
            ahead.cancel()  # as an Apply does: stop between two slices, keep what is encoded
            ahead.join()
        segmenter = loader.get(model_id)
        if index == 1:
            from SAMFusionLib.sam.segmenter import Segmenter

            segmenter = Segmenter(segmenter.model)  # the same loaded model, no embeddings: the first's work again
        _, result = run_on_scene(scene, nodes, segmenter, PipelineOptions())
        applies.append({"seconds": time.perf_counter() - start, "tre_mm": tre_mm(case, result.registration.sitk_transform),
                        "passed": bool(result.registration.passed), "images_encoded": result.report["images_encoded"]})
    return {"torch_imported_before_opening": torch_before, "model_loaded_at_first_click": loaded_at_click,
            "preload_s": ready_s[0] if ready_s else None, "encoded_ahead": None if ahead is None else ahead.result()[1],
            "ahead_done_at_first_click": ahead_done_at_click, "applies": applies}


def run_benchmark(model_id: str, think_s: float = 5.0, sessions: int = 2) -> dict:
    """``sessions`` fresh-process sessions of each kind, in turn; the medians per kind."""
    from SAMFusionLib.errors import SamFusionError

    if sessions < 1:
        raise SamFusionError(f"the first-apply benchmark needs at least one session of each kind, got {sessions}")
    if not 0 <= think_s <= 600:
        raise SamFusionError(f"--think-s must be between 0 and 600 seconds, got {think_s:g}")
    from SAMFusionLib.sam.models import load_table

    load_table().entry(model_id)  # an unknown model is refused here, before any session starts
    runs = {mode: [] for mode in MODES}
    for index in range(sessions):
        for mode in MODES if index % 2 == 0 else MODES[::-1]:
            command = [sys.executable, "-m", __name__, model_id, str(MODES.index(mode)), str(think_s)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise SamFusionError(f"a first-apply session failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = {}
    for mode, results in runs.items():
        first = [r["applies"][0]["seconds"] for r in results]
        second = [r["applies"][1]["seconds"] for r in results]
        rows[mode] = {
            "first_apply_s": round(float(np.median(first)), 2),
            "second_apply_s": round(float(np.median(second)), 2),
            "ratio": round(float(np.median(np.array(first) / np.array(second))), 2),
            "loaded_at_first_click": sum(r["model_loaded_at_first_click"] for r in results),
            # Seconds from the opening to the preloaded model's readiness (None: loaded at the first Apply).
            "model_ready_s": round(float(np.median([r["preload_s"] for r in results])), 2) if mode != "on demand" else None,
            "encoded_ahead": None if mode != MODES[2] else int(np.median([r["encoded_ahead"] for r in results])),
            "ahead_done_at_first_click": sum(bool(r["ahead_done_at_first_click"]) for r in results),
            "first_apply_images_encoded": int(np.median([r["applies"][0]["images_encoded"] for r in results])),
            "passed": sum(a["passed"] for r in results for a in r["applies"]),
            "tre_mm": round(float(np.median([a["tre_mm"] for r in results for a in r["applies"]])), 3),
            # The second Apply maps its X-ray prompts through the first's transform (Slicer's re-Apply): round-off only.
            "tre_change_mm": round(float(max(abs(r["applies"][0]["tre_mm"] - r["applies"][1]["tre_mm"]) for r in results)), 4),
            "torch_imported_before_opening": any(r["torch_imported_before_opening"] for r in results),
        }
    return {"benchmark": "first-apply", "model": model_id, "think_s": think_s, "sessions": sessions, "machine": platform.machine(), "modes": rows}


def format_table(figures: dict) -> str:
    """The benchmark as a Markdown table, one row per kind of session."""
    sessions = figures["sessions"]
    lines = [
        f"First-apply benchmark: model {figures['model']}, the embedded default case, {sessions} fresh session(s) of each kind, "
        f"{figures['think_s']:g} s from opening to the first click",
        "",
        "| session | model ready after (s) | CT slices encoded ahead | first Apply (s) | images it encoded | second Apply (s) "
        "| first / second | loaded by the first click | Applies passed | TRE (mm) | TRE change, second Apply (mm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, row in figures["modes"].items():
        ready = "at the first Apply" if row["model_ready_s"] is None else f"{row['model_ready_s']:.2f}"
        ahead = "–" if row["encoded_ahead"] is None else f"{row['encoded_ahead']} (done by the click: {row['ahead_done_at_first_click']} / {sessions})"
        lines.append(f"| {mode} | {ready} | {ahead} | {row['first_apply_s']:.2f} | {row['first_apply_images_encoded']} | {row['second_apply_s']:.2f} "
                     f"| {row['ratio']:.2f} | {row['loaded_at_first_click']} / {sessions} | {row['passed']} / {2 * sessions} "
                     f"| {row['tre_mm']:.3f} | {row['tre_change_mm']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":  # one session, in the fresh process ``run_benchmark`` starts
    print(json.dumps(session(sys.argv[1], MODES[int(sys.argv[2])], float(sys.argv[3]))))
