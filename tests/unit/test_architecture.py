"""The module layering of docs/architecture.md: no import circle, no import of a layer above,
no stage importing another, the math free of model libraries, SFT free of the RL stack, and the
size limits of DESIGN.md §7."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "src" / "grpokit"

# Top to bottom, as in docs/architecture.md; a module imports only from layers below its own,
# or from its own package. The most specific prefix decides a module's layer.
LAYERS = [
    ["grpokit.__main__"],
    ["grpokit.cli", "grpokit.api"],
    ["grpokit.stages", "grpokit.conformance", "grpokit.rewards.cli", "grpokit.sandbox.cli"],
    ["grpokit.rl"],
    ["grpokit.training"],
    ["grpokit.report"],
    ["grpokit.tools"],
    ["grpokit.rollout", "grpokit.data"],
    ["grpokit.rewards"],
    ["grpokit.sandbox"],
    ["grpokit.runtime", "grpokit.testing"],
    ["grpokit.config"],
    ["grpokit.errors", "grpokit.rewards.base", "grpokit.rewards.user", "grpokit.rewards.extract",
     "grpokit.rewards.answers", "grpokit.rollout.base"],
    ["grpokit.algo"],
]


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(name: str) -> bool:
    path = ROOT.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """Every module of the package and the grpokit modules it imports (at any depth of the file)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("grpokit"):
                # `from pkg import submodule` imports the submodule; anything else, the module
                found.update(f"{node.module}.{a.name}" if _exists(f"{node.module}.{a.name}")
                             else node.module for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("grpokit."))
        graph[_module(path)] = found - {"grpokit"}
    return graph


def layer(module: str) -> int:
    matches = [(len(prefix), i) for i, group in enumerate(LAYERS) for prefix in group
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} has no layer in LAYERS (and docs/architecture.md)"
    return max(matches)[1]


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or _exists(module + ".__init__") else module


def test_no_stage_imports_another_stage():
    """The stages (grpo, ppo, sft, dpo) sit side by side: what two of them share lives below them
    (grpokit.rl for the RL stages, data/supervised.py for SFT and DPO), never in a sibling."""
    graph = import_graph()
    stages = lambda names: {m for m in names if m.startswith("grpokit.stages.")}
    wrong = [f"{a} imports {b}" for a in stages(graph) for b in stages(graph[a]) if b != a]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_imports_a_layer_above_its_own():
    graph = import_graph()
    wrong = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
             for a, targets in graph.items() for b in targets
             if _package(a) != _package(b) and layer(b) <= layer(a)]
    assert not wrong, "\n".join(sorted(wrong))


def test_there_is_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt])
                            if nxt in path else f"import circle through {nxt}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_math_loads_neither_transformers_nor_peft():
    loaded = _loaded_after("import grpokit.algo")
    assert not {m for m in loaded if m.split(".")[0] in ("transformers", "peft")}


def test_sft_loads_neither_the_trainer_nor_the_rollout_and_reward_stack():
    loaded = _loaded_after("import grpokit.stages.sft")
    stack = ("grpokit.stages.grpo", "grpokit.stages.dpo", "grpokit.stages.ppo", "grpokit.rl",
             "grpokit.training.groups", "grpokit.training.evaluation", "grpokit.rollout",
             "grpokit.rewards.runner", "grpokit.rewards.registry", "grpokit.sandbox")
    assert not {m for m in loaded if m.startswith(stack)}


def _function_lengths(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_functions_and_modules_stay_within_the_size_limits():
    too_long = []
    for path in ROOT.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        if lines > 400:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
        too_long += [f"{path.relative_to(ROOT)}:{name}: {n} lines"
                     for name, n in _function_lengths(path) if n > 60]
    assert not too_long, "\n".join(too_long)


def test_train_step_names_every_stage_on_one_screen():
    source = (ROOT / "stages" / "grpo.py").read_text()
    (node,) = [n for n in ast.parse(source).body
               if isinstance(n, ast.FunctionDef) and n.name == "train_step"]
    assert node.end_lineno - node.lineno + 1 <= 40
    body = ast.get_source_segment(source, node)
    stages = ["sample_groups(", "advantages_of(", "loss_mask_of(", "rollout_metrics(",
              "update_policy(", "sync_weights("]
    positions = [body.index(stage) for stage in stages]
    assert positions == sorted(positions)


def test_the_top_level_holds_at_most_ten_modules():
    """The folders carry the architecture (docs/architecture.md); the top level holds only the
    entry points and the few modules every layer needs."""
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= 10, top


def _documented() -> list[tuple[int, str]]:
    """(layer, module) of every file or folder named in docs/architecture.md's table."""
    text = (ROOT.parents[1] / "docs" / "architecture.md").read_text()
    out = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 3 and cells[0].isdigit():
            for name in cells[1].replace("`", "").split(","):
                out.append((int(cells[0]), "grpokit." + name.strip().removesuffix("/")
                            .removesuffix(".py").replace("/", ".")))
    return out


def test_docs_architecture_names_every_module_at_its_layer():
    documented = _documented()
    wrong = [f"{module}: layer {at} in the docs, {layer(module)} in LAYERS"
             for at, module in documented if layer(module) != at]
    missing = [m for m in import_graph() if m != "grpokit" and not any(  # a package: its files
        m == d or m.startswith(d + ".") or d.startswith(m + ".") for _, d in documented)]
    assert not wrong and not missing, "\n".join(wrong + [f"{m}: not in the docs" for m in missing])
