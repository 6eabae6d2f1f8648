"""Which code and which machine made a figure: labels for plots and logs."""

import importlib.metadata
import os
import platform
import subprocess

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> str | None:
  """``git args`` run in the package's folder; None outside a checkout."""
  try:
    result = subprocess.run(
      ["git", "-C", _PACKAGE_DIR, *args],
      capture_output=True,
      text=True,
      timeout=10,
      check=False,
    )
  except (OSError, subprocess.SubprocessError):
    return None
  return result.stdout.strip() if result.returncode == 0 else None


def code_version() -> str:
  """``cure_jax <version>`` and, in a git checkout, ``git <rev>[-dirty]``."""
  try:
    version = importlib.metadata.version("cure_jax")
  except importlib.metadata.PackageNotFoundError:
    version = "(not installed)"
  label = f"cure_jax {version}"
  revision = _git("rev-parse", "--short", "HEAD")
  if revision:
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    label += f", git {revision}{'-dirty' if dirty else ''}"
  return label


def machine() -> str:
  """The host name and its processor (or architecture)."""
  processor = platform.processor() or platform.machine() or "unknown processor"
  return f"{platform.node() or 'unknown host'} ({processor})"
