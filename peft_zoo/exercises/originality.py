"""Refuse a challenge answered with peft_zoo's own implementation or the reference answer.

``from peft_zoo import LoRALinear`` in challenge 01 passes every property of the grader:
the grader compares against an identical implementation. So before grading, the objects a
challenge asks for (``Challenge.objects``) must be the learner's own:

- statically (the file's AST): no import of those names from ``peft_zoo`` or a submodule, no
  attribute access such as ``pz.LoRALinear`` / ``peft_zoo.injection.inject.inject_lora`` on a name bound
  to a peft_zoo import, no import of ``solutions`` and no path into ``solutions/``;
- at runtime (after import): each object is defined in the learner's module, and no class in
  its MRO comes from ``peft_zoo`` or from another copy of a challenge file.

Other peft_zoo pieces stay usable (challenge 05 builds on ``inject_lora`` and
``BottleneckAdapter``); only the challenge's own objects must be written by the learner.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

from .grading import LearnerLoadError

LIBRARY = "peft_zoo"
GRADED_PREFIX = "_peft_zoo_graded_"
_SOLUTIONS_TEXT = re.compile(r"(^|[/\\.])solutions($|[/\\.])")


class ShortcutError(LearnerLoadError):
    """The learner's file re-exports, wraps or subclasses the library's (or the reference) answer."""


def _is_library(module: str) -> bool:
    return module == LIBRARY or module.startswith(LIBRARY + ".")


def _is_solutions(module: str) -> bool:
    return module == "solutions" or module.startswith("solutions.")


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def static_shortcuts(source: str, objects: Sequence[str]) -> list[str]:
    """Lines of ``source`` that take the challenge's ``objects`` from peft_zoo or solutions/."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []  # the import reports it
    own, problems = set(objects), []
    aliases: set[str] = set()  # names bound to peft_zoo modules or objects
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_solutions(alias.name):
                    problems.append(f"line {line} imports {alias.name}")
                elif _is_library(alias.name):
                    aliases.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and not node.level:
            module = node.module or ""
            if _is_solutions(module):
                problems.append(f"line {line} imports from {module}")
            elif _is_library(module):
                for alias in node.names:
                    if alias.name in own or (alias.name == "*" and _star_exports(module) & own):
                        problems.append(f"line {line} imports {alias.name} from {module}")
                    else:
                        aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
            if GRADED_PREFIX in text or (_SOLUTIONS_TEXT.search(text) and not re.search(r"\s", text)):
                problems.append(f"line {line} refers to the reference answers ({node.value!r:.60})")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in own and _root(node.value) in aliases:
            problems.append(f"line {node.lineno} uses {ast.unparse(node)}")
    return problems


def _star_exports(module: str) -> set[str]:
    try:
        imported = __import__(module, fromlist=["*"])
    except Exception:  # an unknown module: the import itself reports it
        return set()
    return set(getattr(imported, "__all__", dir(imported)))


def _foreign(module_name: str, own_module: str, solutions: Path | None) -> bool:
    """Whether a class or function from ``module_name`` is not the learner's own work."""
    if module_name == own_module:
        return False
    if _is_library(module_name) or _is_solutions(module_name) or module_name.startswith(GRADED_PREFIX):
        return True
    loaded = sys.modules.get(module_name)
    file = getattr(loaded, "__file__", None)
    if solutions is not None and file:
        try:
            Path(file).resolve().relative_to(solutions.resolve())
            return True
        except ValueError:
            return False
    return False


def runtime_shortcuts(module: ModuleType, objects: Iterable[str], solutions: Path | None = None) -> list[str]:
    """The challenge's objects that are not defined in ``module`` (or derive from peft_zoo)."""
    problems = []
    for name in objects:
        obj = getattr(module, name, None)
        if obj is None:
            continue  # require() reports a missing name
        origin = getattr(obj, "__module__", None)
        if not isinstance(origin, str) or origin != module.__name__:
            problems.append(f"{name} comes from {origin or type(obj).__name__}, not from your file")
            continue
        for base in getattr(obj, "__mro__", ())[1:]:
            if _foreign(base.__module__, module.__name__, solutions):
                problems.append(f"{name} subclasses {base.__module__}.{base.__qualname__}")
                break
    return problems


def check_own_work(
    module: ModuleType, path: Path, objects: Sequence[str], *, solutions: Path | None = None
) -> None:
    """Raise :class:`ShortcutError` when ``objects`` in ``module`` are not the learner's own code."""
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        source = ""
    problems = static_shortcuts(source, objects) + runtime_shortcuts(module, objects, solutions)
    if problems:
        names = ", ".join(objects)
        raise ShortcutError(
            f"shortcut refused: {path.name} must implement {names} itself, not re-export, wrap or "
            f"subclass peft_zoo's own (or the reference answer): {'; '.join(dict.fromkeys(problems))}"
        )


__all__ = ["ShortcutError", "check_own_work", "runtime_shortcuts", "static_shortcuts"]
