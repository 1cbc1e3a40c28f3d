"""Simulations that put the real device next to the emulator: the fleet simulator (`sim fleet`),
the demo, and the embedded emulator behind `transport: local`.

The one package allowed to import both the emulator and the device (docs/architecture.md): the
emulator never imports the engine, and the daemon never builds an emulator.
"""

DEFAULT_HTTP_PORT = 8765
"""Where the emulator's HTTP APIs listen unless told otherwise (`sim serve`, `transport: local`)."""
DEFAULT_ENDPOINT = f"http://127.0.0.1:{DEFAULT_HTTP_PORT}"
