"""``counterfactory <command>``: the one entry point.

Each command group lives in its own module exposing ``register(subparsers)``; heavy imports (torch,
diffusers) happen inside the command handlers so ``--help`` stays fast. Errors the user can cause
(:class:`~counterfactory.errors.CounterfactoryError`) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import CounterfactoryError

# command-group modules, in the order --help lists them
COMMAND_MODULES = [
    "counterfactory.cli.data",
    "counterfactory.cli.train",
    "counterfactory.cli.controlnet",
    "counterfactory.cli.generate",
    "counterfactory.cli.shards",
    "counterfactory.cli.demo",
    "counterfactory.cli.cft",
    "counterfactory.cli.evaluate",
    "counterfactory.cli.insert",
    "counterfactory.cli.masks",
    "counterfactory.cli.retrieval",
    "counterfactory.cli.text",
    "counterfactory.cli.ui",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        # "argument --x: --x='v': allowed" -> "--x='v': allowed" (the value types already name their flag)
        head, sep, rest = message.partition(": ")
        if sep and head.startswith("argument ") and rest.startswith(head[len("argument "):].split("/")[-1] + "="):
            message = rest
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="counterfactory",
        description="Controlled counterfactual images: mask-guided defects, reference insertion, causal edits, evaluation.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"counterfactory {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except CounterfactoryError as exc:
        print(f"counterfactory {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"counterfactory {args.command}: interrupted (finished work is kept; rerun to resume)", file=sys.stderr)
        return 130
    finally:
        _end_process_group()
    return int(result or 0)


def _end_process_group() -> None:
    """Under ``accelerate launch`` a command joined the processes' group: leave it before exiting."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
