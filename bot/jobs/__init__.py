"""Scheduled work: the scheduler (leader only), the leader lock, fire claims, the job registry and the jobs."""
