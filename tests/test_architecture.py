"""The layout's dependency rule (SPEC section 1) holds on the whole import graph.

import-linter checks the contracts in pyproject.toml (every ``import``, function
bodies included); these tests run it, show that it catches a violation hidden in a
function body, keep its list of core modules complete, and check that the wheel
installs exactly one top-level name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from subprocess import CompletedProcess

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
ADAPTERS = {"cli", "handler", "watcher"}


def lint_imports(cwd: Path) -> CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(cwd / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def lint_with_sneaky_import(tmp_path: Path, module: str, imported: str) -> CompletedProcess[str]:
    """import-linter's verdict on a copy of the package where ``dinoembed.<module>`` imports
    ``imported`` inside a function body (the adapters copied in, not linked)."""
    shutil.copytree(ROOT / "dinoembed", tmp_path / "dinoembed", symlinks=False)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "dinoembed" / f"{module.replace('.', '/')}.py"
    with target.open("a") as fh:
        fh.write(f"\n\ndef _sneaky() -> None:\n    import {imported}  # noqa\n")
    return lint_imports(tmp_path)


def contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return found


def test_the_import_contracts_are_kept() -> None:
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_every_core_module_is_bound_by_the_core_contract() -> None:
    # GIVEN the modules of the core: everything in dinoembed/ outside the adapters
    core = {
        f"dinoembed.{p.stem}"
        for p in (ROOT / "dinoembed").glob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    core |= {
        f"dinoembed.{p.name}"
        for p in (ROOT / "dinoembed").iterdir()
        if p.is_dir() and p.name not in ADAPTERS and (p / "__init__.py").exists()
    }
    # THEN the first contract lists each of them (a new module cannot slip past the rule)
    listed = set(contracts()[0]["source_modules"])  # type: ignore[call-overload]
    assert core == listed


def layer_modules() -> set[str]:
    (layers,) = [c for c in contracts() if c["type"] == "layers"]
    names: list[str] = layers["layers"]  # type: ignore[assignment]
    return {m.strip() for layer in names for m in layer.split("|")}


def test_every_stage_of_the_core_has_its_layer() -> None:
    # GIVEN the core's modules as the core contract lists them (kept complete above)
    core = set(contracts()[0]["source_modules"])  # type: ignore[call-overload]
    # THEN the layers contract places each of them, and the adapters above them
    assert layer_modules() == core | {f"dinoembed.{a}" for a in ADAPTERS}


@pytest.mark.parametrize(
    ("module", "imported"),
    [
        ("images.decode", "dinoembed.pipeline"),  # a decoder reaching up to the pipeline
        ("model.engine", "dinoembed.collections.similarity"),
        ("results.sidecars", "dinoembed.api"),
        ("common.atomic", "dinoembed.results.schema"),
        ("pipeline", "dinoembed.collections.collection"),  # independent siblings
        ("model.store", "dinoembed.images.decode"),  # independent siblings
    ],
)
def test_a_lower_stage_importing_a_higher_one_breaks_the_layers(
    tmp_path: Path, module: str, imported: str
) -> None:
    # GIVEN a copy of the package where a stage imports a higher (or sibling) one in a function
    # WHEN import-linter checks the copy
    run = lint_with_sneaky_import(tmp_path, module, imported)
    # THEN the layers contract is broken, naming the import; the other contracts still hold
    assert run.returncode != 0
    assert "a lower stage never imports a higher one BROKEN" in run.stdout
    assert f"dinoembed.{module} -> {imported}" in run.stdout
    assert "Contracts: 5 kept, 1 broken." in run.stdout


@pytest.mark.parametrize(
    ("module", "imported"),
    [
        ("images.decode", "boto3"),
        ("collections.collection", "dinoembed.handler.s3io"),
        ("pipeline", "watchdog"),
        ("results.schema", "dinoembed.cli"),
    ],
)
def test_a_forbidden_import_inside_a_function_breaks_the_contract(
    tmp_path: Path, module: str, imported: str
) -> None:
    # GIVEN a copy of the package where a core module imports an adapter inside a function
    # WHEN import-linter checks the copy
    run = lint_with_sneaky_import(tmp_path, module, imported)
    # THEN the core contract is broken, naming the import
    assert run.returncode != 0
    assert f"dinoembed.{module} -> {imported}" in run.stdout


def test_the_adapters_may_not_import_each_other(tmp_path: Path) -> None:
    run = lint_with_sneaky_import(tmp_path, "handler.events", "dinoembed.watcher.scan")
    assert run.returncode != 0
    assert "never import each other BROKEN" in run.stdout


@pytest.mark.slow
def test_the_wheel_adds_one_top_level_name(tmp_path: Path) -> None:
    # WHEN the distribution is built as pip would install it
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("dinoembed-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # THEN dinoembed is its only top-level package, with both adapters inside it
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"dinoembed"}
    assert "dinoembed/handler/app.py" in names and "dinoembed/watcher/daemon.py" in names
    assert "dinoembed/cli/commands.py" in names


def test_every_module_says_what_it_is_for() -> None:
    # GIVEN every module of the package, the adapters behind their symlinks included
    modules = sorted(
        Path(folder, name)
        for folder, _, names in os.walk(ROOT / "dinoembed", followlinks=True)
        for name in names
        if name.endswith(".py")
    )
    assert any(m.parent.name == "handler" for m in modules)
    assert any(m.parent.name == "watcher" for m in modules)
    # THEN each opens with a docstring whose first line is a sentence of its own
    silent = [
        str(m.relative_to(ROOT))
        for m in modules
        if not m.read_text().startswith('"""') or len(m.read_text().splitlines()[0]) < 12
    ]
    assert silent == []
