"""The fusion benchmark's own checks, on real pairs from the shared abdomen CT."""

from __future__ import annotations

from SAMFusionLib.bench.fusion import benchmark_pairs, format_table, run_benchmark


def test_benchmark_pairs_are_coregistered_byte_images(shared_data):
    pairs = benchmark_pairs(3)
    assert len(pairs) == 3
    for ct, xray in pairs:
        assert ct.shape == xray.shape and ct.shape[1] == 400
        assert 0 <= ct.min() and ct.max() <= 255 and 0 <= xray.min() and xray.max() <= 255


def test_ours_beats_the_best_peer_on_qabf_without_losing_sd_sf(shared_data):
    figures = run_benchmark(benchmark_pairs(), repeats=1)  # the benchmark's own 8 pairs
    methods = figures["methods"]
    ours, peer = methods["samfusion (match rule)"], methods["laplacian max-abs"]
    assert ours["Qabf"] > max(row["Qabf"] for name, row in methods.items() if name != "samfusion (match rule)")
    assert ours["SF"] >= peer["SF"] and ours["SD"] >= peer["SD"]
    table = format_table(figures)
    assert "Qabf" in table and all(f"| {name} |" in table for name in methods)
