"""SAM: the Segment Anything engine.

Owns the model table and loading (``models``), SHA256-checked weights download and offline import
(``weights``), the image-embedding cache, the ``Segmenter`` (one embedding per image, reused for
every prompt), slice-wise volume segmentation (``volume``) and zoomed segmentation of small targets
(``zoom``). It may import ``imaging``, ``errors`` and ``device``; never registration, fusion, the
scene or the command line.
"""
