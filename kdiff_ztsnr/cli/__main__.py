"""`python -m kdiff_ztsnr.cli …`: the command line, as the `kdiff-ztsnr` console script runs it."""

import sys

from . import main

if __name__ == '__main__':
    sys.exit(main())
