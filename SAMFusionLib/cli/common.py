"""What every ``samfusion`` command shares: exit codes, the one-line-error parser, prompt pairs and
the model options.

The command modules import this one, never each other or ``main`` (which imports them all).
"""

from __future__ import annotations

import argparse
import functools
import re
from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError

EXIT_SOME_FILES_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_QUALITY_FAILED = 3
EXIT_CANCELLED = 130
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that staged outputs are cleaned up as for Ctrl-C."""


# argparse takes "-1e-05" or "-inf" for an option (its own pattern knows only "-3" and "-3.5"), so
# "--point -1e-05 4" failed with "unrecognized arguments": every number is a value here.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line like every other error, and negative numbers in any
    notation are values."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str) -> None:  # noqa: D401 - argparse's API
        raise SamFusionError(message)


def pairs(values: list[list[str]] | None, what: str) -> np.ndarray | None:
    """Flatten ``--point X Y [X Y ...]`` (repeatable) into an (N, 2) float array."""
    if not values:
        return None
    numbers = [v for group in values for v in group]
    if len(numbers) % 2:
        raise SamFusionError(f"{what} needs pairs of numbers X Y")
    try:
        return np.array(numbers, dtype=float).reshape(-1, 2)
    except ValueError:
        raise SamFusionError(f"{what} coordinates must be numbers") from None


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", help="model id from the model table (default: the table's default, fine-tuned LiteMedSAM)")
    group.add_argument("--checkpoint", type=Path, help="a SAM checkpoint file to use directly (offline import)")
    parser.add_argument("--arch", help="architecture of --checkpoint (inferred from its shapes when omitted)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda or mps")


def load_model_from_args(args):
    """The ``LoadedModel`` that ``--model`` / ``--checkpoint`` / ``--arch`` / ``--device`` name."""
    from SAMFusionLib.sam.models import load_model

    if args.arch and args.checkpoint is None:
        raise SamFusionError("--arch applies only with --checkpoint")
    return load_model(args.model, args.checkpoint, args.arch, args.device)


def holding_out_folder(command):
    """Run a command that writes the folder ``args.out`` while holding that folder's lock: a second
    command aimed at the same folder meanwhile is refused with one line instead of mixing outputs."""
    from SAMFusionLib.imaging.atomic import locked_folder
    from SAMFusionLib.imaging.io import check_out_folder

    @functools.wraps(command)
    def run(args) -> int:
        check_out_folder(args.out)
        with locked_folder(args.out):
            return command(args)

    return run


def process_seconds() -> float | None:
    """Seconds since this process started (interpreter start-up and imports included): what a user
    waits for a command. From /proc on Linux; None where that is not available."""
    import os

    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 2)
