"""The house plan, checked: no import cycles, stages that import no other stage, one params.yaml
with every Config field at its default, and dvc.yaml dependencies that cover what each stage's
code imports and the params it reads (so `dvc status` never calls a stale output up to date)."""

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

from lm_pipeline.config import Config, default_params_yaml
from lm_pipeline.stages import STAGES

pytestmark = pytest.mark.architecture

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lm_pipeline"
# How a stage's code names the Config it reads; a function given one section names it after
# the section (`train: TrainConfig`), so the section shows at the call site as `cfg.train`.
CONFIG_NAMES = {"cfg"}


# --- the import graph ---------------------------------------------------------------------------

@cache
def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def resolve(name: str) -> str | None:
    """The package module an import names (`a.b.c` of `from a.b import c`, else `a.b`)."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


def imports_in(tree: ast.AST, module: str) -> set[str]:
    """Package modules imported anywhere under `tree`: module level and inside functions."""
    is_package = modules()[module].name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: anchored at this module's package
                anchor = module.split(".")[: None if is_package else -1]
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {m for m in map(resolve, names) if m and m != module}
    return found


@cache
def graph() -> dict[str, set[str]]:
    return {m: imports_in(ast.parse(path.read_text()), m) for m, path in modules().items()}


def closure(start: set[str]) -> set[str]:
    """Every module that importing `start` runs: their imports, transitively, and the packages
    they live in (a package's __init__ runs before its modules)."""
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = [module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)]
        todo += list(graph()[module]) + [p for p in parents if p in modules()]
    return seen


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph()[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph():
        if v not in index:
            visit(v)
    return found


@cache
def stage_modules() -> dict[str, set[str]]:
    """Stage -> the modules its `lmp` command imports (cli.py's function of the same name)."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    missing = [stage for stage in STAGES if stage not in functions]
    assert not missing, f"lm_pipeline/cli.py has no command function for stages {missing}"
    return {stage: imports_in(functions[stage], "lm_pipeline.cli") for stage in STAGES}


# --- what a stage's code reads of the config ----------------------------------------------------

SECTIONS = {field.alias or name: name for name, field in Config.model_fields.items()}  # yaml -> attr
ATTRIBUTE_SECTIONS = {attr: key for key, attr in SECTIONS.items()}
PYDANTIC_METHODS = {"model_dump", "model_dump_json", "model_copy"}  # they use the whole section


def property_sections() -> dict[str, set[str]]:
    """Config properties (tracking_uri, ...) -> the sections they read (`self.<section>`)."""
    tree = ast.parse((PACKAGE / "config.py").read_text())
    config = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Config")
    return {fn.name: {ATTRIBUTE_SECTIONS[node.attr] for node in ast.walk(fn)
                      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                      and node.value.id == "self" and node.attr in ATTRIBUTE_SECTIONS}
            for fn in config.body if isinstance(fn, ast.FunctionDef)
            and any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list)}


def params_read(module_names: set[str]) -> set[str]:
    """`section.key` for each `cfg.<section>.<key>` in these modules' code; `section` alone where a
    whole section is used (passed on, or read through a property). `cfg.model_dump()` (a copy of
    everything for workers and lineage's params hash) does not count as reading."""
    properties, read = property_sections(), set()
    for module in module_names:
        tree = ast.parse(modules()[module].read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in CONFIG_NAMES):
                continue
            if node.attr in properties:
                read |= properties[node.attr]
            elif node.attr in ATTRIBUTE_SECTIONS:
                section, parent = ATTRIBUTE_SECTIONS[node.attr], parents.get(node)
                key = parent.attr if isinstance(parent, ast.Attribute) and parent.value is node else None
                read.add(f"{section}.{key}" if key and key not in PYDANTIC_METHODS else section)
    return read


def collapse(keys: set[str]) -> set[str]:
    """Drop `section.key` where the whole `section` is read too."""
    return {k for k in keys if "." not in k or k.split(".")[0] not in keys}


# --- dvc.yaml -----------------------------------------------------------------------------------

def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def declared_params(stage: dict) -> set[str]:
    params = set()
    for entry in stage.get("params", []):
        params |= set(entry) if isinstance(entry, dict) else {entry}
    return params


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == dep or rel.startswith(dep.rstrip("/") + "/") for dep in deps)


def runs_code(path: Path) -> bool:
    """An empty __init__.py changes nothing a stage computes; every other module can."""
    return path.name != "__init__.py" or bool(path.read_text().strip())


# --- the tests ----------------------------------------------------------------------------------

def test_no_import_cycles_in_the_package():
    found = cycles()
    assert not found, "import cycles (move the shared piece into a leaf module):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_no_stage_module_imports_another_stage():
    """Directly or through any chain of imports."""
    stage_of = {m: stage for stage, ms in stage_modules().items() for m in ms}
    crossings = [f"stage {stage} ({', '.join(sorted(modules_))}) reaches {other} (stage {stage_of[other]})"
                 for stage, modules_ in stage_modules().items() for other in sorted(closure(modules_))
                 if other in stage_of and stage_of[other] != stage]
    assert not crossings, "stages share formats through leaf modules:\n" + "\n".join(crossings)


def test_params_yaml_holds_every_field_at_its_default_with_its_description():
    """Every value in one place: the committed params.yaml is what config.py describes."""
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    defaults = Config().model_dump(mode="json", by_alias=True)
    missing = [f"{s}.{k}" for s in defaults for k in defaults[s] if k not in committed.get(s, {})]
    differing = [f"{s}.{k}: params.yaml {committed[s][k]!r}, config.py {v!r}"
                 for s in defaults for k, v in defaults[s].items()
                 if k in committed.get(s, {}) and committed[s][k] != v]
    assert not missing, f"Config fields missing from params.yaml: {', '.join(missing)}"
    assert not differing, "defaults that disagree with params.yaml:\n" + "\n".join(differing)
    undocumented = [f"{s}.{k}" for s, field in Config.model_fields.items()
                    for k, spec in field.annotation.model_fields.items() if not spec.description]
    assert not undocumented, f"fields without a description in config.py: {', '.join(undocumented)}"
    assert (ROOT / "params.yaml").read_text() == default_params_yaml(), (
        "params.yaml differs from `python -m lm_pipeline.config` (comments or order): regenerate it")


def test_dvc_yaml_declares_exactly_the_pipeline_stages():
    assert list(dvc_stages()) == list(STAGES)
    assert all(stage["cmd"] == f"lmp {name}" for name, stage in dvc_stages().items())


@pytest.mark.parametrize("stage", list(STAGES))
def test_dvc_deps_cover_every_file_the_stage_imports(stage):
    deps = [d for d in dvc_stages()[stage].get("deps", [])]
    files = sorted(modules()[m] for m in closure(stage_modules()[stage]))
    missing = [f.relative_to(ROOT).as_posix() for f in files if runs_code(f) and not covered(f, deps)]
    assert not missing, f"dvc.yaml stage {stage} imports files it does not depend on: {', '.join(missing)}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_dvc_params_are_the_ones_the_stage_reads(stage):
    """Each key read is declared (itself, or its section); each declared key or section is read."""
    read = collapse(params_read(closure(stage_modules()[stage])))
    declared = declared_params(dvc_stages()[stage])
    undeclared = sorted(r for r in read if r not in declared and r.split(".")[0] not in declared)
    unread = sorted(d for d in declared if not any(r == d or r.startswith(d + ".") for r in read))
    assert not undeclared and not unread, (
        f"dvc.yaml stage {stage}: reads but does not declare {undeclared}; "
        f"declares but does not read {unread}")
