"""``python -m stird`` is the ``stird`` command."""

import sys

from stird.wiring.cli import main

sys.exit(main())
