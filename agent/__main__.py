"""``python -m agent`` is ``avi-agent``."""

import sys

from agent.cli import main

sys.exit(main())
