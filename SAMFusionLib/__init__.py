"""SAMFusionLib: the SAMFusion engine (segmentation, registration, fusion) in plain Python.

Sub-packages, imported one way only (each may import those on the lines below it, never above):

- ``cli``: the ``samfusion`` command line;
- ``batch``, ``web``: annotation, evaluation and cohort runs on a Dask cluster; the browser app
  (``samfusion serve``, on trame-slicer);
- ``annotation``, ``training``, ``bench``: batch annotation and evaluation, fine-tuning, benchmarks;
- ``scene``, ``cases``: the Slicer (MRML) adapter and scene runner; the cases we make or read;
- ``pipeline`` (a module): the whole job, prompt -> mask -> projection -> transform -> fused volume;
- ``sam``, ``registration``, ``fusion``: the three engines;
- ``imaging``: geometry, grids, files, intensity windows, mask metrics;
- ``errors``, ``device``, ``background`` (modules): the error types, the torch device choice and a
  job on a thread of its own (a download, encoding ahead), used everywhere.

Nothing here imports Qt, and only ``scene.mrml`` imports ``slicer``. Heavy packages (torch,
segment_anything, cv2) are imported inside functions so that importing the package is cheap.
``Testing/test_layout.py`` enforces these rules.
"""

__version__ = "0.1.0"
