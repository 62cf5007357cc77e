"""The backup stream: chunked source → zstd → AES-256-GCM → sha256 → every target (and back)."""
