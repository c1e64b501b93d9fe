"""The ``medfm`` command line: one entry point, kebab-case subcommands, YAML configs.

Each module in :mod:`medfm.cli.commands` defines ``register(subparsers)``, which adds
its subcommand(s) and sets ``func=run`` with ``run(args) -> int``. They are found
automatically, so adding a command is adding a module.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from .. import __version__
from ..clock import command_started_at
from ..errors import MedFMError, UsageError
from ..limits import limits
from . import commands
from .common import limit_values


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit code 2, as argparse, but with our prefix
        self.print_usage(sys.stderr)
        self.exit(2, f"medfm: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="medfm", description="Multimodal foundation models for medicine and biology.")
    parser.add_argument("--version", action="version", version=f"medfm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


#: options checked for every command that has them (one place, so new commands get it too)
_POSITIVE_INT_OPTIONS = ("batch_size", "max_steps", "k", "knn_k", "few_shot_seeds", "flat_max", "nprobe", "ef_search")


def check_common_args(args: argparse.Namespace) -> None:
    """Usage errors argparse cannot see: ``--batch-size 0``, an ``--out`` that cannot be created."""
    for name in _POSITIVE_INT_OPTIONS:
        val = getattr(args, name, None)
        if isinstance(val, int) and not isinstance(val, bool) and val < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {val}")
    out = getattr(args, "out", None)
    if isinstance(out, str) and out:
        p = Path(out).expanduser().absolute()
        probe = p
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe == p and p.is_file():
            probe = p.parent  # a file to overwrite: its folder must take a new file
        if not probe.is_dir():
            raise UsageError(f"--out {out}: cannot be created, {probe} is a file, not a folder")
        try:  # a real write probe: permissions, read-only mounts, /proc, ... (root ignores mode bits)
            os.rmdir(tempfile.mkdtemp(prefix=".medfm-write-probe-", dir=probe))
        except OSError as e:
            raise UsageError(f"--out {out}: cannot be created in {probe}: {e.strerror or e}") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 500 else text[:497] + "..."


def main(argv: Optional[List[str]] = None) -> int:
    started_at = command_started_at(argv is not None)  # train.max_minutes counts from here
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started_at = started_at
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # libraries' own INFO chatter (faiss's loader) stays out of the way
        for name in ("faiss", "faiss.loader", "httpx", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        check_common_args(args)
        with limits(**limit_values(args)):  # --limit KEY=VALUE (commands without a config)
            return int(args.func(args) or 0)
    except UsageError as e:
        print(f"medfm: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except MedFMError as e:
        print(f"medfm: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        if getattr(e, "details", None):  # a multi-line summary (a run that learned from nothing)
            print(e.details, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medfm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a library failed in its own words: one line, the traceback only with -v
        if args.verbose:
            raise
        where = ""
        filename = getattr(e, "filename", None)
        if filename:
            where = f" ({filename})"
        print(f"medfm: {type(e).__name__}{where}: {_one_line(e)} (run with -v for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
