"""The ``aegis`` command line (main.py); ``python -m bot.cli`` runs it."""
