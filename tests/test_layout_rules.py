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
