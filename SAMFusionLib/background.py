"""One job on a worker thread of its own, so that a GUI (the Slicer panel, the web page) stays live:
a weights download, or CT slices encoded ahead of Apply.

The thread ends with its job (``concurrent.futures``, shut down at once). That matters for jobs
that run torch: while a thread that has run torch lives, torch on every other thread runs slower
(see ``sam.preload``).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class BackgroundJob:
    """``work(progress, cancelled)`` running on a worker thread.

    ``progress(done, total)`` is the job's to call (``total`` None while unknown); the GUI thread
    polls ``fraction`` (0..1, or None) and ``done()``, asks ``cancel()`` (the job sees
    ``cancelled()`` become true and stops at its next check), and reads the result (or the job's
    error) with ``result()``.
    """

    def __init__(self, work: Callable[[Callable, Callable], Any], name: str = "samfusion-job") -> None:
        self.fraction: float | None = None
        self._cancel = threading.Event()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._future = executor.submit(work, self._progress, self._cancel.is_set)
        executor.shutdown(wait=False)  # the thread ends with its one task

    def _progress(self, done: int, total: int | None) -> None:
        self.fraction = None if not total else min(done / total, 1.0)

    def cancel(self) -> None:
        self._cancel.set()

    def done(self) -> bool:
        return self._future.done()

    def add_done_callback(self, callback: Callable[[BackgroundJob], None]) -> None:
        """Call ``callback(job)`` once the job has ended (on the job's thread, or here if it already has)."""
        self._future.add_done_callback(lambda _: callback(self))

    def join(self) -> None:
        """Wait until the job has ended, whatever its outcome (read that with ``result``)."""
        concurrent.futures.wait([self._future])

    def result(self, timeout: float | None = None):
        """The job's return value; raises what the job raised (a download: ``Cancelled`` on a cancel)."""
        return self._future.result(timeout)
