"""Local consent: a person (or a device UI) grants or rejects a job the agent holds back for it,
through a Unix socket whose peers the kernel names (`jobs-agent consent`)."""
