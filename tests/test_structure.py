"""The house rules of the package layout (docs/architecture.md), checked on the source.

- no module imports a private (``_name``) object of another module;
- no import cycle between modules, deferred imports (inside functions, under
  ``TYPE_CHECKING``) included;
- rooms only import downwards: ``core`` < methods < ``models`` / ``injection`` <
  ``cost`` / ``interop`` < ``serving`` < ``cli`` / ``exercises``, and nothing in the library
  imports ``exercises`` or the command line;
- no hand-written file over 400 lines, no function over 60 lines (the generated stubs and
  answers are excluded: the builder writes them from the exercise sources, which are checked);
- the README's layout map names every module of the package.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "peft_zoo"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60

# Which rooms each room may import (its own room is always allowed). "methods" are the
# modules at the top of the package, one paper per file; a new top-level file is a method.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "testing": {"core"},
    "methods": {"core"},
    "models": {"core", "methods"},
    "injection": {"core", "methods"},
    "cost": {"core", "methods", "injection", "models"},
    "interop": {"core", "methods", "injection"},
    "serving": {"core", "methods", "injection", "interop"},
    "root": {"core", "methods", "models", "injection", "cost", "interop", "serving", "testing"},
    "cli": {
        "core",
        "methods",
        "models",
        "injection",
        "cost",
        "interop",
        "serving",
        "testing",
        "exercises",
        "root",
    },
    "exercises": {"core", "methods", "models", "injection", "cost", "interop", "serving", "testing", "root"},
}
TOP_LEVEL_NOT_METHODS = {"__init__": "root", "__main__": "cli", "testing": "testing"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if len(parts) == 2 and not (PACKAGE / parts[1]).is_dir():
        return TOP_LEVEL_NOT_METHODS.get(parts[1], "methods")
    return parts[1]


def library_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "source" not in p.relative_to(PACKAGE).parts)


@dataclass(frozen=True)
class Import:
    importer: str
    line: int
    module: str  # absolute module named by the statement
    names: tuple[str, ...]  # names imported from it ("" for a plain ``import module``)


def imports_of(path: Path) -> list[Import]:
    """Every import statement of the file, at any depth (deferred ones included)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append(Import(me, node.lineno, target, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Import):
            found.extend(Import(me, node.lineno, a.name, ("",)) for a in node.names)
    return found


def all_modules() -> set[str]:
    return {module_name(p) for p in library_files()}


def edges() -> dict[str, set[str]]:
    """module -> the package modules its statements import (a name that is itself a module
    counts as that module; the parent packages Python runs on the way are not counted)."""
    modules = all_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for path in library_files():
        for imp in imports_of(path):
            if not imp.module.startswith("peft_zoo"):
                continue
            for name in imp.names:
                sub = f"{imp.module}.{name}"
                target = sub if sub in modules else imp.module
                if target != imp.importer:
                    graph[imp.importer].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def python_sources() -> list[Path]:
    """Hand-written Python: the library (not the exercise sources' generated copies), the
    graders, the tests, benchmarks, examples and notebook tooling."""
    files = [*library_files()]
    files += sorted((ROOT / "practice").glob("*/test_*.py")) + sorted(
        (ROOT / "practice").glob("*/conftest.py")
    )
    for folder in ("tests", "benchmarks", "examples", "notebooks"):
        files += sorted((ROOT / folder).glob("*.py"))
    return files


# ----------------------------------------------------------------------------- the checker


def test_the_checker_finds_cycles_and_ignores_chains() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_checker_sees_deferred_and_relative_imports(tmp_path: Path) -> None:
    source = "def f():\n    from ..core.checks import check_bool\n    from . import _secret\n"
    path = PACKAGE / "serving" / "example.py"
    found = imports_of_text(source, path)
    assert ("peft_zoo.core.checks", ("check_bool",)) in found
    assert ("peft_zoo.serving", ("_secret",)) in found


def imports_of_text(source: str, path: Path) -> list[tuple[str, tuple[str, ...]]]:
    me = module_name(path)
    package = me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            out.append(
                (".".join(base + ([node.module] if node.module else [])), tuple(a.name for a in node.names))
            )
    return out


def test_rooms_are_what_the_layout_says() -> None:
    assert room_of("peft_zoo.lora") == "methods"
    assert room_of("peft_zoo.core.checks") == "core"
    assert room_of("peft_zoo.exercises.runner.commands") == "exercises"
    assert room_of("peft_zoo") == "root"
    assert room_of("peft_zoo.testing") == "testing"


# ----------------------------------------------------------------------------- the rules


def test_no_module_imports_another_modules_private_names() -> None:
    """Checked in the library and everywhere that uses it (tests, graders, benchmarks)."""
    offences = []
    for path in python_sources():
        try:
            found = imports_of(path)
        except ValueError:  # a file outside ROOT's package naming (cannot happen today)
            continue
        for imp in found:
            if not imp.module.startswith("peft_zoo"):
                continue
            private = [n for n in imp.names if n.startswith("_") and n != "__version__"]
            private += [
                p for p in imp.module.split(".") if p.startswith("_") and p not in ("__init__", "__main__")
            ]
            if private:
                offences.append(f"{path.relative_to(ROOT)}:{imp.line} imports {private} from {imp.module}")
    assert not offences, "private names imported across modules:\n" + "\n".join(offences)


def private_attribute_uses(path: Path, modules: set[str]) -> list[str]:
    """``module._name`` where ``module`` is a package module bound by an import statement
    (``import peft_zoo.sharing``, ``from peft_zoo.interop import checkpoint as ckpt``)."""
    tree = ast.parse(path.read_text(), str(path))
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound.update(
                a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("peft_zoo")
            )
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("peft_zoo"):
            bound.update(a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in modules)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.append(f"{where}:{node.lineno} uses {ast.unparse(node)}")
    return found


def test_no_module_reaches_a_private_name_through_a_module_object(tmp_path: Path) -> None:
    modules = all_modules()
    offences = [o for path in python_sources() for o in private_attribute_uses(path, modules)]
    assert not offences, "private names used across modules:\n" + "\n".join(offences)
    planted = tmp_path / "planted.py"
    planted.write_text("import peft_zoo.sharing\n\npeft_zoo.sharing._helper = None\n")
    assert private_attribute_uses(planted, modules), "the check must catch a planted offence"


def test_no_import_cycles_deferred_ones_included() -> None:
    found = cycles(edges())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_rooms_only_import_downwards() -> None:
    offences = []
    for importer, targets in sorted(edges().items()):
        mine = room_of(importer)
        for target in sorted(targets):
            theirs = room_of(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                offences.append(f"{importer} ({mine}) imports {target} ({theirs})")
    assert not offences, "imports against the layer order (docs/architecture.md):\n" + "\n".join(offences)


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}() is {length} lines")
    return out


def test_no_file_over_400_lines_and_no_function_over_60() -> None:
    offences = []
    for path in python_sources():
        lines = path.read_text().count("\n")
        if lines > MAX_FILE_LINES:
            offences.append(f"{path.relative_to(ROOT)} is {lines} lines")
        offences += long_functions(path)
    assert not offences, "split these:\n" + "\n".join(offences)


def test_the_exercise_sources_are_held_to_the_same_sizes() -> None:
    """The generated stubs and answers are excluded above; their one source is not."""
    offences = []
    for path in sorted((PACKAGE / "exercises" / "source").rglob("*.py")):
        lines = path.read_text().count("\n")
        if lines > MAX_FILE_LINES:
            offences.append(f"{path.relative_to(ROOT)} is {lines} lines")
        offences += long_functions(path)
    assert not offences, "split these:\n" + "\n".join(offences)


@pytest.mark.parametrize("offence", ["private", "cycle", "upward"])
def test_each_rule_fails_on_a_planted_offence(offence: str) -> None:
    """The rules above are not vacuous: each one rejects a graph that breaks it."""
    graph = {m: set(t) for m, t in edges().items()}
    if offence == "cycle":
        graph["peft_zoo.core.checks"].add("peft_zoo.lora")
        assert cycles(graph)
    elif offence == "upward":
        assert "peft_zoo.serving" not in ALLOWED[room_of("peft_zoo.lora")]
        assert room_of("peft_zoo.serving.bank") == "serving"
    else:
        found = imports_of_text("from ..core.checks import _private_helper\n", PACKAGE / "lora.py")
        assert any(n.startswith("_") for _, names in found for n in names)


def test_the_readme_layout_map_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Layout\n.*?```\n(.*?)```", readme, re.S)
    assert block, "README.md has no '## Layout' section with a code block"
    text = block.group(1)
    missing = []
    for path in library_files():
        rel = path.relative_to(PACKAGE)
        if rel.name in ("__init__.py", "__main__.py"):
            continue
        if rel.name not in text:
            missing.append(str(rel))
    for folder in sorted(p.parent for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE):
        if f"{folder.name}/" not in text:
            missing.append(f"{folder.name}/")
    assert not missing, f"README.md's layout map does not mention: {missing}"
