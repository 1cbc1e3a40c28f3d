"""Time on the device: AWS cron expressions and maintenance windows (pure functions, no I/O)."""
