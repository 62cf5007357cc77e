"""WAL: push/fetch for archive_command/restore_command, the archive on the targets, streaming, sequences."""
