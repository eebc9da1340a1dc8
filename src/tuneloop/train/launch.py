"""Entry point for each process under torchrun: `python -m tuneloop.train.launch CONFIG [key=value ...]`."""

from __future__ import annotations

import sys

from tuneloop.config import load_config
from tuneloop.train.config import TrainConfig
from tuneloop.train.logs import setup_logging
from tuneloop.train.recipe import run


def _record(
    fn,
):  # torchrun's error file: its failure summary then names the root cause, not just the exit code
    try:
        from torch.distributed.elastic.multiprocessing.errors import record
    except ImportError:  # pragma: no cover
        return fn
    return record(fn)


@_record
def main(argv: list[str]) -> None:
    config = argv[0] if argv and argv[0] not in ("-", "") and "=" not in argv[0] else None
    overrides = argv[1:] if config else [a for a in argv if a not in ("-", "")]
    cfg = load_config(TrainConfig, config, overrides)
    setup_logging()
    run(cfg)


if __name__ == "__main__":
    from tuneloop.errors import TuneloopError

    try:
        main(sys.argv[1:])
    except TuneloopError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
