"""python -m authproxy is the same as the authproxy console script."""

import sys

from .cli import main

sys.exit(main())
