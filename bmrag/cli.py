"""``bmrag`` command line: one small ``_add_<command>`` function per sub-command; work is done in library modules."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence


def _offline_defaults() -> None:
    # No outbound lookups unless the user asked for them (see docs/offline.md).
    for key, value in {"HF_HUB_DISABLE_TELEMETRY": "1", "ANONYMIZED_TELEMETRY": "False",
                       "GRADIO_ANALYTICS_ENABLED": "False", "RAGAS_DO_NOT_TRACK": "true"}.items():
        os.environ.setdefault(key, value)


# ------------------------------------------------------------------------------------- sub-commands
# (each helper adds its own _add_<command>(sub) below and registers it in COMMANDS)


COMMANDS: list = []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bmrag", description="BMRetriever biomedical retrieval and QA")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _offline_defaults()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError, OSError, TypeError) as err:
        print(f"bmrag {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
