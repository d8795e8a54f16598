"""`python -m kdiff_ztsnr …` (and `accelerate launch -m kdiff_ztsnr sample --prompt-file …`): the command line."""

import sys

from .cli import main

if __name__ == '__main__':
    sys.exit(main())
