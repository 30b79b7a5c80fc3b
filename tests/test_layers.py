"""The package's layers: each part imports only parts below it, so a listing of translate/ reads bottom-up.

    runtime → data, models → config → decoding → evaluation → training, serving → commands (translate/commands/)

data and models are peers that never import each other; models import nothing but models (and torch);
training and serving are peers too.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "translate"
LAYERS = {"runtime": 0, "data": 1, "models": 1, "config": 2, "decoding": 3, "evaluation": 4, "training": 5}
LAYERS["serving"] = 5
COMMANDS = LAYERS["commands"] = 6  # and translate/__main__.py, which runs them
FORBIDDEN = {("data", "models"), ("models", "data"), ("models", "runtime")}
FORBIDDEN |= {("training", "serving"), ("serving", "training")}


def part(module: str) -> str:
    """translate.decoding.search -> decoding; translate.commands.train -> commands; translate.__main__ -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


def layer(module: str) -> int:
    return LAYERS.get(part(module), COMMANDS)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `translate` import in a file, at any depth (imports inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "translate":
            names = [f"{node.module}.{a.name}" if node.module == "translate" else node.module for a in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "translate"]
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_library_folder_is_a_known_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    here = module_name(path)
    wrong = []
    for line, target in imports(path):
        if (part(here), part(target)) in FORBIDDEN or layer(target) > layer(here):
            wrong.append(f"{path.name}:{line} imports {target}")
        elif layer(target) == COMMANDS and layer(here) == COMMANDS and target != here:
            wrong.append(f"{path.name}:{line} imports the command {target}; commands share only the library")
    assert not wrong, "; ".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from translate.training.trainer import Trainer\n")
    assert imports(bad) == [(2, "translate.training.trainer")]
    assert layer("translate.training.trainer") > layer("translate.decoding.search")
    assert layer("translate.commands.train") == COMMANDS and part("translate.runtime") == "runtime"


def module_level_imports(module: str) -> set[str]:
    """Every module imported when `module` is imported: translate's own followed, others by top-level name
    (imports inside functions, made only when a feature is asked for, are not counted)."""
    seen, todo, outside = set(), [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        path = path if path.exists() else path.with_suffix("") / "__init__.py"
        parents = [".".join(name.split(".")[:i]) for i in range(2, name.count(".") + 1)]
        todo += [p for p in parents if p not in seen]
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module]
                if node.module.split(".")[0] == "translate":
                    for a in node.names:  # `from translate.runtime import device`: a module, not a name
                        sub = f"{node.module}.{a.name}"
                        if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists():
                            targets.append(sub)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] == "translate":
                    todo.append(target)
                else:
                    outside.add(target)
    return outside


def test_translating_imports_neither_tensorboard_nor_plotting():
    for command in ("translate.commands.translate", "translate.decoding.inference", "translate.decoding.ct2"):
        heavy = {m for m in module_level_imports(command) if m.split(".")[0] == "matplotlib" or "tensorboard" in m}
        assert not heavy, f"{command} imports {heavy}"
    assert "torch.utils.tensorboard" in module_level_imports("translate.commands.eval")  # the check sees them
