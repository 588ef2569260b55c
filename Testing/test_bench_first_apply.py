"""``samfusion bench first-apply``: an interactive session's first Apply against its second, the
model loaded on demand and loaded ahead (``sam.preload``), each session a fresh process."""

from __future__ import annotations

import pytest

from SAMFusionLib.bench.first_apply import MODES, format_table, run_benchmark
from SAMFusionLib.cli.main import main
from SAMFusionLib.errors import SamFusionError


def test_a_preloaded_session_has_the_model_by_the_first_click_and_one_encoding_ahead_has_the_images_too():
    # 8 s from opening to the click: the demo model's load (torch's imports included) took about
    # 3.7 s on the build CPU and its encoding of the images ahead 0.5 s more, so both are done with room
    # to spare even on a loaded machine.
    figures = run_benchmark("samfusion-demo", think_s=8.0, sessions=1)
    on_demand, preloaded, ahead = (figures["modes"][mode] for mode in MODES)
    assert figures["model"] == "samfusion-demo" and figures["sessions"] == 1
    assert on_demand["loaded_at_first_click"] == 0  # nothing loads before the first Apply asks
    assert preloaded["loaded_at_first_click"] == ahead["loaded_at_first_click"] == 1
    assert on_demand["model_ready_s"] is None and 0 < preloaded["model_ready_s"] < 8.0
    # Without encoding ahead the first Apply encodes every CT slice it segments and the X-ray; with
    # it, the zoomed crops only (measured: 35 against 2, 33 slices encoded ahead).
    assert on_demand["first_apply_images_encoded"] >= 30 and preloaded["first_apply_images_encoded"] >= 30
    assert ahead["encoded_ahead"] >= 30 and ahead["ahead_done_at_first_click"] == 1 and ahead["first_apply_images_encoded"] <= 3
    for row in (on_demand, preloaded, ahead):
        # The front end's modules (MRML, the engine's scene code) do not import torch: the load does.
        assert row["torch_imported_before_opening"] is False
        assert row["passed"] == 2 and row["tre_mm"] < 1.5  # both Applies on the default case, against its truth
        assert row["tre_change_mm"] < 0.05  # the second Apply repeats the first (its prompts pass through the transform: round-off)
        # Times, so only their sense is checked here (measured: first / second Apply 3.56 / 1.19 s on
        # demand, 1.16 / 1.18 s preloaded, 0.58 / 1.13 s with the images encoded ahead).
        assert 0 < row["second_apply_s"] and 0 < row["ratio"] < 100
    table = format_table(figures).splitlines()
    assert [line.split(" | ")[0] for line in table[-3:]] == [f"| {mode}" for mode in MODES]


@pytest.mark.parametrize("think_s, sessions, message", [
    (5.0, 0, "at least one session of each kind, got 0"),
    (-1.0, 1, "--think-s must be between 0 and 600 seconds, got -1"),
])
def test_what_the_benchmark_cannot_time_is_refused(think_s, sessions, message):
    with pytest.raises(SamFusionError, match=message):
        run_benchmark("samfusion-demo", think_s, sessions)


def test_the_command_refuses_an_unknown_model_in_one_line(capsys):
    assert main(["bench", "first-apply", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("samfusion: error: ") and "no-such-model" in err and "\n" not in err
