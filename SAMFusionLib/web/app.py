"""``samfusion serve``: pick a CT, pick an X-ray, prompt, run, look, download, in a browser.

One trame app on trame-slicer: Slicer's own slice views (rendered on the server, streamed to the
page) of one MRML scene, three side by side: the CT (view group 0), the X-ray (1) and, after a run,
the fused image (2), each with SAM's segmentation over it. The run is the Slicer module's Logic:
``scene.run.read_inputs`` and ``add_outputs`` on the scene, ``pipeline.run_pipeline`` between them
on a worker thread (the page stays live and shows the progress; Cancel stops it between steps and
leaves the scene as it was). Outputs are written as ``samfusion run`` writes them
(``scene.case_files.write_outputs``) into this server's temporary folder, and offered as one zip.
What a browser may send is checked in ``web.uploads``.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import tempfile
from pathlib import Path

from SAMFusionLib.errors import Cancelled, SamFusionError
from SAMFusionLib.scene.run import SceneInputs
from SAMFusionLib.web import uploads
from SAMFusionLib.web.choices import RUN_CHOICES, run_choices
from SAMFusionLib.web.page import three_views
from SAMFusionLib.web.results import ErrorsToPage, report_rows, zip_folder

PROMPT_COLOURS = {"roi": (1.0, 0.85, 0.0), "points": (0.1, 0.85, 0.1), "negative": (0.9, 0.1, 0.1)}
PLACE_SLOTS = {"ct_points": "CT points", "ct_negative_points": "CT negative points", "ct_roi": "CT ROI",
               "xray_points": "X-ray points", "xray_negative_points": "X-ray negative points", "xray_roi": "X-ray ROI"}


class SamFusionWebApp:
    """The app: a trame server, trame-slicer's Slicer core, and this session's case and outputs."""

    def __init__(self, server=None, data_dir: Path | None = None, model_id: str | None = None,
                 max_upload_bytes: int = uploads.MAX_UPLOAD_BYTES) -> None:
        # torch (and what segment_anything pulls in: torchvision, torch._dynamo, triton) is loaded before
        # trame-slicer's VTK rendering libraries: loaded after them, triton's native library crashed
        # the server (a segfault importing triton on the first run).
        import segment_anything  # noqa: F401
        import torch._dynamo  # noqa: F401
        from trame.app import get_server
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        from SAMFusionLib.sam.models import load_table

        self.server = server or get_server("samfusion", client_type="vue3")
        self.state, self.ctrl = self.server.state, self.server.controller
        self.data_dir = None if data_dir is None else Path(data_dir).resolve()
        self.max_upload_bytes = max_upload_bytes
        self.session = Path(tempfile.mkdtemp(prefix="samfusion-serve-"))
        self.slicer = SlicerApp()
        from vtkmodules.vtkCommonCore import vtkObject

        vtkObject.GlobalWarningDisplayOff()  # VTK's deprecation notices on every view are not the user's business
        register_rca_factories(self.slicer.view_manager, self.server)
        self.layout = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        self.layout.register_layout_dict({"SAMFusion": three_views()})
        self.layout.set_layout("SAMFusion")
        self.nodes: SceneInputs | None = None
        self.case = None  # the default case's truth, when it is loaded
        self.output_nodes: list = []
        self.zip_bytes: bytes | None = None
        from SAMFusionLib.sam.preload import SegmenterLoader, memory_segmenter

        # The chosen model loads on a worker thread while the user prepares the case (``sam.preload``).
        self.loader = SegmenterLoader(memory_segmenter)
        self._model_load = None  # (model id, its preload's future or None)
        self._loop = None  # the server's event loop, once it runs: the preload's end is shown from there
        self._ahead = None  # the images being encoded for the next Run (a BackgroundJob), or None
        self._ahead_what = None  # what that job encodes (``scene.run.ahead_key`` and the run's options)
        self._cancel = False
        self._progress = ("", 0.0)
        self._task = None
        table = load_table()
        self.state.update({
            "sf_models": list(table.models), "sf_model": model_id or table.default,
            "sf_transforms": ["rigid", "similarity", "affine", "nonrigid"], "sf_transform": "nonrigid",
            "sf_views": ["AP", "LAT", "SI"], "sf_view": "AP", "sf_projections": ["parallel", "perspective"], "sf_projection": "parallel",
            "sf_slice_steps": ["auto", 1, 2, 3, 4], "sf_slice_step": "auto",
            "sf_case": "", "sf_message": "", "sf_running": False, "sf_progress": 0, "sf_step": "", "sf_verdict": "", "sf_passed": None,
            "sf_report": [], "sf_report_png": "", "sf_has_result": False, "sf_scene": self._scene_summary(),
            "sf_data_ct": uploads.data_choices(self.data_dir, uploads.CT_SUFFIXES), "sf_data_xray": uploads.data_choices(self.data_dir, uploads.XRAY_SUFFIXES),
            "sf_data_ct_pick": None, "sf_data_xray_pick": None, "sf_has_data": self.data_dir is not None, "sf_model_status": "",
            "sf_ahead": "", "sf_encode_ahead": True,
        })
        self._model_titles = {model: entry.title for model, entry in table.models.items()}
        # The server's answer to a model choice: the page shows what the next Run will use.
        self.state.change("sf_model")(self._on_model_chosen)
        # The view decides the CT's slices: another view, other images to encode.
        self.state.change("sf_encode_ahead", "sf_view", "sf_slice_step")(lambda **_: self._encode_ahead())
        self.ctrl.on_server_ready.add(self._on_server_ready)
        self._on_model_chosen(self.state.sf_model)
        from SAMFusionLib.web.page import build_page

        self.ui = build_page(self)

    def _on_model_chosen(self, sf_model, **_) -> None:
        self.state.sf_model_title = self._model_titles.get(sf_model, "")
        future = self.loader.preload(sf_model)
        self._model_load = (sf_model, future)
        if future is not None:
            future.add_done_callback(lambda _: self._from_worker(self._show_model_status))
        self._show_model_status(flush=False)
        self._encode_ahead()  # the new model's embeddings are other numbers

    def _on_server_ready(self, **_) -> None:
        self._loop = asyncio.get_running_loop()
        self._show_model_status()  # the preload may have ended before the server was up

    def _from_worker(self, call) -> None:
        """Run ``call`` on the server's loop: the page's state is only changed from there."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(call)

    def _show_model_status(self, flush: bool = True) -> None:
        """The page's line on the chosen model: loaded, loading, or what its load said."""
        model_id, future = self._model_load
        if model_id != self.state.sf_model:
            return  # another model was chosen meanwhile; its own line is shown
        if self.loader.ready(model_id):
            text = "loaded"
        elif future is None:
            text = "loads at the first run: its weights are not on this machine yet"
        elif not future.done():
            text = "loading in the background"
        else:
            text = f"its load failed ({future.exception()}); Run tries again"
        self.state.sf_model_status = text
        if flush:
            self.state.flush()

    # --- loading -----------------------------------------------------------------------------

    def _clear_case(self) -> None:
        scene = self.slicer.scene
        for node in [*self.output_nodes, *(vars(self.nodes).values() if self.nodes else [])]:
            if hasattr(node, "GetID") and scene.GetNodeByID(node.GetID()) is not None:
                scene.RemoveNode(node)
        self.nodes, self.case, self.output_nodes, self.zip_bytes = None, None, [], None
        self.state.update({"sf_verdict": "", "sf_passed": None, "sf_report": [], "sf_report_png": "", "sf_has_result": False})

    def load_default_case(self) -> None:
        from SAMFusionLib.cases.demo_case import make_demo_case
        from SAMFusionLib.scene import mrml
        from SAMFusionLib.scene.run import add_case_nodes

        case = make_demo_case()
        self._clear_case()
        with mrml.SceneTransaction(self.slicer.scene):
            self.nodes = add_case_nodes(self.slicer.scene, case.inputs, "phantom CT", "phantom X-ray", "kidney_left")
        self.case = case
        self._shown(f"the embedded default case: {case.description}")
        self._encode_ahead()

    def _load_images(self, ct_path: Path | None, xray_path: Path | None, label: str) -> None:
        """Replace the CT and/or the X-ray; on any error the scene keeps what it had."""
        from SAMFusionLib.imaging.io import grey_array, read_image_2d, read_volume_or_slice
        from SAMFusionLib.imaging.plane import Plane
        from SAMFusionLib.scene import mrml

        ct = xray = None
        if ct_path is not None:
            ct_kji, ct_geometry = read_volume_or_slice(ct_path)  # read first: a bad file adds nothing
        if xray_path is not None:
            xray_image = read_image_2d(xray_path)
        old = self.nodes or SceneInputs(None, None)
        scene = self.slicer.scene
        with mrml.SceneTransaction(scene):
            if ct_path is not None:
                ct = mrml.add_volume(scene, ct_kji, ct_geometry, Path(ct_path).name.split(".")[0] or "CT")
            if xray_path is not None:
                xray = mrml.add_image_2d(scene, grey_array(xray_image), Plane.from_geometry(xray_image.geometry), Path(xray_path).name.split(".")[0] or "X-ray")
        keep_ct, keep_xray = (old.ct if ct is None else None), (old.xray if xray is None else None)
        kept = {slot: getattr(old, slot) for slot in PLACE_SLOTS if (slot.startswith("ct") and ct is None) or (slot.startswith("xray") and xray is None)}
        for node in [old.ct if ct is not None else None, old.xray if xray is not None else None, *self.output_nodes,
                     *[getattr(old, slot) for slot in PLACE_SLOTS if slot not in kept]]:
            if node is not None and scene.GetNodeByID(node.GetID()) is not None:
                scene.RemoveNode(node)
        self.output_nodes, self.case, self.zip_bytes = [], None, None
        self.nodes = SceneInputs(ct or keep_ct, xray or keep_xray, **kept)
        self.state.update({"sf_verdict": "", "sf_passed": None, "sf_report": [], "sf_report_png": "", "sf_has_result": False})
        self._shown(label)
        self._encode_ahead()

    def upload(self, role: str, files: list[dict] | None) -> None:
        """``role`` "ct" or "xray": the browser's files (trame's dicts: name, content, ...)."""
        allowed = uploads.CT_SUFFIXES if role == "ct" else uploads.XRAY_SUFFIXES
        with self._reporting_errors():
            items = [uploads.Upload(str(f.get("name", "")), bytes(f.get("content") or b"")) for f in (files or [])]
            paths = uploads.write_uploads(items, allowed, self.session, self.max_upload_bytes)
            path = uploads.series_path(paths)
            self._load_images(path if role == "ct" else None, path if role == "xray" else None, f"uploaded {role.upper()}: {path.name}")

    def load_data(self, role: str) -> None:
        with self._reporting_errors():
            picked = self.state.sf_data_ct_pick if role == "ct" else self.state.sf_data_xray_pick
            if not picked:
                raise SamFusionError(f"choose a {'CT' if role == 'ct' else 'X-ray'} file from the server's data folder first")
            path = uploads.resolve_data_path(self.data_dir, picked)
            self._load_images(path if role == "ct" else None, path if role == "xray" else None, f"{role.upper()} from the data folder: {picked}")

    # --- prompts -----------------------------------------------------------------------------

    def place(self, slot: str) -> None:
        """Start placing into the prompt list (or ROI) ``slot``, making it when there is none."""
        with self._reporting_errors():
            if self.nodes is None or (slot.startswith("ct") and self.nodes.ct is None) or (slot.startswith("xray") and self.nodes.xray is None):
                raise SamFusionError("load the image first")
            node = getattr(self.nodes, slot)
            if node is None:
                kind = "vtkMRMLMarkupsROINode" if slot.endswith("roi") else "vtkMRMLMarkupsFiducialNode"
                node = self.slicer.scene.AddNewNodeByClass(kind, PLACE_SLOTS[slot])
                node.CreateDefaultDisplayNodes()
                setattr(self.nodes, slot, node)
                self.slicer.display_manager.set_node_visible_in_group(node, 0 if slot.startswith("ct") else 1)
                self._prompts(slot.split("_")[0])
                node.AddObserver(node.PointPositionDefinedEvent, self._on_point_placed)
            self.state.sf_scene = self._scene_summary()
            self.slicer.markups_logic.place_node(node, persistent=not slot.endswith("roi"))

    def _on_point_placed(self, *_) -> None:
        """A point or box corner placed in a view (a VTK event, outside any trame callback)."""
        with self.state:
            self.state.sf_scene = self._scene_summary()
            self._encode_ahead()  # a CT prompt moves the slices to encode; an X-ray one changes nothing there

    def stop_placing(self) -> None:
        self.slicer.markups_logic.disable_place_mode()

    # --- encoding ahead ------------------------------------------------------------------------

    def _encode_ahead(self) -> None:
        """Encode what the next Run will segment on a worker thread (``pipeline.encode_ahead_of_run``):
        the X-ray once it is loaded, the CT's slices once a prompt is on it, while the user goes on
        prompting; the Run then only decodes them. A Run stops it first. Nothing is started for a
        model whose weights are still to be downloaded."""
        from SAMFusionLib.background import BackgroundJob
        from SAMFusionLib.pipeline import PipelineOptions, encode_ahead_of_run
        from SAMFusionLib.scene.run import ahead_key, read_ahead

        model_id, view, slice_step = self.state.sf_model, self.state.sf_view, self._slice_step()
        what = ahead_key(self.nodes) + (view, slice_step, model_id)
        if self.state.sf_encode_ahead and self._ahead is not None and self._ahead_what == what:
            return  # already encoded, or under way: e.g. a prompt placed on the X-ray
        previous = self._stop_ahead()
        if not self.state.sf_encode_ahead:
            self.state.sf_ahead = ""  # turned off: what is encoded stays in the cache
            return
        xray, ct = read_ahead(self.nodes)  # here, on the scene's thread
        if (xray is None and ct is None) or self.loader.preload(model_id) is None:
            return
        options = PipelineOptions(view=view, slice_step=slice_step)

        def work(progress, cancelled):
            if previous is not None:
                previous.join()  # one job on the segmenter at a time
            return encode_ahead_of_run(self.loader.get(model_id), xray, ct, options, progress, cancelled)

        job = self._ahead = BackgroundJob(work, "samfusion-ahead")
        self._ahead_what = what
        self.state.sf_ahead = "encoding ahead of the run"
        job.add_done_callback(lambda done: self._from_worker(lambda: self._show_ahead(done, xray is not None)))

    def _show_ahead(self, job, with_xray: bool) -> None:
        if job is not self._ahead:
            return  # stopped, and perhaps started again: that job's line is shown
        try:
            _, slices = job.result()
            self.state.sf_ahead = f"encoded ahead of the run: {'the X-ray, ' if with_xray else ''}{slices} CT slices"
        except Exception as error:  # noqa: BLE001 - the Run meets the same problem and reports it
            self.state.sf_ahead = f"not encoded ahead ({error})"
        self.state.flush()

    def _stop_ahead(self, wait: bool = False):
        """Stop encoding ahead (between two slices); with ``wait``, until its thread has stopped.
        Returns the stopped job, or None."""
        job, self._ahead = self._ahead, None
        if job is not None:
            job.cancel()
            if wait:
                job.join()  # what failed there, the Run meets again and reports
        return job

    # --- the run -----------------------------------------------------------------------------

    def cancel(self) -> None:
        self._cancel = True

    def run(self, *choices) -> None:
        """Start a run and return at once (Cancel stays live), with the choices the click sends (``web.choices``)."""
        if not self.state.sf_running and (self._task is None or self._task.done()):
            with self._reporting_errors():
                self.state.update(run_choices(choices, {name: self.state[f"{name}s"] for name in RUN_CHOICES}))
                self._task = asyncio.get_event_loop().create_task(self._run())

    def _slice_step(self):
        """The page's "SAM on every Nth CT slice" as the pipeline takes it: "auto" or N (a number
        from the page may arrive as text)."""
        value = self.state.sf_slice_step
        return "auto" if value == "auto" else int(value)

    async def _run(self) -> None:
        from functools import partial

        from SAMFusionLib.pipeline import PipelineOptions
        from SAMFusionLib.registration.register import RegistrationOptions
        from SAMFusionLib.scene.run import read_inputs

        with self._reporting_errors():
            if self.nodes is None:
                raise SamFusionError("load a case first: the default case, or a CT and an X-ray")
            inputs = read_inputs(self.nodes)  # the scene is read here, on its own thread
            options = PipelineOptions(view=self.state.sf_view, projection=self.state.sf_projection, slice_step=self._slice_step(),
                                      registration=RegistrationOptions(transform=self.state.sf_transform))
            self.stop_placing()
            self._cancel, self._progress = False, ("loading the model", 0.0)
            with self.state:
                self.state.update({"sf_running": True, "sf_progress": 0, "sf_step": "loading the model", "sf_message": "", "sf_ahead": ""})
            loop = asyncio.get_running_loop()
            try:
                work = loop.run_in_executor(None, partial(self._load_and_run, self.state.sf_model, inputs, options))
                while not work.done():
                    await asyncio.sleep(0.25)
                    with self.state:
                        step, fraction = self._progress
                        self.state.sf_step, self.state.sf_progress = step, round(100 * fraction)
                segmenter, result = work.result()
                self._show_model_status(flush=False)
                self._publish(result, options, segmenter)
            except Cancelled:
                self.state.sf_message = "cancelled: the scene is as it was"
            finally:
                self.state.sf_running = False
        self.state.flush()

    def _load_and_run(self, model_id: str, inputs, options):
        """(segmenter, pipeline result), on one worker thread: the model's load, when it was not
        preloaded, runs torch on the same thread as the pipeline (see ``sam.preload``: a second
        thread that has run torch slows the first while it lives)."""
        from SAMFusionLib.pipeline import run_pipeline

        self._stop_ahead(wait=True)  # the segmenter serves one thread at a time; what it encoded is in its cache
        segmenter = self.loader.get(model_id)
        return segmenter, run_pipeline(segmenter, inputs, options, self._on_progress, lambda: self._cancel)

    def _on_progress(self, step: str, fraction: float) -> None:
        from SAMFusionLib.pipeline import STEPS

        index = STEPS.index(step) if step in STEPS else 0
        self._progress = (step, (index + min(max(fraction, 0.0), 1.0)) / len(STEPS))

    def _publish(self, result, options, segmenter) -> None:
        """Output nodes into the scene, the run's folder and zip, the verdict and report on the page."""
        from SAMFusionLib.scene.case_files import model_report, write_outputs
        from SAMFusionLib.scene.run import add_outputs

        for node in self.output_nodes:  # a re-run replaces the previous run's outputs
            if self.slicer.scene.GetNodeByID(node.GetID()) is not None:
                self.slicer.scene.RemoveNode(node)
        outputs = add_outputs(self.slicer.scene, self.nodes, result, options, apply_transform=False)
        self.output_nodes = [node for node in vars(outputs).values() if node is not None]
        report = result.report
        report["model"] = model_report(segmenter)
        if self.case is not None:
            from SAMFusionLib.cases.demo_case import truth_report

            report["case"] = truth_report(self.case, result)
        folder = Path(tempfile.mkdtemp(prefix="run-", dir=self.session)) / "samfusion-scene"
        write_outputs(self.slicer.scene, result, report, folder)
        self.zip_bytes = zip_folder(folder)
        registration = report["registration"]
        self.state.update({
            "sf_verdict": f"registration {'passed' if registration['passed'] else 'FAILED'}: {registration['reason']}",
            "sf_passed": bool(registration["passed"]), "sf_report": report_rows(report), "sf_has_result": True,
            "sf_report_png": "data:image/png;base64," + base64.b64encode((folder / "report.png").read_bytes()).decode("ascii"),
            "sf_progress": 100, "sf_step": "done",
        })
        self._show_outputs(outputs)

    def download(self):
        """The last run's scene folder as a zip, for the page's download button."""
        if self.zip_bytes is None:
            return None
        return self.server.protocol.addAttachment(self.zip_bytes)

    # --- views -------------------------------------------------------------------------------

    def _shown(self, label: str) -> None:
        nodes = self.nodes
        self._show(0, nodes.ct, self._prompts("ct"))
        self._show(1, nodes.xray, self._prompts("xray"))
        self._show(2, None, [])
        self.state.update({"sf_case": label, "sf_message": "", "sf_scene": self._scene_summary()})

    def _prompts(self, side: str) -> list:
        """The prompt nodes of one image, drawn as outlines (boxes yellow, points green or red) so
        that SAM's mask shows through them."""
        found = []
        for slot in PLACE_SLOTS:
            node = getattr(self.nodes, slot) if slot.startswith(side) else None
            if node is None or node.GetDisplayNode() is None:
                continue
            display = node.GetDisplayNode()
            if slot.endswith("roi"):
                display.SetFillOpacity(0.0)
            display.SetSelectedColor(*PROMPT_COLOURS["roi" if slot.endswith("roi") else "negative" if "negative" in slot else "points"])
            display.SetPropertiesLabelVisibility(False)
            found.append(node)
        return found

    def _show_outputs(self, outputs) -> None:
        self._show(0, self.nodes.ct, [outputs.ct_segmentation, *self._prompts("ct")])
        self._show(1, self.nodes.xray, [outputs.xray_segmentation, *self._prompts("xray")])
        self._show(2, outputs.fused, [])
        self.state.sf_scene = self._scene_summary()

    def _show(self, group: int, volume, overlays: list) -> None:
        display = self.slicer.display_manager
        display.show_volume_in_slice_background(volume, group)
        for node in overlays:
            display.set_node_visible_in_group(node, group)
        for view in self.slicer.view_manager.get_slice_views(group):
            if volume is not None:
                view._view_node.RotateToVolumePlane(volume)  # the image's own plane (an X-ray is a plane)
            view.fit_view_to_content()
        if volume is not None and group == 0 and self.nodes.ct_points is not None and self.nodes.ct_points.GetNumberOfControlPoints():
            point = [0.0, 0.0, 0.0]
            self.nodes.ct_points.GetNthControlPointPositionWorld(0, point)
            for view in self.slicer.view_manager.get_slice_views(group):
                view._view_node.JumpSliceByCentering(*point)  # the CT slice through the target prompt

    def _scene_summary(self) -> str:
        scene = self.slicer.scene
        counts = [(scene.GetNumberOfNodesByClass(cls), name) for cls, name in
                  (("vtkMRMLScalarVolumeNode", "volumes"), ("vtkMRMLSegmentationNode", "segmentations"), ("vtkMRMLMarkupsNode", "prompt lists"))]
        points = sum(node.GetNumberOfDefinedControlPoints() for node in vars(self.nodes).values()
                     if hasattr(node, "GetNumberOfDefinedControlPoints")) if self.nodes else 0
        return ", ".join(f"{count} {name}" for count, name in counts) + f" ({points} points)"

    # --- errors ------------------------------------------------------------------------------

    def _reporting_errors(self):
        return ErrorsToPage(self)

    def close(self) -> None:
        self._stop_ahead(wait=True)
        shutil.rmtree(self.session, ignore_errors=True)
