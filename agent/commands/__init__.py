"""One module per `jobs-agent` sub-command; see `agent.cli`."""
