"""The Slack surface: the Bolt app, the HTTP front door, slash commands, the Web API gateway, the outbox,
the backup desk."""
