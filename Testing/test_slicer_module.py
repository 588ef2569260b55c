"""The Slicer panel's wiring, checked without desktop Slicer: every widget bound to the parameter
node names one of its fields, and every field has a widget except the documented few."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Filled by hand (the model list comes from the model table) or kept for re-runs only.
UNBOUND = {"model", "outGridTransform", "outProjection"}


def parameter_fields() -> set[str]:
    tree = ast.parse((ROOT / "SAMFusion" / "SAMFusion.py").read_text())
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == "SAMFusionParameterNode"]
    assert len(classes) == 1
    return {item.target.id for item in classes[0].body if isinstance(item, ast.AnnAssign)}


def test_every_widget_is_bound_to_a_parameter_and_every_parameter_has_a_widget():
    ui = (ROOT / "SAMFusion" / "Resources" / "UI" / "SAMFusion.ui").read_text()
    bound = re.findall(r'SlicerParameterName" stdset="0"><string>(\w+)</string>', ui)
    assert len(bound) == len(set(bound)), "a parameter bound to two widgets"
    fields = parameter_fields()
    assert set(bound) <= fields, set(bound) - fields
    assert fields - set(bound) == UNBOUND


def ui_widgets() -> dict[str, str]:
    """{widget name: class} of every named widget in the panel's .ui."""
    import xml.etree.ElementTree as ElementTree

    tree = ElementTree.parse(ROOT / "SAMFusion" / "Resources" / "UI" / "SAMFusion.ui")
    return {w.get("name"): w.get("class") for w in tree.iter("widget") if w.get("name")}


def test_every_widget_the_module_names_is_in_the_ui():
    source = (ROOT / "SAMFusion" / "SAMFusion.py").read_text()
    named = set(re.findall(r"self\.ui\.(\w+)", source))
    # The place widgets are reached by name: getattr(self.ui, f"{name}PlaceWidget").
    loop = re.search(r'for name in \(([^)]*)\):\s+placeWidget = getattr\(self\.ui, f"\{name\}PlaceWidget"\)', source)
    assert loop, "the place widgets' set-up loop"
    named |= {f"{name}PlaceWidget" for name in re.findall(r'"(\w+)"', loop.group(1))}
    widgets = ui_widgets()
    assert named <= set(widgets), named - set(widgets)


def test_each_prompt_selector_has_a_place_widget_bound_to_its_node():
    """Points and ROIs are placed from the panel: a markups place widget beside each prompt
    selector, following the selector's node and the scene."""
    import xml.etree.ElementTree as ElementTree

    widgets = ui_widgets()
    root = ElementTree.parse(ROOT / "SAMFusion" / "Resources" / "UI" / "SAMFusion.ui").getroot()
    connections = {(c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot")) for c in root.iter("connection")}
    selectors = [name for name, cls in widgets.items() if cls == "qMRMLNodeComboBox" and re.match(r"(ct|xray)(Points|Negative|Roi)Selector$", name)]
    assert len(selectors) == 6
    for selector in selectors:
        place = selector.replace("Selector", "PlaceWidget")
        assert widgets.get(place) == "qSlicerMarkupsPlaceWidget", place
        assert (selector, "currentNodeChanged(vtkMRMLNode*)", place, "setCurrentNode(vtkMRMLNode*)") in connections
        assert ("SAMFusion", "mrmlSceneChanged(vtkMRMLScene*)", place, "setMRMLScene(vtkMRMLScene*)") in connections
    assert "<class>qSlicerMarkupsPlaceWidget</class>" in (ROOT / "SAMFusion" / "Resources" / "UI" / "SAMFusion.ui").read_text()


def test_the_panel_starts_on_the_model_tables_default():
    """A fresh parameter node selects the model the command line uses by default (the fine-tuned
    LiteMedSAM), not the from-scratch demo model."""
    from SAMFusionLib.sam.models import load_table

    tree = ast.parse((ROOT / "SAMFusion" / "SAMFusion.py").read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "SAMFusionParameterNode")
    model = next(item for item in node.body if isinstance(item, ast.AnnAssign) and item.target.id == "model")
    assert ast.literal_eval(model.value) == load_table().default == "samfusion-lite"


def test_the_panels_slice_step_starts_on_auto_as_the_command_line_does():
    """The spin box's special value 0 reads "auto", the parameter node starts there, and the Logic
    turns it into the pipeline's "auto" (the command line's default); N stays N."""
    from xml.etree import ElementTree

    from SAMFusionLib.pipeline import PipelineOptions

    tree = ast.parse((ROOT / "SAMFusion" / "SAMFusion.py").read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "SAMFusionParameterNode")
    field = next(item for item in node.body if isinstance(item, ast.AnnAssign) and item.target.id == "sliceStep")
    assert ast.literal_eval(field.value) == 0
    root = ElementTree.parse(ROOT / "SAMFusion" / "Resources" / "UI" / "SAMFusion.ui").getroot()
    spin = next(w for w in root.iter("widget") if w.get("name") == "sliceStepSpinBox")
    properties = {p.get("name"): p for p in spin.iter("property")}
    assert properties["specialValueText"].findtext("string") == "auto" and properties["minimum"].findtext("number") == "0"
    helper = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "sliceStepOption")
    namespace: dict = {}
    exec(compile(ast.Module(body=[helper], type_ignores=[]), "SAMFusion.py", "exec"), namespace)  # the function alone: no Slicer needed

    class Parameters:
        sliceStep = 0

    assert namespace["sliceStepOption"](Parameters) == "auto" == PipelineOptions().slice_step
    Parameters.sliceStep = 3
    assert namespace["sliceStepOption"](Parameters) == 3
