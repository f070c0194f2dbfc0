"""``python -m stird`` is the ``stird`` command."""

import sys

from stird.cli import main

sys.exit(main())
