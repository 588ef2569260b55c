"""``python -m SAMFusionLib.training.pin_model MODEL_ID``: write an embedded model file's SHA256 into the model table."""

from __future__ import annotations

import json
import sys

from SAMFusionLib.sam.models import resources_dir
from SAMFusionLib.sam.weights import sha256_file


def pin(model_id: str) -> str:
    """Set ``sha256`` of the embedded entry ``model_id`` in ``Resources/models.json``; returns the hash."""
    table_path = resources_dir() / "models.json"
    table = json.loads(table_path.read_text())
    entry = next(row for row in table["models"] if row["id"] == model_id)
    digest = sha256_file(resources_dir() / entry["embedded"])
    text = table_path.read_text()
    marker = f'"embedded": "{entry["embedded"]}", "sha256": '
    start = text.index(marker) + len(marker)
    end = text.index("}", start)
    table_path.write_text(text[:start] + f'"{digest}"' + text[end:])
    return digest


if __name__ == "__main__":
    print(pin(sys.argv[1]))
