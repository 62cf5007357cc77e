"""The figures the report pages and ``/metrics`` show, read from the store (no Slack, no HTTP)."""
