"""The packages' seams: certification and bounds never depend on training."""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "cure_jax"
# Library packages and the packages they may import (besides themselves).
ALLOWED = {
  "bounds": set(),
  "attacks": {"bounds"},
  "models": {"bounds"},
  "perturbations": {"bounds"},
  "certify": {
    "bounds",
    "models",
    "attacks",
    "data",
    "parallel",
    "perturbations",
  },
}
SHARED = {
  "types",
  "checkpoint",
  "config_schema",
  "host_memory",
  "workdir",
}  # any package may use


def _imported_packages(path: pathlib.Path) -> set[str]:
  """cure_jax subpackages a file imports, at module level or in a function."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    for name in names:
      parts = name.split(".")
      if parts[0] == "cure_jax" and len(parts) > 1:
        found.add(parts[1])
  return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_library_packages_import_only_what_their_layer_allows(package):
  allowed = ALLOWED[package] | SHARED | {package}
  for path in sorted((PACKAGE / package).rglob("*.py")):
    if path.name == "__main__.py":
      continue  # command-line entry points may use training too
    extra = _imported_packages(path) - allowed
    assert not extra, f"{path.relative_to(PACKAGE)} imports cure_jax.{extra}"


def test_importing_certification_and_bounds_leaves_training_out():
  code = (
    "import sys, cure_jax.certify, cure_jax.certify.beyond_lp, cure_jax.bounds;"
    "print(sorted(m for m in sys.modules if m.startswith('cure_jax.train')))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True
  )
  assert out.stdout.strip() == "[]"
