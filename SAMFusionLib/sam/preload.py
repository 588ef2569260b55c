"""Segmenters loaded ahead of the first run, on a worker thread.

An interactive front end (the Slicer module, ``samfusion serve``) starts loading the chosen model
when it opens, while the user loads images and places prompts. The first Apply then does not pay
torch's imports and the model's load (about 3 s on the build CPU, more than a whole run with the
demo model), and is no slower than the second. An Apply that comes while the load is still under
way waits for it. A failed load is not kept: the Apply loads again in its own thread, so the user
meets the load's own error, and a package installed since then is found.

Each preload runs on a thread of its own (``concurrent.futures``) that ends with the load, and loads
run one after another: on a 2-core CPU two models loading side by side would only slow each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the front end's main thread imports this module: torch is imported by the load, on the worker
    from SAMFusionLib.sam.segmenter import Segmenter

Builder = Callable[[str, str], "Segmenter"]  # (model id, device) -> a segmenter of the loaded model


class SegmenterLoader:
    """One segmenter per (model id, device), built by ``build`` once, ahead of time or on demand."""

    def __init__(self, build: Builder) -> None:
        self._build = build
        self._loads: dict[tuple[str, str], Future] = {}
        self._lock = threading.Lock()
        self._one_load_at_a_time = threading.Lock()

    def preload(self, model_id: str, device: str = "auto") -> Future | None:
        """Start loading in the background, unless it is loaded or loading; returns its future.

        None, and nothing started, when the weights would first have to be downloaded: a download of
        up to 2.5 GB is the user's choice (the Download button, or Apply), never a side effect.
        """
        from SAMFusionLib.sam.models import weights_on_disk

        key = (model_id, device)
        with self._lock:
            if key in self._loads:
                return self._loads[key]
            if not weights_on_disk(model_id):
                return None
            worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samfusion-preload")
            self._loads[key] = future = worker.submit(self._load, model_id, device)
            # The thread ends with its load. A thread that has run torch keeps its own OpenMP thread
            # team while it lives, and meanwhile torch on every other thread runs slower (measured on
            # the build CPU: the demo model's slice 17 -> 28 ms, back to 17 ms once the thread ended).
            worker.shutdown(wait=False)
        return future

    def _load(self, model_id: str, device: str) -> Segmenter:
        with self._one_load_at_a_time:
            segmenter = self._build(model_id, device)
            if warm_up_pays(segmenter.model):
                warm_up(segmenter.model)
        return segmenter

    def ready(self, model_id: str, device: str = "auto") -> bool:
        """Whether ``get`` would return at once."""
        future = self._loads.get((model_id, device))
        return future is not None and future.done() and future.exception() is None

    def get(self, model_id: str, device: str = "auto") -> Segmenter:
        """The segmenter, waiting for its preload; loaded here (downloading if need be) when none was
        started or it failed. A load that fails here raises its error and is not kept."""
        key = (model_id, device)
        future = self._loads.get(key)
        if future is not None:
            try:
                return future.result()
            except Exception:  # noqa: BLE001 - whatever it was, the load below meets it again, now, and reports it
                pass
        loaded: Future = Future()
        loaded.set_result(self._load(model_id, device))
        with self._lock:
            self._loads[key] = loaded
        return loaded.result()

    def clear(self) -> None:
        """Forget every segmenter (scene close, module clean-up); a load under way finishes unheard."""
        with self._lock:
            self._loads.clear()


# Above this input size (the official 1024 px SAMs) an encode takes 10-60 s on a CPU: a warm-up there
# would hold up an early Apply for that long, to save a fraction of a second.
WARM_UP_MAX_SIZE_CPU = 256


def warm_up_pays(model) -> bool:
    """Whether ``warm_up`` is worth its one encode: on a GPU (CUDA's set-up), or on a CPU for a
    256 px model (LiteMedSAM 0.4-0.6 s, the demo model 5 ms)."""
    return model.device != "cpu" or model.img_size <= WARM_UP_MAX_SIZE_CPU


def warm_up(model) -> None:
    """Segment a synthetic image once, with a throwaway segmenter over ``model``: the first call's
    one-time costs (the folded encoder copy, oneDNN's kernels, the decoder's first pass) are paid
    here, and the user's segmenter caches and counts nothing. Measured with the demo model (while
    the preload's worker thread still lived on, see ``SegmenterLoader.preload``): the first Apply of
    a preloaded session 1.77 s without it and 1.50 s with it, the second 1.47 and 1.51 s."""
    import numpy as np

    from SAMFusionLib.sam.segmenter import Segmenter

    size = model.img_size
    ramp = np.linspace(0, 255, size * size, dtype=np.float32).reshape(size, size).astype(np.uint8)
    throwaway = Segmenter(model)
    throwaway.set_image(np.repeat(ramp[:, :, None], 3, axis=2))
    throwaway.predict(box_xyxy=np.array([size / 4, size / 4, 3 * size / 4, 3 * size / 4]), multimask=False)


def memory_segmenter(model_id: str, device: str) -> Segmenter:
    """A segmenter of table model ``model_id`` on ``device`` with an in-memory embedding cache (the
    web app's builder; the Slicer module's keeps its embeddings on disk as well)."""
    from SAMFusionLib.sam.models import load_model
    from SAMFusionLib.sam.segmenter import Segmenter

    return Segmenter(load_model(model_id, device=device, show_progress=False))
