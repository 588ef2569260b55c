"""Imaging: the frames, grids and files every other part of the engine stands on.

Owns image geometry (IJK <-> RAS/LPS, prompts -> pixels, points from masks), 2D physical grids and
resampling between them, the plane of a 2D image in RAS, image and mask file I/O (SimpleITK), atomic
writes, CT/X-ray intensity windows, contour overlays and the mask metrics (Dice, IoU, TRE). It may
import only ``SAMFusionLib.errors`` and third-party libraries: it is the bottom layer.
"""
