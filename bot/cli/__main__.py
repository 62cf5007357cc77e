"""``python -m bot.cli``: the same as the ``aegis`` console script."""

import sys

from bot.cli.main import main

sys.exit(main())
