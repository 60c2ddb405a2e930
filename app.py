"""The dtrec demo from a checkout, and the Hugging Face Space's entry point: `dtrec serve` with this
folder's assets/demo as the default demo. The UI itself is the package's (`dtrec.app`); `python app.py
--help` lists the flags."""

import os
import sys
from pathlib import Path

# A Space variable DTREC_DEMO (or the --demo flag) still names another demo.
os.environ.setdefault("DTREC_DEMO", str(Path(__file__).resolve().parent / "assets" / "demo"))

from dtrec.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
