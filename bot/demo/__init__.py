"""The demo workspace of the embedded default (``aegis serve`` with no Slack credentials and no config).

- ``config``: the shipped demo config (``demo.yaml``: a roster of the emulator's users, a local storage
  target with a key generated once into the data directory, two sample services), filled in for this run.
- ``postgres``: with ``--demo`` and PostgreSQL server binaries on the machine, a local primary with a
  streaming standby on free ports (run as the current user, or as ``postgres`` when running as root).
- ``service``: a tiny HTTP service reading from the primary (the demo's ``orders-api``).
- ``session``: starts and stops all of it; a killed demo's leftovers go at the next ``--demo`` start.
"""
