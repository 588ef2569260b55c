"""Dask for batch work: the client, the per-worker model, and annotation and evaluation as one task per image.

``client_for(workers, scheduler)`` starts a ``LocalCluster`` of ``workers`` processes (one thread
and one torch thread each), or connects to a running scheduler (``tcp://host:8786``). The
``WorkerObject`` plugin builds what tasks need once on each worker (and again on a worker that is
restarted): a model's segmenter with its embedding cache (``worker_segmenter()``) for annotation and
cohort runs, the evaluated methods for ``evaluate``. A worker that dies
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
    import dask

    # Processes, not threads: SAM's encoder holds the GIL for long stretches, and one torch thread
    # per worker keeps N workers from oversubscribing the cores. Dask's nanny starts each worker
    # with MALLOC_TRIM_THRESHOLD_=65536 (memory handed back to the system early); with torch's large
    # short-lived tensors that made every LiteMedSAM encoding 25 % slower (measured: 2.5 s against
    # 2.0 s), so the workers keep glibc's own threshold.
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), "MALLOC_TRIM_THRESHOLD_": None}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return Client(cluster)


class WorkerObject(WorkerPlugin):
    """A Dask worker plugin: an object (a model's ``Segmenter``, the evaluated methods) built once
    per worker process from ``factory`` (picklable, called with no arguments), with one torch thread."""

    def __init__(self, name: str, factory: Callable) -> None:
        self.name = name
        self.factory = factory
        self.value = None

    def setup(self, worker) -> None:
        import torch

        torch.set_num_threads(1)
        self.value = self.factory()

    def teardown(self, worker) -> None:
        self.value = None


def worker_object(name: str = PLUGIN_NAME):
    """What the ``WorkerObject`` plugin ``name`` built on the worker running the current task."""
    from distributed import get_worker

    return get_worker().plugins[name].value


def worker_segmenter():
    """The segmenter that ``register_segmenter`` installed on the worker running the current task."""
    return worker_object(PLUGIN_NAME)


def _segmenter(model_id: str | None, checkpoint: str | None, architecture: str | None, device: str):
    from SAMFusionLib.sam.models import load_model
    from SAMFusionLib.sam.segmenter import disk_cached_segmenter

    return disk_cached_segmenter(load_model(model_id, Path(checkpoint) if checkpoint else None, architecture, device))


def _annotate_task(path: str, targets_of: Callable, zoom: str):
    from SAMFusionLib.annotation.annotate import annotate_image

    return annotate_image(Path(path), targets_of, worker_segmenter(), zoom)


def as_finished(futures: dict, name_of: Callable) -> Iterator:
    """``(item, result, None)`` or ``(item, None, "name: Error: message")`` for each of ``futures``
    (future -> item) as it finishes. ``name_of(item)`` names the item in the error line."""
    from distributed import as_completed

    for future in as_completed(futures):
        item = futures[future]
        try:
            yield item, future.result(), None
        except Exception as error:  # the task raised, or its workers kept dying: this item failed
            yield item, None, f"{name_of(item)}: {type(error).__name__}: {error}"


def annotate_runner(client, targets_of: Callable, zoom: str) -> Callable[[list[Path]], Iterator]:
    """A ``runner`` for ``annotate_folder``: each image one task, yielded as it finishes."""

    def run(paths: list[Path]) -> Iterator:
        futures = {client.submit(_annotate_task, str(path), targets_of, zoom, pure=False, retries=2): path for path in paths}
        for path, result, error in as_finished(futures, lambda path: path.name):
            yield path, (None, [], error) if error else result

    return run


def _peak_rss_mb() -> float:
    import re

    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def worker_peak_rss_mb(client) -> dict[str, float]:
    """Each worker process's peak resident memory so far (MB), by worker address."""
    return {address: round(peak, 1) for address, peak in client.run(_peak_rss_mb).items()}


def register_segmenter(client, model_id: str | None, checkpoint: Path | None, architecture: str | None, device: str) -> None:
    """Build the model's segmenter on every worker, present and future (``worker_segmenter``)."""
    from functools import partial

    factory = partial(_segmenter, model_id, None if checkpoint is None else str(checkpoint), architecture, device)
    client.register_plugin(WorkerObject(PLUGIN_NAME, factory))


# --- evaluate ------------------------------------------------------------------------------------

EVALUATE_PLUGIN = "samfusion-evaluate-methods"


def _method_fingerprints() -> dict[str, str]:
    return {name: method.fingerprint for name, method in worker_object(EVALUATE_PLUGIN).items()}


def _evaluate_task(path: str, targets_of: Callable, todo: list, job):
    from SAMFusionLib.annotation.evaluate_run import evaluate_image
    from SAMFusionLib.annotation.labels_io import read_grey

    image = read_grey(Path(path))  # the worker reads the image itself: only its path is sent
    return evaluate_image(image, targets_of(Path(path), image.shape), worker_object(EVALUATE_PLUGIN), todo, job)


def evaluate_methods(client, spec) -> dict[str, str]:
    """Build ``spec``'s methods on every worker; returns their fingerprints (row name -> fingerprint)."""
    client.register_plugin(WorkerObject(EVALUATE_PLUGIN, spec.build))
    return client.submit(_method_fingerprints, pure=False).result()


def evaluate_runner(client, targets_of: Callable, job) -> Callable:
    """A ``runner`` for ``evaluate_run.evaluate_folder``: each image one task, yielded as it finishes."""
    def run(pending: list, loaded: list) -> Iterator:
        futures = {client.submit(_evaluate_task, str(path), targets_of, todo, job, pure=False, retries=2): index
                   for index, path, todo in pending}
        yield from as_finished(futures, lambda index: loaded[index][0])

    return run


# --- run-batch -----------------------------------------------------------------------------------

def _case_task(row, options, out_root: str):
    from SAMFusionLib.batch.cohort import run_case

    return run_case(row, worker_segmenter(), options, Path(out_root))


def cohort_runner(client, options, out_root: Path) -> Callable:
    """A ``runner`` for ``cohort.run_cohort``: each case one task, yielded as it finishes."""
    def run(rows: list) -> Iterator:
        futures = {client.submit(_case_task, row, options, str(out_root), pure=False, retries=2): row for row in rows}
        yield from as_finished(futures, lambda row: row.name)

    return run
