"""Modules a library imports at its top but the daemon never uses, loaded at their first use.

paho's client imports `urllib.request` for one thing: reading a proxy from the environment when
PySocks is installed (`Client._get_proxy`, which returns at once without it). That import
brings `http.client`, the `email` parser, `tempfile`, `shutil`, `bz2` and `lzma`: 42 M of the
550 M instructions a paho agent runs to its first request, and 2.1 MB of its resident memory
for its whole life (issue 18). The daemon puts a stand-in under the name first, which the
import statement takes as the module; the first read of any of its names (a proxy lookup, a
plugin's `from urllib.request import urlopen`) imports the real module and gives the stand-in
its names, so every later reader sees the real module's. The same for `structlog.threadlocal`
(deprecated), which structlog's package imports for its name alone, and `ipaddress`, which
`urllib.parse` (through `pathlib`) imports for a bracketed host: 5.5 M instructions and 0.2 MB
more.

`importlib.util.LazyLoader` would be the library's way, but the import statement reads the
module's `__spec__` to check that it is not half-initialised, and a lazy module loads at that
first read (CPython 3.11), so it would load at paho's import as before.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from typing import Any

_loading = threading.Lock()


class _Deferred(types.ModuleType):
    """Stands in `sys.modules` for a module not loaded yet; its first missing name loads it."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name != "__all__":
            # what a not-loaded module lacks (`__file__`, `__path__`), as a scan of sys.modules
            # (`inspect.getmodule`) asks it: not a use of the module
            raise AttributeError(name)
        with _loading:  # a second thread waits for the first's import, then reads the names
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
                real = importlib.import_module(self.__name__)
                self.__dict__.update(vars(real))
        return getattr(sys.modules[self.__name__], name)


UNUSED = (
    "urllib.request",
    "ipaddress",
    "structlog.threadlocal",
)
"""What `jobs-agent run` loads only at a first use (`cli.main`, before anything imports them)."""


def defer(*names: str) -> None:
    """Load each module of `names` at the first read of one of its names, not at its import;
    nothing for one loaded already. Every stand-in is in place before a package is imported
    (structlog's own import takes its stand-ins for its names)."""
    placed = [name for name in names if name not in sys.modules]
    for name in placed:
        sys.modules[name] = _Deferred(name)
    for name in placed:
        package, _, child = name.rpartition(".")
        if package:
            setattr(importlib.import_module(package), child, sys.modules[name])
