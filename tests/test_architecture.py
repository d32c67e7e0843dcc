"""The package's import graph against the layering docs/ARCHITECTURE.md states.

Every `import` in f3compile — module level and inside functions — is read with `ast`; each module
belongs to a component (a top-level module or subpackage); each component may import only what its
row in the "Layers" table allows, and the components' graph has no cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "f3compile"


def layers() -> dict[str, set[str]]:
    """component -> components it may import, from the table under "## Layers"."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table, foundation = {}, None
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        names, allowed = re.findall(r"`([\w.]+)`", cells[0]), cells[-1]
        foundation = foundation or set(names)
        permitted = set(re.findall(r"`([\w.]+)`", allowed)) | (foundation if "foundation" in allowed else set())
        for name in names:
            table[name] = permitted | {name}
    return table


def component(module: str) -> str:
    parts = module.split(".")
    return "errors" if len(parts) == 1 else parts[1]  # the package's __init__ counts as foundation


def imports() -> dict[str, set[str]]:
    """module -> f3compile modules it imports (anywhere in the file)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        package = module if is_package else module.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "f3compile":
                    continue
                for alias in node.names:  # `from . import api` imports the module f3compile.api
                    candidate = f"{target}.{alias.name}"
                    if (ROOT / (candidate.replace(".", "/") + ".py")).is_file() or (ROOT / candidate.replace(".", "/")).is_dir():
                        targets.add(candidate)
                    else:  # a name defined in `target` (a module, or a package's __init__)
                        targets.add(target)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.split(".")[0] == "f3compile"}
        graph[module] = targets
    return graph


def test_the_layers_table_names_every_component():
    table = layers()
    found = {component(module) for module in imports()}
    assert found <= set(table), f"components missing from docs/ARCHITECTURE.md: {sorted(found - set(table))}"
    assert {"models", "passes", "compiler", "api", "cli", "kinds"} <= set(table)


def test_every_import_follows_the_layers():
    table = layers()
    violations = []
    for module, targets in imports().items():
        mine = component(module)
        for target in targets:
            theirs = component(target)
            if theirs not in table[mine]:
                violations.append(f"{module} imports {target} ({mine} may not import {theirs})")
    assert not violations, "\n".join(sorted(violations))


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A loop of `graph` (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name, [name])):
            return found
    return None


def test_cycles_are_found():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_components_have_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for module, targets in imports().items():
        graph.setdefault(component(module), set()).update(component(t) for t in targets)
    assert cycle({name: targets - {name} for name, targets in graph.items()}) is None


def test_no_module_import_cycle():
    """No two modules import each other, directly or around a loop (function-level imports too:
    an import inside a function that closes a loop is a cycle deferred, not removed)."""
    assert cycle({module: targets - {module} for module, targets in imports().items()}) is None


def test_the_cli_has_no_model_kind_branch():
    """cli.py parses and calls the API: no `if` on the kind of a model or build."""
    source = (PACKAGE / "cli.py").read_text()
    for word in ("autoregressive", "cogvideo", "diffusion", "is_ar_build", "kind =="):
        hits = [line for line in source.splitlines() if word in line.lower() and ("if " in line or "elif " in line)]
        assert not hits, f"cli.py branches on {word!r}: {hits}"


def test_the_long_modules_scheduled_first_exist():
    """`tests/conftest.py` names the long modules that `make test` starts first; each must exist."""
    from tests.conftest import LONG_FIRST

    root = PACKAGE.parent
    assert [path for path in LONG_FIRST if not (root / path).is_file()] == []
