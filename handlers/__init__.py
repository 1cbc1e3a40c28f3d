"""Built-in handlers and the public API for writing new ones (see `handlers.api`)."""
