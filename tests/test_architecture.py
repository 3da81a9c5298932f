"""The package's floor plan: imports run one way, the engine stays free of the UI and of its own CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("pimoe", "studio", "app_pages")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _project_modules() -> dict[str, Path]:
    modules = {}
    for package in PROJECT_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            modules[_module_name(path)] = path
    modules["app"] = ROOT / "app.py"
    return modules


def _imported_names(path: Path, module: str, modules: dict[str, Path]) -> set[str]:
    """Every module named by an import anywhere in the file, function-level imports included."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from pkg import sub` imports the submodule; `from mod import name` imports mod.
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return names


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (a `from pkg import sub` counts as importing pkg.sub)."""
    modules = _project_modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = {target for target in _imported_names(path, name, modules) if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_project_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def _engine_imports() -> dict[str, set[str]]:
    modules = _project_modules()
    return {name: _imported_names(path, name, modules) for name, path in modules.items() if name.startswith("pimoe")}


@pytest.mark.parametrize("forbidden", ["streamlit", "plotly", "studio", "app_pages"])
def test_engine_never_imports_the_ui(forbidden):
    offenders = {name for name, imported in _engine_imports().items()
                 if any(target == forbidden or target.startswith(forbidden + ".") for target in imported)}
    assert not offenders, f"{sorted(offenders)} import {forbidden}"


def test_engine_never_imports_its_cli():
    offenders = {name for name, imported in _engine_imports().items()
                 if not name.startswith("pimoe.cli") and name != "pimoe.__main__"
                 and any(t == "pimoe.cli" or t.startswith("pimoe.cli.") for t in imported)}
    assert not offenders, f"{sorted(offenders)} import pimoe.cli"


def test_engine_has_few_loose_modules_and_every_room_says_what_it_owns():
    package = ROOT / "pimoe"
    loose = sorted(p.name for p in package.glob("*.py"))
    assert len(loose) <= 8, loose
    # a folder left with only bytecode (a module moved away) is no room
    for room in sorted(p for p in package.iterdir() if p.is_dir() and any(p.glob("*.py"))):
        init = room / "__init__.py"
        assert init.exists(), f"{room.name} is not a package"
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and docstring.strip(), f"pimoe/{room.name} has no docstring saying what it owns"


# The names users relied on before the rooms were built: `pimoe.__all__` of 2026-11-27 and the original description's.
PUBLIC_NAMES = (
    "AdaptationConfig", "AdaptiveController", "AdaptivePiMoE", "DemoConfig", "EnhancedPiMoEIntegration", "ExpertConfig",
    "ExpertSpec", "ExpertType", "PiMoEConfig", "PiMoEDemo", "PiMoEExpert", "PiMoESystem", "RouterConfig",
    "RoutingInfo", "TokenLevelRouter", "create_enhanced_pimoe_integration", "create_pimoe_system", "expert_spec",
    "known_expert_types", "register_expert_type", "run_all_tests", "run_pimoe_demo",
)


def test_every_public_name_still_imports_from_pimoe():
    import pimoe

    missing = [name for name in PUBLIC_NAMES if not hasattr(pimoe, name)]
    assert not missing and set(PUBLIC_NAMES) <= set(pimoe.__all__), missing


def test_cli_commands_are_unchanged():
    from pimoe.cli import COMMANDS

    assert {"bench", "train", "demo", "export", "eval-compute"} <= set(COMMANDS)
