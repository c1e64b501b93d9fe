"""The ``medfm`` command line: one entry point, kebab-case subcommands, YAML configs.

Each module in :mod:`medfm.cli.commands` defines ``register(subparsers)``, which adds
its subcommand(s) and sets ``func=run`` with ``run(args) -> int``. They are found
automatically, so adding a command is adding a module.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from typing import List, Optional

from .. import __version__
from ..errors import MedFMError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit code 2, as argparse, but with our prefix
        self.print_usage(sys.stderr)
        self.exit(2, f"medfm: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="medfm", description="Multimodal foundation models for medicine and biology.")
    parser.add_argument("--version", action="version", version=f"medfm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # libraries' own INFO chatter (faiss's loader) stays out of the way
        for name in ("faiss", "faiss.loader", "httpx", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"medfm: error: {e}", file=sys.stderr)
        return 2
    except MedFMError as e:
        print(f"medfm: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medfm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
