"""SAMFusionLib: the SAMFusion engine (segmentation, registration, fusion) in plain Python.

Nothing here imports Qt or Slicer, except the MRML adapter module. Heavy packages (torch,
segment_anything, cv2) are imported inside functions so that importing the package is cheap.
"""

__version__ = "0.1.0"
