"""The package's layout: every stage depends on exactly the code it runs. Each stage's DVC code
dependencies are derived here from the imports of its module (coda/cli.py's STAGES), so a
definition one module off becomes a test failure instead of a rerun edge."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from coda.cli import STAGES
from helpers import BIN, ROOT, pipeline_copy, run

# They decide where, whether and on how many ranks a stage runs and where its messages go, not what it
# computes: a change reruns nothing, and what they import for that is no stage's code either.
NOT_RESULT_CODE = {"coda.devices", "coda.external_inputs", "coda.train.launch", "coda.stage_log"}


def module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    return next((p for p in (path / "__init__.py", path.with_suffix(".py")) if p.is_file()), None)


def imports(node: ast.AST, module: str, is_package: bool) -> set[str]:
    """The coda modules ``node`` imports, inside functions too (a stage runs those when it calls them)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            found |= {a.name for a in n.names if a.name.startswith("coda")}
        elif isinstance(n, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - n.level + 1] if n.level else []
            name = ".".join(base + ([n.module] if n.module else []))
            if name.startswith("coda"):
                found |= {name} | {f"{name}.{a.name}" for a in n.names if module_file(f"{name}.{a.name}")}
    return found


def closure(start: set[str]) -> set[str]:
    """Every coda module that importing ``start`` runs: their imports and parent packages, transitively."""
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None or name in NOT_RESULT_CODE:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        todo += imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
    return seen


def cli_imports() -> set[str]:
    """What ``coda <stage>`` imports before the stage's module: coda/cli.py's module-level imports (the
    imports inside its functions are the file commands', which no stage runs)."""
    cli = ast.parse((ROOT / "coda/cli.py").read_text())
    top = ast.Module([n for n in cli.body if isinstance(n, (ast.Import, ast.ImportFrom))], [])
    return imports(top, "coda.cli", False)


def stage_code(stage: str) -> set[str]:
    """The package files ``coda <stage>`` runs, derived from the imports of its module."""
    modules = closure(cli_imports() | {STAGES[stage].module}) | {"coda.cli"}
    return {str(module_file(m).relative_to(ROOT)) for m in modules}


def dvc_code_deps(stage: str) -> set[str]:
    """dvc.yaml's code dependencies of ``stage``, a package directory as its .py files."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    files = set()
    for dep in spec.get("do", spec)["deps"]:
        if dep.startswith("coda"):
            path = ROOT / dep
            files |= {str(p.relative_to(ROOT)) for p in path.rglob("*.py")} if path.is_dir() else {dep}
    return files


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_depends_on_exactly_the_code_it_runs(stage):
    runs = stage_code(stage)
    for name in [stage] + (["evaluate_vae"] if stage == "evaluate" else []):  # one command, two DVC stages
        deps = dvc_code_deps(name)
        assert not runs - deps, f"dvc.yaml stage {name} runs {sorted(runs - deps)} but does not depend on them"
        extra = deps - runs - {str(module_file(m).relative_to(ROOT)) for m in NOT_RESULT_CODE}  # in a listed folder
        assert not extra, f"dvc.yaml stage {name} depends on {sorted(extra)}, which it does not run"


def test_the_vae_stage_runs_no_quantizer_nor_trainer_and_the_report_no_evaluation():
    vae = stage_code("vae")
    assert not {m for m in vae if m.startswith(("coda/quantizers/", "coda/train/", "coda/compat/quantizer"))}
    assert "coda/vae_train.py" in vae and "coda/compat/vae.py" in vae
    assert not {m for m in stage_code("report") if m.startswith(("coda/evaluation/", "coda/perceptual"))}
    assert not {m for m in stage_code("prepare") if m.startswith(("coda/vae", "coda/tokenizer"))}


def test_a_stage_imports_no_other_stage():
    """Arrows point down: a stage imports the method (and coda/stages/__init__'s shared note), never
    another stage's module."""
    modules = {s.module for s in STAGES.values()}
    for stage in STAGES.values():
        others = closure({stage.module}) & (modules - {stage.module})
        assert not others, f"{stage.module} imports {sorted(others)}"


def test_editing_a_quantizer_does_not_rerun_the_vae_stage(tmp_path):
    """DVC itself: with the vae stage recorded, a quantizer edit leaves it up to date; a VAE edit does not."""
    work = pipeline_copy(tmp_path, "demo")
    for folder in ("work/demo/prepared", "work/demo/vae"):  # stand-ins: only the dependency hashes matter
        (work / folder).mkdir(parents=True)
        (work / folder / "stand-in").write_text("x")
    (work / "work/demo/fetched.json").write_text("{}")
    dvc = str(BIN / "dvc")
    run([dvc, "commit", "--force", "vae"], work)  # records the vae stage's dependencies as they are
    assert "up to date" in run([dvc, "status", "vae"], work).stdout.lower()
    with open(work / "coda/quantizers/coda.py", "a") as f:
        f.write("\n# an edit\n")
    assert "up to date" in run([dvc, "status", "vae"], work).stdout.lower()
    with open(work / "coda/vae.py", "a") as f:
        f.write("\n# an edit\n")
    assert "coda/vae.py" in run([dvc, "status", "vae"], work).stdout
