"""SAMFusion Slicer module.

The engine is ``SAMFusionLib`` (Qt-free, tested headless). This file holds the Module, Widget,
Logic and Test classes. The full panel (CT and X-ray selectors, prompts, Apply/Cancel, registration
and fusion outputs) is the pipeline issue's work; until then the panel says so and the Logic offers
what the engine already does: checking the model table and the prompt engine's set-up.
"""

import logging

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)


class SAMFusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SAMFusion")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SAMFusion developers"]
        self.parent.helpText = _(
            "Segment Anything on CT volumes and X-ray images from fiducial and ROI prompts, "
            "markerless CT/X-ray registration on the SAM masks, and Laplacian-pyramid fusion. "
            "The embedded model is a small demo model, not for clinical use."
        )
        self.parent.acknowledgementText = _("Built on Meta's segment-anything (Apache-2.0).")


class SAMFusionWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMFusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SAMFusionLogic()
        self.ui.statusLabel.text = self.logic.modelSummary()


class SAMFusionLogic(ScriptedLoadableModuleLogic):
    """Thin over SAMFusionLib; never touches widgets."""

    def modelSummary(self) -> str:
        """One line naming the default model and how many models the table offers."""
        from SAMFusionLib.models import load_table

        table = load_table()
        return _("Default model: {name}; {count} models in the table.").format(name=table.default, count=len(table.models))


class SAMFusionTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_model_table()

    def test_model_table(self):
        summary = SAMFusionLogic().modelSummary()
        logging.info(summary)
        self.assertIn("samfusion-demo", summary)
