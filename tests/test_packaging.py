"""The package metadata lives in pyproject.toml, and its package list matches the tree.

setuptools installs exactly the packages listed in ``[tool.setuptools] packages``: a new
subpackage that is not listed works in an editable install (where the files are read from
the repository) and is silently missing from a non-editable one. .ci/check_install.sh
checks both installs for real; this test catches the omission in the default test run.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info < (3, 11):
    pytest.skip("tomllib needs Python 3.11", allow_module_level=True)

import tomllib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setuptools_cfg() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def _packages_under(folder: Path, name: str) -> set[str]:
    """Dotted names of ``folder`` and every folder below it that holds an __init__.py.
    A folder with .py files but no __init__.py is an error: setuptools would skip it."""
    found = set()
    for d in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        rel = d.relative_to(folder).parts
        if any(part == "__pycache__" or part.startswith(".") for part in rel):
            continue
        dotted = ".".join((name, *rel))
        if (d / "__init__.py").is_file():
            found.add(dotted)
        elif any(d.glob("*.py")):
            raise AssertionError(f"{d} holds Python files but no __init__.py, so {dotted} "
                                 f"would not be installed")
    return found


def test_package_dir_maps_kernels(setuptools_cfg):
    assert setuptools_cfg["package-dir"] == {"pixcontrast": "pixcontrast",
                                             "pixcontrast.kernels": "kernels"}
    assert (ROOT / "kernels" / "__init__.py").is_file()
    # A pixcontrast/kernels/ folder would shadow kernels/ in an editable install.
    assert not (ROOT / "pixcontrast" / "kernels").exists()


def test_packages_are_the_package_folders(setuptools_cfg):
    listed = setuptools_cfg["packages"]
    assert len(listed) == len(set(listed)), f"duplicates in {listed}"
    on_disk = (_packages_under(ROOT / "pixcontrast", "pixcontrast")
               | _packages_under(ROOT / "kernels", "pixcontrast.kernels"))
    assert set(listed) == on_disk, (
        f"pyproject.toml [tool.setuptools] packages lists {sorted(listed)}; the package "
        f"folders are {sorted(on_disk)} (missing: {sorted(on_disk - set(listed))}, "
        f"extra: {sorted(set(listed) - on_disk)})")


def test_torch_is_not_a_build_requirement():
    """The extension builds against the installed torch (pip install --no-build-isolation);
    torch in build-system.requires would make isolated builds fetch a different one."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        build = tomllib.load(f)["build-system"]
    assert build["build-backend"] == "setuptools.build_meta"
    names = {canonicalize_name(Requirement(r).name) for r in build["requires"]}
    assert "setuptools" in names
    assert "torch" not in names


def test_setup_py_only_builds_the_extension():
    """The metadata is in pyproject.toml only: setup.py's setup() call does not repeat it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "id", getattr(n.func, "attr", None)) == "setup"]
    assert len(calls) == 1, "setup.py should call setup() once"
    keywords = {k.arg for k in calls[0].keywords}
    assert None not in keywords, "setup(**kwargs) hides what setup.py passes"
    metadata = {"packages", "package_dir", "py_modules", "name", "version", "description",
                "python_requires", "install_requires", "extras_require"}
    assert not keywords & metadata, (
        f"setup.py passes {sorted(keywords & metadata)}; these belong in pyproject.toml")
    names = {getattr(n.func, "id", getattr(n.func, "attr", None))
             for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not names & {"find_packages", "find_namespace_packages"}
