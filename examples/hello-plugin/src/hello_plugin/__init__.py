"""An example jobs-agent plugin (see docs/handlers.md)."""
