"""Shared command-line plumbing for the tools: logging set-up and config loading with overrides."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from semisam.config.loader import load_config
from semisam.config.schema import RunConfig

OVERRIDES_HELP = (
    "config overrides as key=value (dotted keys, OmegaConf syntax), e.g. data.root=../shared/data/ACDC "
    "schedule.iterations=2000 'data.image_size=[128,128]'. Unknown keys and wrong types are errors."
)


def tool_parser(doc: str) -> argparse.ArgumentParser:
    """A tool's argument parser: the first paragraph of its docstring as description, the rest as epilog."""
    description, _, epilog = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr with timestamps; tqdm bars and log lines do not garble each other.

    Under torchrun (``RANK`` set), ranks other than 0 log warnings and errors only, tagged with their rank."""
    rank = int(os.environ.get("RANK", "0"))
    numeric = getattr(logging, level.upper())
    logging.basicConfig(
        level=max(numeric, logging.WARNING) if rank else numeric,
        format=f"%(asctime)s %(levelname)s %(name)s{f' [rank {rank}]' if rank else ''}: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def add_common_arguments(parser: argparse.ArgumentParser, config_required: bool = True) -> None:
    parser.add_argument(
        "--config",
        action="append",
        required=config_required,
        help="a YAML run config, e.g. configs/acdc/7_supervised.yaml; repeat to merge several in order "
        "(later wins), e.g. --config configs/acdc/7_supervised.yaml --config configs/schedule/cpu.yaml",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.overrides)


def run_main(main) -> None:
    """Run a tool's main, turning expected errors (bad config, bad data, bad checkpoint) into one clear line
    and exit status 2 instead of a traceback."""
    from semisam.config.schema import ConfigError
    from semisam.data.errors import DataError
    from semisam.student.checkpoint import CheckpointError
    from semisam.teacher.cache import CacheError
    from semisam.teacher.errors import TeacherError

    try:
        main()
    except (ConfigError, DataError, CheckpointError, CacheError, TeacherError) as err:
        logging.getLogger("semisam").error("%s: %s", type(err).__name__, err)
        sys.exit(2)
