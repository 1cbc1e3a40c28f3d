"""The layout docs/architecture.md draws, held by the code: every import arrow the document forbids
fails here (read with `ast`, TYPE_CHECKING imports and imports inside functions included), and so
does a module or a function that grew past the size a reader can hold.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"agent": "jobs_agent", "handlers": "jobs_agent_handlers"}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
LONG_MODULE_MARKER = "longer than 500 lines"
"""A module over the limit says why in its docstring, with these words."""

BACKENDS = tuple(
    f"jobs_agent.transport.{name}"
    for name in ("awscrt", "awscrt_client", "paho", "greengrass", "local", "factory")
)
PROTOCOL_CLIENTS = ("jobs_agent.jobs", "jobs_agent.shadow", "jobs_agent.streams")
"""The device's clients of AWS IoT's MQTT APIs, each over the seam (a view of the one link)."""
DEVICE_FEATURES = ("jobs_agent.consent", "jobs_agent.inventory", "jobs_agent.schedule")
"""Pieces the engine uses (issue 16), each standing on its own."""
ABOVE_THE_DEVICE = (
    "jobs_agent.daemon",
    "jobs_agent.device",
    "jobs_agent.sim",
    "jobs_agent.commands",
    "jobs_agent.cli",
)


@dataclass(frozen=True)
class Rule:
    importer: str
    forbidden: tuple[str, ...]
    why: str
    allowed: tuple[str, ...] = ()


DATAMODEL = "jobs_agent.datamodel"
"""`@model` (dataclasses with shared methods): a leaf of the standard library, below every
other leaf."""

RULES = [
    Rule(DATAMODEL, ("jobs_agent",), "the models' decorator stands on the standard library alone"),
    Rule(
        "jobs_agent.jsontext",
        ("jobs_agent",),
        "the JSON text of plain data stands on the standard library alone (engine and Jobs client)",
    ),
    Rule(
        "jobs_agent.vocabulary",
        ("jobs_agent",),
        "the vocabulary is a leaf every layer reads",
        allowed=(DATAMODEL,),
    ),
    Rule(
        "jobs_agent.transport",
        (
            *PROTOCOL_CLIENTS,
            *DEVICE_FEATURES,
            "jobs_agent.engine",
            "jobs_agent.config",
            "jobs_agent.emulator",
        ),
        "the transports (the seam, the shared link, the request/reply exchange) are below every"
        " protocol; a backend takes its own options, not the config",
    ),
    Rule(
        "jobs_agent.jobs",
        (*BACKENDS, "jobs_agent.transport.options", "jobs_agent.config", "jobs_agent.engine"),
        "the protocol talks to the seam (transport.base), never to a backend or the config",
    ),
    Rule(
        "jobs_agent.jobs",
        ("jobs_agent.dispatch", "jobs_agent.emulator", *ABOVE_THE_DEVICE),
        "the protocol serves the device and the emulator alike",
    ),
    Rule(
        "jobs_agent.shadow",
        (
            *BACKENDS,
            "jobs_agent.transport.options",
            "jobs_agent.jobs",
            "jobs_agent.streams",
            *DEVICE_FEATURES,
            "jobs_agent.config",
            "jobs_agent.engine",
            "jobs_agent.dispatch",
            "jobs_agent.emulator",
            *ABOVE_THE_DEVICE,
        ),
        "a protocol client talks to the seam only, never to another protocol or what uses it",
    ),
    Rule(
        "jobs_agent.streams",
        (
            *BACKENDS,
            "jobs_agent.transport.options",
            "jobs_agent.jobs",
            "jobs_agent.shadow",
            *DEVICE_FEATURES,
            "jobs_agent.config",
            "jobs_agent.engine",
            "jobs_agent.dispatch",
            "jobs_agent.emulator",
            *ABOVE_THE_DEVICE,
        ),
        "a protocol client talks to the seam only, never to another protocol or what uses it",
    ),
    Rule(
        "jobs_agent.schedule",
        ("jobs_agent",),
        "AWS cron and maintenance windows are a leaf the engine and the emulator both read",
        allowed=("jobs_agent.schedule", "jobs_agent.vocabulary", DATAMODEL),
    ),
    Rule(
        "jobs_agent.consent",
        (
            "jobs_agent.transport",
            *PROTOCOL_CLIENTS,
            "jobs_agent.inventory",
            "jobs_agent.schedule",
            "jobs_agent.config",
            "jobs_agent.engine",
            "jobs_agent.dispatch",
            "jobs_agent.emulator",
            *ABOVE_THE_DEVICE,
        ),
        "consent is a local boundary (a socket, decisions on disk): no link, no engine; a"
        " reason is cleaned by the statusDetails rule it will be reported under",
        allowed=("jobs_agent.jobs.status_details",),
    ),
    Rule(
        "jobs_agent.inventory",
        (
            "jobs_agent.transport",
            "jobs_agent.jobs",
            "jobs_agent.streams",
            "jobs_agent.consent",
            "jobs_agent.schedule",
            "jobs_agent.config",
            "jobs_agent.engine",
            "jobs_agent.dispatch",
            "jobs_agent.emulator",
            *ABOVE_THE_DEVICE,
        ),
        "the inventory reads its sources and reports through the shadow client it is given",
    ),
    Rule(
        "jobs_agent.engine",
        ("jobs_agent.transport", "jobs_agent.config"),
        "the engine sees the link only through the Jobs client, and reads its own settings",
    ),
    Rule(
        "jobs_agent.engine",
        ("jobs_agent.emulator", *ABOVE_THE_DEVICE),
        "the engine is assembled by the device builder, never the other way round",
    ),
    Rule(
        "jobs_agent.engine.store",
        ("jobs_agent.jobs",),
        "durable state does not depend on wire models",
    ),
    Rule(
        "jobs_agent.engine.lifecycle",
        ("jobs_agent",),
        "the lifecycle table declares states and transitions and nothing else",
    ),
    Rule(
        "jobs_agent.dispatch",
        ("jobs_agent.engine", "jobs_agent.config", "jobs_agent.transport", "jobs_agent.jobs"),
        "handlers run the same under the engine, `exec` and tests; they read their own settings",
    ),
    Rule(
        "jobs_agent_handlers",
        ("jobs_agent.engine", "jobs_agent.dispatch", "jobs_agent.config", "jobs_agent.jobs"),
        "a handler sees only the handler API (jobs_agent_handlers.api)",
    ),
    Rule(
        "jobs_agent_handlers",
        (
            *BACKENDS,
            "jobs_agent.transport.options",
            "jobs_agent.transport.shared",
            "jobs_agent.emulator",
            *ABOVE_THE_DEVICE,
        ),
        "a plugin gets the MQTT link lent through its context (a view of it), never a backend",
    ),
    Rule(
        "jobs_agent.emulator",
        (
            "jobs_agent.engine",
            "jobs_agent.dispatch",
            "jobs_agent.config",
            *ABOVE_THE_DEVICE,
        ),
        "the emulator is the service side: it never imports the device",
    ),
    Rule(
        "jobs_agent.daemon",
        ("jobs_agent.emulator", "jobs_agent.sim", "jobs_agent.commands", "jobs_agent.cli"),
        "the daemon receives its transport and never builds an emulator",
    ),
    Rule(
        "jobs_agent.config",
        (
            "jobs_agent.engine",
            "jobs_agent.dispatch",
            "jobs_agent.transport",
            "jobs_agent.jobs",
            "jobs_agent.emulator",
            *ABOVE_THE_DEVICE,
        ),
        "the configuration routes sections to the settings their owners declare, nothing more",
        allowed=(
            "jobs_agent.engine.settings",
            "jobs_agent.dispatch.settings",
            "jobs_agent.transport.options",
        ),
    ),
    Rule(
        "jobs_agent.device",
        ("jobs_agent.emulator", "jobs_agent.sim", "jobs_agent.commands", *BACKENDS),
        "the device builder receives its transport",
    ),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> list[tuple[str, Path, ast.Module]]:
    found = []
    for folder in PACKAGES:
        for path in sorted((REPO / folder).rglob("*.py")):
            found.append((_module_name(path), path, ast.parse(path.read_text(encoding="utf-8"))))
    return found


SOURCES = _sources()


def _imports(tree: ast.Module, module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.level:  # relative: resolve against the importing package
                base = module.split(".")[: -node.level]
                names.add(".".join([*base, node.module]))
            else:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("jobs_agent")}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _broken(rule: Rule) -> list[str]:
    broken = []
    for module, _path, tree in SOURCES:
        if not _within(module, rule.importer):
            continue
        for imported in sorted(_imports(tree, module)):
            if any(_within(imported, allowed) for allowed in rule.allowed):
                continue
            if _within(imported, module) or _within(module, imported):
                continue  # a package and its own modules
            if any(_within(imported, forbidden) for forbidden in rule.forbidden):
                broken.append(f"{module} -> {imported}")
    return broken


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: f"{rule.importer}")
def test_no_import_arrow_the_architecture_forbids(rule: Rule) -> None:
    assert _broken(rule) == [], rule.why


def test_the_rules_catch_a_forbidden_arrow() -> None:
    """The checker itself: an engine module importing a backend would be reported."""
    tree = ast.parse("from jobs_agent.transport.paho import PahoTransport\n")
    imported = _imports(tree, "jobs_agent.engine.example")
    engine = next(rule for rule in RULES if rule.importer == "jobs_agent.engine")
    assert any(_within(name, f) for name in imported for f in engine.forbidden)


TOP_OF_THE_STACK = {"jobs_agent.commands", "jobs_agent.sim"}
"""The CLI and the simulations may import every layer (docs/architecture.md)."""


def test_every_package_has_its_arrows() -> None:
    """A new package of the agent comes with its row in docs/architecture.md and its rule here."""
    packages = {f"jobs_agent.{path.parent.name}" for path in (REPO / "agent").glob("*/__init__.py")}
    ruled = {rule.importer for rule in RULES}
    assert packages - ruled - TOP_OF_THE_STACK == set()


def test_every_module_fits_or_says_why() -> None:
    too_long = []
    for module, path, tree in SOURCES:
        if not module.startswith("jobs_agent."):
            continue  # the limit is the agent's; handlers are plugins with their own style
        lines = len(path.read_text(encoding="utf-8").splitlines())
        docstring = ast.get_docstring(tree) or ""
        if lines > MAX_MODULE_LINES and LONG_MODULE_MARKER not in docstring:
            too_long.append(f"{module}: {lines} lines")
    assert too_long == []


def test_no_function_is_longer_than_a_screen() -> None:
    too_long = []
    for module, _path, tree in SOURCES:
        if not module.startswith("jobs_agent."):
            continue  # the limit is the agent's; handlers are plugins with their own style
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {length} lines")
    assert too_long == []
