"""The test harness: real servers and the helpers several test modules share.

Test modules import from here, never from each other (tests/test_layout_rules.py checks it), and
bench/ uses it too. Real servers: pgcluster (PostgreSQL 15 clusters), neo4j_server, storage_servers
(moto S3, Azurite), milvus_server, aegis_process (``aegis serve`` as a process); reading Slack:
slack_reading; shared helpers: team (roster and base config), concurrency, signing (signed HTTP to
the front door), flows_harness (the flows in-process), walk (a team walking an incident through
Slack), message_samples (realistic views and one of every message), cli_workspace (the ``aegis``
CLI against a shared catalog), milvus_data and neo4j_data (sample data and comparisons).

Their asserts are rewritten by pytest like a test module's (tests/__init__.py registers them).
"""
