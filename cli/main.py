"""``blackbox``: explain and optimise models you can only query.

One command table (:data:`COMMANDS`): each subcommand is a module of this package with
``add_parser(subparsers)`` and ``run(args) -> exit code``. Every error a user can act on is
printed as one line (``blackbox: error: ...``) with exit code 2; no traceback, and no partial
output file.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from blackbox.errors import BlackboxError

# command name -> module in blackbox.cli (in the order ``blackbox --help`` lists them)
COMMANDS = {
    "saliency": "saliency",
    "sample-image": "sample_image",
    "serve": "serve",
    "cache": "cache",
    "tune-prompt": "tune_prompt",
    "align": "align",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one readable line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _command(name: str):
    return importlib.import_module(f"{__package__}.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    from blackbox import __version__

    parser = _Parser(prog="blackbox", description=(
        "Explain and optimise models you can only query: saliency maps, prompt tuning and "
        "alignment from forward queries (likelihood-ratio gradients), with query budgets."),
        epilog="Run 'blackbox COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"blackbox {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        _command(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return _command(args.command).run(args)
    except BlackboxError as exc:
        print(f"blackbox: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blackbox: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
