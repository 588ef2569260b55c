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
