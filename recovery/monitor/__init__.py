"""Continuous monitoring (M1-M3): checks and their samples, risk rules, the monitor loop, its state.

Pure domain code: it imports only ``recovery`` and ``statemachines`` and returns plain data; the
bot turns what it finds into Slack messages and incidents.
"""
