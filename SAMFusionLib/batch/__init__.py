"""Batch: when one machine is not enough. Runs annotation over many images on a Dask cluster (a
local one of N processes, or a running ``dask scheduler`` given by its address): each image one
task, the model loaded once per worker by a worker plugin, results gathered as they finish and
written by the client alone. It may import ``annotation``, ``sam`` and everything below them; only
the command line imports it.
"""
