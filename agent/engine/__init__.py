"""The execution engine: acquires jobs, runs them one at a time, reports each exactly once."""
