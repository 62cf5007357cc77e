"""``python -m bot.cli``: the same as the ``aegis`` console script (one-shot commands end with the fast exit)."""

from bot.cli.main import run

run()
