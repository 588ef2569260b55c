"""``samfusion serve``: the web app (``web.app``) on a local port."""

from __future__ import annotations

import sys
from pathlib import Path

from SAMFusionLib.errors import SamFusionError


def cmd_serve(args) -> int:
    try:
        import trame_slicer  # noqa: F401 - only to say what is missing, in one line
    except ImportError as error:
        raise SamFusionError(f"samfusion serve needs trame-slicer ({error}); install the project with 'make serve'") from None
    from SAMFusionLib.web.app import SamFusionWebApp

    if args.data is not None and not args.data.is_dir():
        raise SamFusionError(f"--data {args.data} is not a folder")
    if not 0 <= args.port < 65536:
        raise SamFusionError(f"--port {args.port} is not a port number")
    app = SamFusionWebApp(data_dir=args.data, model_id=args.model, max_upload_bytes=int(args.max_upload_mb * 2**20))
    url = f"http://{args.host}:{args.port}/"
    app.ctrl.on_server_ready.add(lambda **_: print(f"samfusion serve: {url} (Ctrl-C stops it)", flush=True))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"samfusion serve: listening on {args.host}, reachable from other machines; there is no login", file=sys.stderr)
    argv, sys.argv = sys.argv, sys.argv[:1]  # trame reads its own options from sys.argv: give it none of ours
    try:
        app.server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False, timeout=0)
    finally:
        sys.argv = argv
        app.close()
    return 0


def add_parser(commands) -> None:
    serve = commands.add_parser("serve", help="the web app: load a CT and an X-ray, prompt, run, look, download (trame-slicer)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free one)")
    serve.add_argument("--data", type=Path, help="a folder whose files the page may load (nothing outside it is ever opened)")
    serve.add_argument("--model", help="the model selected at start (default: the table's default)")
    serve.add_argument("--max-upload-mb", type=float, default=1024, help="largest accepted upload (MiB, default 1024)")
    serve.set_defaults(func=cmd_serve)
