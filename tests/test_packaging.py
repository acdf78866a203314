"""The installed package: one top-level name, `slimpipe`, holding every module and recipe of the
repository's four folders, importable from outside the checkout."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("pipeline", "stages", "exporters", "benchmarks")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (the checkout itself gets no build/ folder)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", *FOLDERS):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(src)], check=True, capture_output=True)
    [built] = out.glob("slimpipe-*.whl")
    return built


def test_the_wheel_holds_every_module_under_one_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"slimpipe", wheel.name.split("-py")[0] + ".dist-info"}
    expected = {f"slimpipe/{p.relative_to(ROOT).as_posix()}" for folder in FOLDERS
                for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".toml") and "__pycache__" not in p.parts}
    assert expected - set(names) == set()
    assert "slimpipe/pipeline/recipes/default.toml" in names


def test_the_installed_package_imports_from_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    script = ("import importlib.util, slimpipe.pipeline, slimpipe.stages\n"
              "print(slimpipe.pipeline.__file__)\n"
              "print(sorted(slimpipe.stages.STAGES))\n"
              "print([importlib.util.find_spec(n) for n in ('pipeline', 'stages', 'exporters', 'benchmarks')])\n"
              "from slimpipe.pipeline.recipe import load_recipe\n"
              "print(len(load_recipe('default', slimpipe.stages.STAGES)))\n")
    env = {**os.environ, "PYTHONPATH": str(target), "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True)
    where, stages, generic, steps = run.stdout.strip().splitlines()[-4:]
    assert where.startswith(str(target / "slimpipe" / "pipeline"))
    assert "prune" in stages and "train" in stages
    assert generic == "[None, None, None, None]"  # no generic top-level names in the environment
    assert int(steps) >= 5
