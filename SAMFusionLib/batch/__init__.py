"""Batch: when one machine is not enough. Runs annotation and evaluation over many images, and
the whole pipeline over a cohort (``cohort``), serially or on a Dask cluster (a local one of N
processes, or a running ``dask scheduler`` given by its address): each image or case one task, the
model loaded once per worker by a worker plugin, results gathered as they finish. It may import
``annotation``, ``scene``, ``cases`` and everything below them; only the command line imports it.
"""
