"""``visionfm serve``: a local web app (and JSON API) over the model folders in ``--models`` (docs/serve.md)."""

from __future__ import annotations

import ipaddress
import sys

from visionfm.cli.options import VFMArgumentParser, add_device_argument
from visionfm.errors import ConfigError


def add_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--models", "--model", dest="models", default=None,
                   help="a model folder or a folder of model folders (e.g. <run>/model); without it, or when it "
                        "holds no valid model, built-in demo models (not for clinical use) are offered")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; the default only accepts connections from this computer")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--allowed_hosts", nargs="+", default=[], metavar="NAME",
                   help="Host header names to answer besides localhost, 127.0.0.1, ::1 and --host (e.g. this "
                        "computer's name or LAN address when listening on 0.0.0.0; '*.example.org' for sub-domains, "
                        "'*' turns the check off); requests for any other name get 400, against DNS rebinding")
    p.add_argument("--max_upload_mb", type=float, default=25.0, help="largest accepted upload (MB)")
    p.add_argument("--max_megapixels", type=float, default=64.0,
                   help="largest accepted image (checked from the header, before decoding)")
    p.add_argument("--workers", type=int, default=2, help="inference threads")
    add_device_argument(p)
    p.add_argument("--no_preload", action="store_true",
                   help="load each model on first use instead of loading and warming up every model at start-up")
    p.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="server log verbosity")
    p.add_config_argument()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    try:
        import uvicorn

        from visionfm.serve.app import create_app
    except ImportError as exc:
        raise ConfigError(f"visionfm serve needs the web dependencies ({exc.name} is missing): "
                          "pip install 'fastapi>=0.110' 'uvicorn>=0.29' 'python-multipart>=0.0.9'") from None
    from visionfm.engine.logging import setup_logging

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    app = create_app(args.models, max_upload_mb=args.max_upload_mb, max_megapixels=args.max_megapixels,
                     workers=args.workers, device=args.device, preload=not args.no_preload, host=args.host,
                     allowed_hosts=args.allowed_hosts)
    setup_logging(True)  # after the listing, which the lines below report
    hosts = app.state.allowed_hosts
    if not _is_loopback(args.host):
        print(f"visionfm serve: warning: listening on {args.host}, reachable from other computers; there is no "
              "authentication and no TLS. Use only on a trusted network.", file=sys.stderr)
    if "*" in hosts:
        print("visionfm serve: warning: --allowed_hosts '*' turns the Host header check off (DNS rebinding "
              "against this server becomes possible)", file=sys.stderr)
    else:
        print(f"visionfm serve: answering requests for the host names {', '.join(hosts)} "
              "(add others with --allowed_hosts)", file=sys.stderr)
    reg = app.state.registry
    print(f"visionfm serve: {len(reg)} model(s): {', '.join(reg.entries) or 'none'}", file=sys.stderr)
    for prob in reg.problem_list():
        print(f"visionfm serve: not serving {prob['folder']}: {prob['error']}", file=sys.stderr)
    if not args.no_preload and len(reg):
        print("visionfm serve: loading and warming up every model (a model that fails is reported here and in "
              "/api/models; the others are served)", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"visionfm serve: open http://{shown}:{args.port}/ in a browser (Ctrl+C to stop)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0
