"""`python -m service.cli`: the `rnnlab` command."""

import sys

from service.cli import main

sys.exit(main())
