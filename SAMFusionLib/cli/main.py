"""The ``samfusion`` command line (contract in the design card): the parser of every command group,
and the one place that turns an error into ``samfusion: error: ...`` and an exit code.

Every failure of input is a single line on stderr with exit code 2, and no output file is left
behind (outputs are written to a temporary name and renamed at the end). Each command group lives in
its own module (``images``, ``run``, ``evaluate``, ``bench``, ``train``, ``data``), which imports
only ``cli.common`` of the command line.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from SAMFusionLib.cli import bench, data, evaluate, images, run, train
from SAMFusionLib.cli.common import EXIT_BAD_INPUT, EXIT_CANCELLED, Parser
from SAMFusionLib.errors import SamFusionError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="samfusion", description="SAM-driven CT / X-ray segmentation, registration and fusion.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    images.add_parsers(commands)
    data.add_parsers(commands)
    bench.add_parser(commands)
    evaluate.add_parsers(commands)
    run.add_parser(commands)
    train.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except SamFusionError as error:
        print(f"samfusion: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("samfusion: error: interrupted", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
