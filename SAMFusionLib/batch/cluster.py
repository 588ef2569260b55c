"""Dask for batch work: the client, the per-worker model, and annotation as one task per image.

``client_for(workers, scheduler)`` starts a ``LocalCluster`` of ``workers`` processes (one thread
and one torch thread each), or connects to a running scheduler (``tcp://host:8786``). The
``SegmenterPlugin`` loads the model once on each worker (and again on a worker that is restarted)
and keeps its embedding cache there; tasks find it with ``worker_segmenter()``. A worker that dies
mid-task has its task run again elsewhere (Dask's own retry); a task's error is reported as that
image's failure, and the rest goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin

from SAMFusionLib.errors import SamFusionError

PLUGIN_NAME = "samfusion-segmenter"


def close(client) -> None:
    """Close the client, and the local cluster if it started one."""
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()


def client_for(workers: int | None, scheduler: str | None):
    """A ``distributed.Client``: on a new local cluster of ``workers`` processes, or on ``scheduler``."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s")
        except OSError as error:
            raise SamFusionError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
    if workers is None or workers < 1:
        raise SamFusionError("--workers needs a number of worker processes >= 1")
    # Processes, not threads: SAM's encoder holds the GIL for long stretches, and one torch thread
    # per worker keeps N workers from oversubscribing the cores.
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return Client(cluster)


class SegmenterPlugin(WorkerPlugin):
    """A Dask worker plugin: the ``Segmenter`` of one model, built once per worker process."""

    name = PLUGIN_NAME

    def __init__(self, model_id: str | None, checkpoint: str | None, architecture: str | None, device: str) -> None:
        self.spec = (model_id, checkpoint, architecture, device)
        self.segmenter = None

    def setup(self, worker) -> None:
        import torch

        from SAMFusionLib.annotation.annotate import disk_cached_segmenter
        from SAMFusionLib.sam.models import load_model

        torch.set_num_threads(1)
        model_id, checkpoint, architecture, device = self.spec
        self.segmenter = disk_cached_segmenter(load_model(model_id, Path(checkpoint) if checkpoint else None, architecture, device))

    def teardown(self, worker) -> None:
        self.segmenter = None


def worker_segmenter():
    """The segmenter that ``SegmenterPlugin`` built on the worker running the current task."""
    from distributed import get_worker

    return get_worker().plugins[PLUGIN_NAME].segmenter


def _annotate_task(path: str, targets_of: Callable, zoom: str):
    from SAMFusionLib.annotation.annotate import annotate_image

    return annotate_image(Path(path), targets_of, worker_segmenter(), zoom)


def annotate_runner(client, targets_of: Callable, zoom: str) -> Callable[[list[Path]], Iterator]:
    """A ``runner`` for ``annotate_folder``: each image one task, yielded as it finishes."""
    from distributed import as_completed

    def run(paths: list[Path]) -> Iterator:
        futures = {client.submit(_annotate_task, str(path), targets_of, zoom, pure=False, retries=2): path for path in paths}
        for future in as_completed(futures):
            path = futures[future]
            try:
                yield path, future.result()
            except Exception as error:  # the task raised, or its workers kept dying: this image failed
                yield path, (None, [], f"{path.name}: {type(error).__name__}: {error}")

    return run


def _peak_rss_mb() -> float:
    import re

    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def worker_peak_rss_mb(client) -> dict[str, float]:
    """Each worker process's peak resident memory so far (MB), by worker address."""
    return {address: round(peak, 1) for address, peak in client.run(_peak_rss_mb).items()}


def register_segmenter(client, model_id: str | None, checkpoint: Path | None, architecture: str | None, device: str) -> None:
    """Install the model's ``SegmenterPlugin`` on every worker, present and future."""
    client.register_plugin(SegmenterPlugin(model_id, None if checkpoint is None else str(checkpoint), architecture, device))
