"""``/reports/`` (read-only pages behind a signed link or basic auth) and publishing a drill's report."""
