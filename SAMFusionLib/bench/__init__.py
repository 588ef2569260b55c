"""Benchmarks that print figures: segmentation speed (``segment``), registration against elastix and
SimpleITK (``register``) and fusion against the classical rules (``fusion``). Not needed by a Slicer
user, so not installed with the extension. It may import every engine package, never the command line.
"""
