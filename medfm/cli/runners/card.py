"""What ``medfm card`` runs (its parser: :mod:`medfm.cli.commands.card`)."""
from __future__ import annotations

from medfm.card import write_model_card


def run(args) -> int:
    print(write_model_card(args.model_dir))
    return 0
