"""Cases: the inputs the project makes or reads for demos, tests, training and benchmarks.

Owns the synthetic phantoms with ground truth (``phantom``), simulated radiograph contrast and
random known transforms (``xray_sim``), the embedded default case that ``samfusion run`` and
``make demo`` use (``demo_case``), the Slicer sample-data set (``sample_data``) and the readers of the
real shared data sets (``shared_data``). It may import ``pipeline`` (a case is a set of
``PipelineInputs``) and everything below it; never the scene or the command line.
"""
