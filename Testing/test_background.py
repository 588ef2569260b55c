"""``background.BackgroundJob``: one job on a thread of its own, polled, cancelled and joined from
the GUI's thread (the Slicer panel's download and encoding ahead, the web app's encoding ahead)."""

from __future__ import annotations

import threading
import time

import pytest

from SAMFusionLib.background import BackgroundJob
from SAMFusionLib.errors import SamFusionError


def test_a_cancelled_job_stops_at_its_next_check_reports_and_its_thread_ends():
    ended = []

    def count_until_cancelled(progress, cancelled):
        done = 0
        while not cancelled() and done < 10_000:
            done += 1
            progress(done, None)
            time.sleep(0.001)
        return done

    job = BackgroundJob(count_until_cancelled, "samfusion-test-job")
    job.add_done_callback(ended.append)
    time.sleep(0.05)
    assert not job.done() and job.fraction is None  # running beside this thread, its total unknown
    job.cancel()
    job.join()
    assert job.done() and 0 < job.result() < 10_000
    assert ended == [job]
    deadline = time.monotonic() + 10
    while any(t.name.startswith("samfusion-test-job") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name.startswith("samfusion-test-job") for t in threading.enumerate())


def test_a_failed_job_is_joined_without_raising_and_its_error_comes_with_the_result():
    def fail(progress, cancelled):
        progress(1, 4)
        raise SamFusionError("the CT ROI's centre lies outside the CT volume")

    job = BackgroundJob(fail)
    job.join()
    assert job.fraction == 0.25
    with pytest.raises(SamFusionError, match="outside the CT volume"):
        job.result()
    late = []
    job.add_done_callback(late.append)  # added after the end: called at once
    assert late == [job]
