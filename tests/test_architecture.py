"""The house plan, checked: layers that only point down and no import cycles across the package
(its flows included) and the benchmarks; the stages' entry points apart in lm_pipeline/stages/,
each importing no other stage, and agreeing with STAGES, dvc.yaml and the CLI; project modules
imported at the top of a file; modules small enough to read; one params.yaml with every Config
field at its default; and dvc.yaml dependencies that cover what each stage's code imports and the
params it reads (so `dvc status` never calls a stale output up to date)."""

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from lm_pipeline.config import OUTPUTS, Config, default_params_yaml
from lm_pipeline.stages import STAGES

pytestmark = pytest.mark.architecture

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lm_pipeline"
CODE = (PACKAGE, ROOT / "benchmarks")  # the house: the package (flows included) and the benchmarks
STAGES_PACKAGE = "lm_pipeline.stages"

# The layers, lowest first: a module imports its own layer and those below, never one above.
# Same-layer imports are allowed (the cycle test keeps them one-way).
LAYERS = (
    ("lm_pipeline.config", "lm_pipeline.io", "lm_pipeline.env", "lm_pipeline.lineage", "lm_pipeline.hashing",
     "lm_pipeline.progress", "lm_pipeline.text", "lm_pipeline.failures"),
    ("lm_pipeline.tracking", "lm_pipeline.storage", "lm_pipeline.cluster"),
    ("lm_pipeline.data",),
    ("lm_pipeline.model",),
    ("lm_pipeline.training", "lm_pipeline.evaluation"),
    ("lm_pipeline.registry",),
    ("lm_pipeline.stages", "lm_pipeline.serving"),
    ("lm_pipeline.continuous",),
    ("lm_pipeline.flows", "lm_pipeline.cli", "lm_pipeline.cli_args"),
    ("benchmarks",),
)
# Third-party libraries that take a second or more to import: a function may import a project
# module that brings one of these in, so that callers that do not need it do not pay for it.
HEAVY = {"torch", "transformers", "peft", "lm_eval", "great_expectations", "ray", "prefect", "mlflow",
         "evaluate", "datasets", "matplotlib", "pandas", "pyarrow", "dvc", "sacrebleu"}
MAX_LINES = 350  # a module longer than this does more than one job (config.py: one documented field each)
MAX_STAGE_LINES = 150  # a stage is run(cfg) and its I/O; the work is in the components
# How a stage's code names the Config it reads; a function given one section names it after
# the section (`train: TrainConfig`), so the section shows at the call site as `cfg.train`.
CONFIG_NAMES = {"cfg"}


# --- the import graph ---------------------------------------------------------------------------

@cache
def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package and the benchmarks."""
    found = {}
    for path in (p for folder in CODE for p in folder.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def resolve(name: str) -> str | None:
    """The package module an import names (`a.b.c` of `from a.b import c`, else `a.b`)."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


def imported_names(node: ast.AST, module: str) -> list[str]:
    """The dotted names an import statement names (`a.b.c` for `from a.b import c`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: anchored at this module's package
        anchor = module.split(".")[: None if modules()[module].name == "__init__.py" else -1]
        base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
    return [f"{base}.{alias.name}" for alias in node.names]


def imports_in(tree: ast.AST, module: str) -> set[str]:
    """Project modules imported anywhere under `tree`: module level and inside functions."""
    found = set()
    for node in ast.walk(tree):
        found |= {m for m in map(resolve, imported_names(node, module)) if m and m != module}
    return found


@cache
def top_level_imports(module: str) -> tuple[set[str], set[str]]:
    """(project modules, third-party top-level packages) a module imports at its top level."""
    project, third_party = set(), set()
    for node in ast.parse(modules()[module].read_text()).body:
        for name in imported_names(node, module):
            if resolve(name):
                project.add(resolve(name))
            elif not name.startswith("__future__"):
                third_party.add(name.split(".")[0])
    return project - {module}, third_party


def heavy_imports(module: str) -> set[str]:
    """The heavy libraries importing `module` runs, through project modules' top-level imports."""
    seen, todo, heavy = set(), [module], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        project, third_party = top_level_imports(current)
        heavy |= third_party & HEAVY
        todo += list(project)
    return heavy


def layer_of(module: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


@cache
def graph() -> dict[str, set[str]]:
    return {m: imports_in(ast.parse(path.read_text()), m) for m, path in modules().items()}


def closure(start: set[str], packages: bool = True) -> set[str]:
    """Every module that importing `start` runs: their imports, transitively, and (with
    `packages`) the packages they live in (a package's __init__ runs before its modules)."""
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = [module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)] if packages else []
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


def stage_files() -> set[str]:
    """The modules in lm_pipeline/stages/, by name (its __init__ holds STAGES)."""
    return {p.stem for p in (PACKAGE / "stages").glob("*.py") if p.name != "__init__.py"}


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
    """A package's __init__.py that imports nothing and defines no function changes nothing a stage
    computes when it runs only because a module inside it is imported (stages/__init__.py holds
    the CLI's list of stages); every other module can."""
    if path.name != "__init__.py":
        return True
    return any(isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.ClassDef)
               for node in ast.walk(ast.parse(path.read_text())))


# --- the tests ----------------------------------------------------------------------------------

def test_no_import_cycles_in_the_package_flows_or_benchmarks():
    found = cycles()
    assert not found, "import cycles (move the shared piece into a leaf module):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_layers_only_point_down():
    upward = [f"{module} (layer {layer_of(module)}) imports {other} (layer {layer_of(other)})"
              for module, imported in sorted(graph().items()) for other in sorted(imported)
              if layer_of(module) is not None and layer_of(other) is not None
              and layer_of(other) > layer_of(module)]
    assert not upward, "imports that point up the layers (move the shared piece down):\n" + "\n".join(upward)


def test_every_module_has_a_layer():
    homeless = [m for m in modules() if layer_of(m) is None and m not in ("lm_pipeline",)]
    assert not homeless, f"modules in no layer (add them to LAYERS): {', '.join(sorted(homeless))}"


def test_stage_modules_are_the_stages_of_stages_dvc_yaml_and_the_cli():
    """One module per stage in lm_pipeline/stages/, named after it; its `lmp` command imports that
    module and nothing else of the project; dvc.yaml and STAGES name the same stages."""
    assert stage_files() == set(STAGES), (
        f"lm_pipeline/stages/ holds {sorted(stage_files())}, STAGES names {sorted(STAGES)}")
    assert set(dvc_stages()) == set(STAGES)
    wrong = {stage: sorted(ms) for stage, ms in stage_modules().items()
             if ms != {f"{STAGES_PACKAGE}.{stage}"}}
    assert not wrong, f"each stage's lmp command imports its stage module only: {wrong}"


def test_the_distribution_ships_one_top_level_package():
    """The flows live in lm_pipeline/flows/: an installed project adds no generic `flows` package."""
    import tomllib

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["lm_pipeline*"]
    assert not (ROOT / "flows").exists()


def test_only_the_stages_package_holds_entry_points_of_stages():
    """No component imports a stage module (the layer test covers it; this names it plainly)."""
    offenders = sorted(f"{m} imports {o}" for m, imported in graph().items() for o in imported
                       if o.startswith(STAGES_PACKAGE + ".") and not m.startswith(STAGES_PACKAGE)
                       and m != "lm_pipeline.cli" and not m.startswith("benchmarks"))
    assert not offenders, "\n".join(offenders)


def test_project_modules_are_imported_at_the_top_of_a_file():
    """Inside a function only where the module brings in a heavy library the importer would not
    otherwise load, or in the CLI's command table (each command imports its own stage)."""
    late = []
    for module, path in sorted(modules().items()):
        if module.startswith("benchmarks"):
            continue  # scripts: they set the environment up before importing the package
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if id(node) in top or not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for imported in {resolve(n) for n in imported_names(node, module)} - {None}:
                brings = heavy_imports(imported) - heavy_imports(module)
                if module != "lm_pipeline.cli" and not brings:
                    late.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {imported} in a function")
    assert not late, "import these at the top (they load nothing heavy):\n" + "\n".join(late)


def test_modules_are_short_enough_to_read():
    long = {path.relative_to(ROOT).as_posix(): n for path in modules().values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES and path.name != "config.py"}
    assert not long, f"modules over {MAX_LINES} lines (split them along their seams): {long}"
    stages = {name: n for name in stage_files()
              if (n := len((PACKAGE / "stages" / f"{name}.py").read_text().splitlines())) > MAX_STAGE_LINES}
    assert not stages, f"stage modules over {MAX_STAGE_LINES} lines (move the work to components): {stages}"


def test_section_configs_are_named_after_their_section():
    """A function given one section of the config names it after the section (`evaluate:
    EvaluateConfig`), so the call site reads `cfg.evaluate` and the body `evaluate.stride`."""
    sections = {field.annotation.__name__: field.alias or name for name, field in Config.model_fields.items()}
    misnamed = []
    for path in sorted(modules().values()):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for arg in fn.args.args + fn.args.kwonlyargs:
                kind = arg.annotation.id if isinstance(arg.annotation, ast.Name) else None
                if kind in sections and arg.arg != sections[kind]:
                    misnamed.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}({arg.arg}: {kind}) "
                                    f"-> {sections[kind]}")
    assert not misnamed, "\n".join(misnamed)


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
    loaded = Config.model_validate(committed).model_dump(mode="json", by_alias=True)  # min_lr: null -> lr/10
    differing = [f"{s}.{k}: params.yaml {committed[s][k]!r}, config.py {v!r}"
                 for s in defaults for k, v in defaults[s].items()
                 if k in committed.get(s, {}) and loaded[s][k] != v]
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
    explicit = closure(stage_modules()[stage], packages=False)
    files = sorted(modules()[m] for m in closure(stage_modules()[stage]))
    missing = [f.relative_to(ROOT).as_posix() for f in files
               if (f in {modules()[m] for m in explicit} or runs_code(f)) and not covered(f, deps)]
    assert not missing, f"dvc.yaml stage {stage} imports files it does not depend on: {', '.join(missing)}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_dvc_code_deps_are_files_the_stage_imports(stage):
    """No stale or spare code dependency: each names a file or folder of the stage's own imports
    (a spare one reruns the stage for nothing; a missing one stops `dvc repro`)."""
    files = {modules()[m] for m in closure(stage_modules()[stage])}
    code = [d for d in dvc_stages()[stage].get("deps", []) if d.startswith("lm_pipeline/")]
    spare = [d for d in code if not (ROOT / d).exists() or not any(covered(f, [d]) for f in files)]
    assert not spare, f"dvc.yaml stage {stage} depends on code it does not import: {', '.join(spare)}"


def test_dvc_outputs_are_named_by_the_params_that_place_them():
    """Outs, metrics and plots are `${section.key}` of the Config fields that name output paths
    (a literal path would stay behind when the param moves the output); every such field DVC
    tracks is one (checkpoints and the search's outputs are not DVC's)."""
    entries = [next(iter(e)) if isinstance(e, dict) else e for spec in dvc_stages().values()
               for kind in ("outs", "metrics", "plots") for e in spec.get(kind, [])]
    literal = [e for e in entries if not e.startswith("${")]
    named = {re.match(r"\$\{([\w.]+)\}", e).group(1) for e in entries if e.startswith("${")}
    untracked = {"train.checkpoint_dir", "tune.model_dir", "tune.report_dir"}
    assert not literal, f"dvc.yaml outputs written as paths, not the params naming them: {literal}"
    assert named == set(OUTPUTS) - untracked, named ^ (set(OUTPUTS) - untracked)
    deps = [d for spec in dvc_stages().values() for d in spec.get("deps", [])
            if not d.startswith("lm_pipeline/")]
    assert all(d.startswith("${") for d in deps), f"data dependencies written as paths: {deps}"


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
