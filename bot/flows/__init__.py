"""Use cases the Slack surface and the scheduler share: the incident flows and the backup service."""
