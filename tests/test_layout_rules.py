"""The layout's import rules, read from the source with ``ast`` (module- and function-level imports).

Each rule names the files it covers and the modules they must not import; a failure lists every
offending ``path:line imports module``. Relative imports are resolved against the importing
module, and ``from package import name`` counts as importing ``package.name`` (it may be a module).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AEGIS_PACKAGES = ("bot", "recovery", "statemachines", "messages", "slack_emulator", "tests", "bench")
# the built-in Slack (issue 8's layout: its own top-level package, out of bot/)
EMULATOR_PACKAGES = ("slack_emulator",)
PRODUCT_PACKAGES = ("bot", "statemachines", "recovery", "messages", "slack_emulator")
# shared by the command modules; every other bot/cli module but main is a command
CLI_HELPERS = ("bot.cli.checks", "bot.cli.common")


@dataclass(frozen=True)
class Imported:
    path: Path
    line: int
    module: str

    def __str__(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line} imports {self.module}"


def module_name(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports_in(path: Path, name: list[str] | None = None) -> Iterator[Imported]:
    """Every module ``path`` (module ``name``) imports, wherever the statement is (module level, function, class)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = name if name is not None else module_name(path)
    package = name if path.name == "__init__.py" else name[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Imported(path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            yield Imported(path, node.lineno, source)
            for alias in node.names:
                if alias.name != "*":
                    yield Imported(path, node.lineno, f"{source}.{alias.name}")


def python_files(*relative: str) -> list[Path]:
    found: list[Path] = []
    for rel in relative:
        base = ROOT / rel
        found += [base] if base.is_file() else sorted(base.rglob("*.py"))
    return found


def within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def is_test_module(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "tests" and any(p.startswith("test_") for p in parts[1:])


def is_aegis(module: str) -> bool:
    return module.split(".")[0] in AEGIS_PACKAGES


@dataclass(frozen=True)
class Rule:
    name: str
    files: Callable[[], list[Path]]
    forbidden: Callable[[Path, str], bool]   # (importing file, imported module) -> breaks the rule


def files_of_test_modules() -> list[Path]:
    return [p for p in python_files("tests") if p.name.startswith("test_")]


def emulator_files() -> list[Path]:
    return [p for pkg in EMULATOR_PACKAGES if (ROOT / pkg).is_dir() for p in python_files(pkg)]


def starts_emulator(path: Path) -> bool:
    return path == ROOT / "bot" / "runtime.py" or path.is_relative_to(ROOT / "bot" / "cli")


def cli_commands() -> set[str]:
    cli = ROOT / "bot" / "cli"
    return {f"bot.cli.{p.stem}" for p in cli.glob("*.py")} - {"bot.cli.__init__", "bot.cli.__main__", "bot.cli.main",
                                                              *CLI_HELPERS}


def imports_a_cli_command(path: Path, module: str) -> bool:
    return path != ROOT / "bot" / "cli" / "main.py" and within(module, *cli_commands())


def outside_own_emulator(path: Path, module: str) -> bool:
    own = next(".".join(pkg.split("/")) for pkg in EMULATOR_PACKAGES if path.is_relative_to(ROOT / pkg))
    return is_aegis(module) and not within(module, own)


RULES = [
    Rule("a test module imports no other test module", files_of_test_modules,
         lambda _path, module: is_test_module(module)),
    Rule("the harness and conftest import no test module",
         lambda: [p for p in python_files("tests") if not p.name.startswith("test_")],
         lambda _path, module: is_test_module(module)),
    Rule("bench imports nothing of tests/ but the harness", lambda: python_files("bench"),
         lambda _path, module: within(module, "tests") and not within(module, "tests.harness")),
    Rule("messages imports nothing of bot, recovery or statemachines", lambda: python_files("messages"),
         lambda _path, module: within(module, "bot", "recovery", "statemachines")),
    Rule("statemachines imports nothing of bot, recovery or messages", lambda: python_files("statemachines"),
         lambda _path, module: within(module, "bot", "recovery", "messages")),
    Rule("recovery imports nothing of bot or messages", lambda: python_files("recovery"),
         lambda _path, module: within(module, "bot", "messages")),
    Rule("the Slack emulator imports no Aegis module outside itself", emulator_files, outside_own_emulator),
    Rule("bot imports only bot, statemachines, recovery, messages and the emulator", lambda: python_files("bot"),
         lambda _path, module: is_aegis(module) and not within(module, *PRODUCT_PACKAGES)),
    Rule("only bot/runtime.py and the CLI start the emulator", lambda: python_files("bot"),
         lambda path, module: within(module, "slack_emulator") and not starts_emulator(path)),
    Rule("a CLI command module is imported only by bot/cli/main.py",
         lambda: python_files(*PRODUCT_PACKAGES, "tests", "bench"), imports_a_cli_command),
    Rule("the CLI's helpers (bot/cli/checks.py, common.py) are imported only within bot/cli",
         lambda: python_files(*PRODUCT_PACKAGES, "tests", "bench"),
         lambda path, module: within(module, *CLI_HELPERS) and not path.is_relative_to(ROOT / "bot" / "cli")),
]

def broken(rule: Rule) -> list[str]:
    files = rule.files()
    assert files, f"{rule.name}: the rule covers no file (a moved package?)"
    bad = {i for path in files for i in imports_in(path) if rule.forbidden(path, i.module)}
    # `from a.b import c` yields a.b and a.b.c: name the statement once, by its shortest forbidden module
    shortest = {i for i in bad if not any(o.path == i.path and o.line == i.line and within(i.module, o.module)
                                          and o.module != i.module for o in bad)}
    return [str(i) for i in sorted(shortest, key=lambda i: (str(i.path), i.line, i.module))]


@pytest.mark.parametrize("rule", [
    pytest.param(rule, id=rule.name)
    for rule in RULES
])
def test_import_rule_holds(rule: Rule) -> None:
    offenders = broken(rule)
    assert not offenders, f"{rule.name} — broken by:\n  " + "\n  ".join(offenders)


def test_the_reader_sees_function_level_relative_and_from_package_imports(tmp_path: Path) -> None:
    """The rules are only as good as the reader: it must see the imports a rule could miss."""
    module = tmp_path / "probe.py"
    module.write_text(
        "from . import walk\n"
        "from .. import test_races as r\n"
        "def later():\n"
        "    import bot.config\n"
        "    from messages.render import render\n"
        "class Lazy:\n"
        "    def m(self):\n"
        "        from tests import test_messages\n"
    )
    found = {(i.line, i.module) for i in imports_in(module, ["tests", "harness", "probe"])}
    assert {(1, "tests.harness.walk"), (2, "tests.test_races"), (4, "bot.config"),
            (5, "messages.render.render"), (8, "tests.test_messages")} <= found, found
    assert is_test_module("tests.test_races") and not is_test_module("tests.harness.walk")


# --- module-level import graph: cycles and private names -----------------------------------------

def module_file(module: str) -> Path | None:
    """The file of an Aegis module (``a.b`` → a/b.py or a/b/__init__.py), None for a name inside one."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def load_time_imports(path: Path) -> set[str]:
    """The Aegis modules ``path`` imports when it is loaded: module level, ``if TYPE_CHECKING:`` left out.

    Function-level imports run later (they are how a lazy import breaks a load-time cycle on purpose)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name[:-1]
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If):
                if not is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
            elif isinstance(node, ast.Import | ast.ImportFrom):
                for imported in imports_in_node(node, package):
                    # `from a import b`: the module a.b if it is one, else the module a
                    target = imported if module_file(imported) else imported.rpartition(".")[0]
                    if is_aegis(target) and module_file(target) and not target.endswith("__init__"):
                        found.add(target)

    visit(tree.body)
    found.discard(".".join(name))
    return found


def imports_in_node(node: ast.Import | ast.ImportFrom, package: list[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = package[:len(package) - (node.level - 1)]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    return [source] + [f"{source}.{alias.name}" for alias in node.names if alias.name != "*"]


def product_graph() -> dict[str, set[str]]:
    graph = {}
    for path in python_files(*PRODUCT_PACKAGES):
        graph[".".join(module_name(path))] = {m for m in load_time_imports(path) if within(m, *PRODUCT_PACKAGES)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module, as one cycle through it (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [cycle_through(graph, sorted(c)) for c in components]


def cycle_through(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One path start → … → start inside the component, to print."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return component


def test_no_import_cycle_among_product_modules() -> None:
    found = cycles(product_graph())
    assert not found, "import cycles (module-level imports):\n  " + "\n  ".join(" → ".join(c) for c in found)


def private_imports(path: Path) -> list[str]:
    """``from aegis.module import _name`` (or ``import aegis._module``) from another module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path)[:-1]
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import):
            names = imports_in_node(node, package)
            for module in names:
                parts = module.split(".")
                if is_aegis(module) and any(p.startswith("_") and not p.startswith("__") for p in parts):
                    shown = path.relative_to(ROOT)
                    bad.append(f"{shown}:{node.lineno} imports {module}")
    return bad


def test_no_private_name_is_imported_from_another_module() -> None:
    bad = [b for path in python_files(*PRODUCT_PACKAGES, "bench", "tests") for b in private_imports(path)]
    assert not bad, "private names imported from another module:\n  " + "\n  ".join(bad)


def test_the_cycle_finder_and_the_load_time_reader(tmp_path: Path) -> None:
    """A cycle is reported with its path; TYPE_CHECKING and function-level imports are not load-time edges."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    probe = ROOT / "bot" / "flows" / "backup.py"   # imports the runner at load time, retention only for types
    imported = load_time_imports(probe)
    assert "recovery.backup.runner" in imported and "recovery.backup.retention" not in imported, imported


# --- one module moves an incident (issue 8): transitions are fired only by the use cases ---------

SERVICE_MODULE = "statemachines.service"
MAY_TRANSITION = ("statemachines/service.py", "statemachines/usecases.py")


def transition_calls(path: Path) -> list[str]:
    """Calls of the service's ``transition``: ``svc.transition(…)`` on any name the service module is
    imported as, ``statemachines.service.transition(…)``, or a ``transition`` imported from it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path) if path.is_relative_to(ROOT) else [path.stem]
    package = name if path.name == "__init__.py" else name[:-1]
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    modules: set[str] = set()      # local names bound to the service module
    functions: set[str] = set()    # local names bound to service.transition
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.asname for alias in node.names if alias.name == SERVICE_MODULE and alias.asname}
        elif isinstance(node, ast.ImportFrom):
            source = imports_in_node(node, package)[0] if node.level else node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" == SERVICE_MODULE:
                    modules.add(alias.asname or alias.name)
                elif source == SERVICE_MODULE and alias.name == "transition":
                    functions.add(alias.asname or alias.name)
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "transition" and (
                (isinstance(func.value, ast.Name) and func.value.id in modules)
                or ast.unparse(func.value) == SERVICE_MODULE):
            bad.append(f"{shown}:{node.lineno}")
        elif isinstance(func, ast.Name) and func.id in functions:
            bad.append(f"{shown}:{node.lineno}")
    return bad


def test_only_the_use_cases_fire_transitions() -> None:
    """bot/ and recovery/ move an incident through statemachines/usecases.py, never by a transition of their own."""
    allowed = {ROOT / p for p in MAY_TRANSITION}
    bad = [b for path in python_files(*PRODUCT_PACKAGES, "bench") if path not in allowed
           for b in transition_calls(path)]
    assert not bad, "service.transition called outside statemachines/usecases.py:\n  " + "\n  ".join(bad)
    assert transition_calls(ROOT / "statemachines" / "usecases.py"), "the reader no longer sees the use cases' call"


def test_the_transition_reader_sees_every_spelling(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from statemachines import service as svc\n"
        "import statemachines.service\n"
        "import statemachines.service as s2\n"
        "from statemachines.service import transition as fire\n"
        "def f(session):\n"
        "    svc.transition(session, incident_id=1, trigger='verify', actor=None)\n"
        "    statemachines.service.transition(session)\n"
        "    s2.transition(session)\n"
        "    fire(session)\n"
        "    svc.tell_transition(session, None)\n"
        "    machine.transition(1)\n"
    )
    assert [line.rsplit(":", 1)[1] for line in transition_calls(probe)] == ["6", "7", "8", "9"]
