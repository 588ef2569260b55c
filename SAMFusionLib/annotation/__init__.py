"""Annotation: semi-automatic annotation and its evaluation.

Owns batch annotation of image folders and volumes with resumable state (``annotate``), prompt and
label readers (``labels_io``: YOLO, COCO, masks, CSV points), exports (``export``: label maps,
COCO RLE, ``.seg.nrrd``), the paper's evaluation tables (``evaluate``, ``detection``) and the demo
model's validation figures (``demo_figures``). It may import ``sam``, ``scene.mrml``, ``cases`` and
everything below them; never the command line.
"""
