"""The oldest Slicer supported is 5.8, which ships Python 3.9: the engine and the module must run
there. vermin reads the source and names the first Python version each construct needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def vermin(*paths: Path) -> subprocess.CompletedProcess:
    # bytes.decode reads to vermin like Python 2's str.decode (a known false positive): excluded.
    return subprocess.run([str(Path(sys.executable).with_name("vermin")), "-t=3.9-", "--violations", "--no-tips", "--exclude", "str.decode",
                           *map(str, paths)], capture_output=True, text=True)


def test_the_engine_and_the_module_run_on_python_3_9():
    done = vermin(ROOT / "SAMFusionLib", ROOT / "SAMFusion")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_gate_catches_a_3_10_construct(tmp_path):
    source = tmp_path / "new.py"
    source.write_text("pairs = list(zip([1], [2], strict=True))\n")
    done = vermin(source)
    assert done.returncode != 0 and "zip(strict)" in done.stdout
