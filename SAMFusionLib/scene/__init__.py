"""Scene: the Slicer side of the engine.

Owns the MRML adapter (``mrml``: the only module of ``SAMFusionLib`` that imports ``slicer``; it uses
only calls that exist both in desktop Slicer and in the ``slicer-core`` wheel), the scene runner that
reads prompts and images from nodes, runs ``pipeline`` and writes its results back as nodes in one
transaction (``run``), and the run's ``report.png`` (``report_png``). It may import ``pipeline`` and
everything below it; nothing below imports it.
"""
