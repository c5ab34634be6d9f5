"""``counterfactory ui``: the web app (gradio), on 127.0.0.1 unless ``--host`` says otherwise."""

from __future__ import annotations

from ._args import positive_int, set_threads, threads_arg


def cmd_ui(args) -> int:
    from ..errors import ConfigError

    try:
        from ..ui.app import launch
    except ImportError as exc:
        raise ConfigError(f"the web app needs gradio ({exc}): pip install 'counterfactory[ui]'") from None
    set_threads(args)
    print(f"counterfactory ui: http://{args.host}:{args.port}  (outputs in {args.out}; Ctrl-C stops)")
    launch(out=args.out, host=args.host, port=args.port, base=args.base, adapter=args.adapter,
           reference_adapter=args.reference_adapter, open_browser=args.open, block=True, quiet=True)
    return 0


def register(sub) -> None:
    p = sub.add_parser("ui", help="web app: paint a defect or insert a reference crop, see and download the result",
                       description="Serves the web app on http://127.0.0.1:PORT (this machine only). Outputs, trained "
                                   "adapters and uploads stay under --out.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other address is "
                                                       "reachable by others and prints a warning)")
    p.add_argument("--port", type=positive_int("--port"), default=7860, help="port (default 7860)")
    p.add_argument("--out", default="ui_out", help="the one folder the app writes to (default ui_out)")
    p.add_argument("--base", default=None, help="compact base folder (default: the shipped weights/)")
    p.add_argument("--adapter", default=None, help="defect adapter selected at start (default: demo_out/adapter "
                                                   "when present, else the base alone)")
    p.add_argument("--reference-adapter", default=None, help="reference adapter folder for the Reference tab")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    threads_arg(p)
    p.set_defaults(func=cmd_ui)
