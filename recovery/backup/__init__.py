"""Backups as streams: source → zstd → AES-256-GCM in chunks → sha256 → every storage target at once."""
