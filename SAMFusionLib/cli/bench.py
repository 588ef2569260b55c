"""``samfusion bench``: the benchmarks that print figures."""

from __future__ import annotations

import json

from SAMFusionLib.cli.common import add_model_options, slice_step_arg
from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.sam.models import load_model


def cmd_bench(args) -> int:
    if args.what == "demo-model":
        from SAMFusionLib.annotation.demo_figures import figure_table, format_figures

        models = [load_model(model_id, checkpoint, args.arch, args.device) for model_id, checkpoint in _models(args)]
        figures = figure_table(models, args.precision or "auto")  # what users get: the engine's default precision
        print(json.dumps(figures) if args.json else format_figures(figures))
        return 0
    if args.what == "slice-step":
        from SAMFusionLib.bench.slice_step import format_table, run_benchmark

        steps = _whole_numbers(args.steps, "--steps")
        figures = run_benchmark(load_model(args.model, args.checkpoint, args.arch, args.device), 8 if args.cases is None else args.cases, steps)
        print(json.dumps(figures) if args.json else format_table(figures))
        return 0
    if args.what == "first-apply":
        from SAMFusionLib.bench.first_apply import format_table, run_benchmark
        from SAMFusionLib.sam.models import load_table

        figures = run_benchmark(args.model or load_table().default, args.think_s, args.sessions)
        print(json.dumps(figures) if args.json else format_table(figures))
        return 0
    if args.what == "ct-size":
        from SAMFusionLib.bench.ct_size import format_table, run_benchmark
        from SAMFusionLib.sam.models import load_table

        sizes = [size for size in args.sizes.split(",") if size]
        figures = run_benchmark(args.model or load_table().default, sizes, args.seed, args.slice_step)
        print(json.dumps(figures) if args.json else format_table(figures))
        return 0
    if args.what == "register":
        from SAMFusionLib.bench.register import format_table, make_cases, run_benchmark
        from SAMFusionLib.bench.register_scale import cold_figures, format_sweep, size_sweep

        args.cases = 20 if args.cases is None else args.cases
        figures = run_benchmark(args.cases)
        cases = make_cases(args.cases)
        if args.cold:
            figures["cold"] = cold_figures(cases)
        if args.sweep_cases:
            figures["size_sweep"] = size_sweep(cases[: args.sweep_cases])
        if args.json:
            print(json.dumps(figures))
            return 0
        print(format_table(figures))
        if "cold" in figures:
            cold = figures["cold"]
            print(f"\nsamfusion cold (a fresh `samfusion register` per case, wall time from start to exit): {cold['cold_seconds_per_case']:.2f} s / case, "
                  f"median TRE {cold['median_tre_mm']:.3f} mm, success {cold['success_rate']:.2f}, peak RSS {cold['peak_rss_mb']:.0f} MB")
        if "size_sweep" in figures:
            print("\n" + format_sweep(figures["size_sweep"], args.sweep_cases))
        return 0
    if args.what == "batch":
        from SAMFusionLib.bench.batch import format_table, run_benchmark
        from SAMFusionLib.sam.models import load_table

        figures = run_benchmark(args.images, args.model or load_table().default, (args.workers,))
        print(json.dumps(figures) if args.json else format_table(figures))
        return 0
    if args.what == "fuse":
        from SAMFusionLib.bench.fusion import PAIR_SETS, format_table, run_benchmark

        figures = [run_benchmark(pair_set=name) for name in PAIR_SETS]
        print(json.dumps(figures) if args.json else "\n\n".join(format_table(f) for f in figures))
        return 0
    from SAMFusionLib.bench.segment import run_benchmark

    if args.random_arch:
        figures = run_benchmark(args, None)
    else:
        figures = [run_benchmark(args, load_model(model_id, checkpoint, args.arch, args.device)) for model_id, checkpoint in _models(args)]
        figures = figures[0] if len(figures) == 1 else figures
    print(json.dumps(figures, indent=None if args.json else 2))
    return 0


def _whole_numbers(text: str, option: str) -> list[int]:
    """"1,2,3" -> [1, 2, 3], or a one-line error naming ``option``."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise SamFusionError(f"{option} takes whole numbers separated by commas, got {text!r}") from None


# The model-table rows that the model benchmarks compare when no model is named.
LOCAL_MODELS = ("samfusion-demo", "lite_medsam", "samfusion-lite")


def _models(args) -> list[tuple[str | None, object]]:
    """(model id, checkpoint) pairs to benchmark: --checkpoint, --model, --models, else LOCAL_MODELS."""
    from SAMFusionLib.sam.models import load_table

    if args.checkpoint is not None or args.model is not None:
        return [(args.model, args.checkpoint)]
    known = load_table().models
    names = args.models.split(",") if args.models else [name for name in LOCAL_MODELS if name in known]
    return [(name, None) for name in names]


def add_parser(commands) -> None:
    bench = commands.add_parser("bench", help="benchmarks that print figures")
    bench.add_argument("what", choices=["segment", "fuse", "register", "demo-model", "batch", "slice-step", "first-apply", "ct-size"])
    bench.add_argument("--cases", type=int, help="register: number of cases (default 20); slice-step: phantom cases (default 8)")
    bench.add_argument("--steps", default="1,2,3,4", help="slice-step: the slice steps to compare, 1 included (default 1,2,3,4)")
    bench.add_argument("--no-cold", dest="cold", action="store_false", help="register: skip the cold column (a fresh process per case)")
    bench.add_argument("--sweep-cases", type=int, default=5, help="register: cases in the 400/1000/2000 px size sweep (0: none)")
    bench.add_argument("--think-s", type=float, default=5.0,
                       help="first-apply: seconds from the front end's opening to the first Apply (loading the case, placing prompts; default 5)")
    bench.add_argument("--sessions", type=int, default=2, help="first-apply: fresh-process sessions of each kind (default 2)")
    bench.add_argument("--sizes", default="stored,clinical",
                       help="ct-size: the abdomen CT as stored (3 mm) and/or resampled to a clinical 512 x 512 x 1.5 mm (default both)")
    bench.add_argument("--seed", type=int, default=1, help="ct-size: the end-to-end case's seed (default 1)")
    bench.add_argument("--slice-step", type=slice_step_arg, default="auto", help="ct-size: samfusion run's --slice-step (default auto, as run's)")
    bench.add_argument("--json", action="store_true", help="one line of JSON")
    bench.add_argument("--images", type=int, default=24, help="batch: shared kidney-stone images to annotate (default 24)")
    bench.add_argument("--workers", type=int, default=2, help="batch: local Dask worker processes against serial (default 2)")
    bench.add_argument("--slices", type=int, default=8, help="segment: ROI slices to segment (>= 8)")
    bench.add_argument("--batch-size", type=int, help="segment: slices per encoder call (default 1 on CPU, 4 on GPU)")
    bench.add_argument("--random-arch", help="time a randomly initialised model of this architecture (e.g. vit_b)")
    bench.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                       help="the image encoder's precision: segment default fp32 (the naive loop's, so the masks compare), "
                            "demo-model default auto (bf16 on a CPU with native bf16, else fp32); fp16 on CUDA only")
    bench.add_argument("--models", help="segment, demo-model: comma-separated model ids (default: " + ", ".join(LOCAL_MODELS) + ")")
    add_model_options(bench)
    bench.set_defaults(func=cmd_bench)
