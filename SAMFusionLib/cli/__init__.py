"""The ``samfusion`` command line: ``main`` builds the parser from one module per command group
(``images``, ``run``, ``evaluate``, ``bench``, ``train``, ``data``); their shared options, exit codes
and one-line-error parser are in ``common``, which they import (never each other). The top layer:
it may import everything, nothing imports it.
"""
