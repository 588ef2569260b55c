"""The ``samfusion`` command line (contract in the design card): the parser of every command group,
and the one place that turns an error into ``samfusion: error: ...`` and an exit code.

Every failure of input is a single line on stderr with exit code 2, and no output file is left
behind (outputs are written to a temporary name and renamed at the end). Each command group lives in
its own module (``images``, ``run``, ``cohort``, ``evaluate``, ``bench``, ``train``, ``data``), which imports
only ``cli.common`` of the command line.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import warnings

from SAMFusionLib.cli import bench, cohort, data, evaluate, images, run, serve, train
from SAMFusionLib.cli.common import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_TERMINATED, Parser, Terminated
from SAMFusionLib.errors import SamFusionError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="samfusion", description="SAM-driven CT / X-ray segmentation, registration and fusion.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    images.add_parsers(commands)
    data.add_parsers(commands)
    bench.add_parser(commands)
    evaluate.add_parsers(commands)
    run.add_parser(commands)
    cohort.add_parsers(commands)
    serve.add_parser(commands)
    train.add_parser(commands)
    return parser


def _terminate(signum, frame):
    # SIGTERM unwinds like Ctrl-C, so every staged output is removed on the way out.
    raise Terminated()


def _stopped(name: str, code: int, committed_before: int) -> int:
    from SAMFusionLib.imaging.atomic import committed

    done = committed()[committed_before:]
    if done:
        # The signal came after the outputs were committed: they are complete, and so is the command.
        print(f"samfusion: {name} after the outputs were complete: {', '.join(str(p) for p in done)}", file=sys.stderr)
        return 0
    print(f"samfusion: error: {name}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=UserWarning)
    from SAMFusionLib.imaging.atomic import committed

    committed_before = len(committed())
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except SamFusionError as error:
        print(f"samfusion: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Terminated:
        return _stopped("terminated", EXIT_TERMINATED, committed_before)
    except KeyboardInterrupt:
        return _stopped("interrupted", EXIT_CANCELLED, committed_before)
    except OSError as error:
        # The file system refused something the up-front checks could not foresee (a disk that filled
        # up, a folder removed meanwhile): one line, and the outputs' staging has been removed.
        where = f" ({error.filename})" if error.filename else ""
        print(f"samfusion: error: {error.strerror or error}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry() -> int:
    """The ``samfusion`` executable (``[project.scripts]``): ``main``, then an exit without the final
    garbage collection.

    At exit Python collects every object still alive. After torch is imported (with torchvision's
    ``torch._dynamo`` and sympy) that is about a second of wall time, which the user waits through
    after the outputs are complete (a cold ``samfusion run --model samfusion-demo``: 6.5 s, of which 1.2 s
    after the report was written). ``gc.freeze()`` takes the living objects out of that collection;
    module teardown and ``atexit`` handlers still run. Only here, at the very end of a process: a process
    that lives on (Slicer, the web app, tests calling ``main``) must not freeze its garbage.
    """
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(entry())
