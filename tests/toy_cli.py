"""Run the medfm CLI with the test-only ``toy`` modalities registered (used under torchrun)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: E402,F401  (registers "toy" and "toyb")

from medfm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
