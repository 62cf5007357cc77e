"""DR drills (D1, D2): isolated, scored, cleaned up; every retained backup restore-tested.

Domain only (imports recovery/ and statemachines/): the CLI, Slack and the schedule call
``recovery.drills.drills.run_drill`` with a ``DrillContext`` built from their config.
"""
