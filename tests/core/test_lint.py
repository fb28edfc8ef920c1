"""ruff (lint and format, line length 100, configured in pyproject.toml) is clean on the tree."""

from __future__ import annotations

import subprocess
import sys

import pytest
from wfutil import REPO


def _ruff(*args: str) -> subprocess.CompletedProcess:
    try:
        import ruff  # noqa: F401  (installed with the test extra)
    except ImportError:  # a broken install, not a reason to skip
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True
    )


def test_ruff_check_is_clean():
    p = _ruff("check", "--no-cache", ".")
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]


def test_ruff_format_is_clean():
    p = _ruff("format", "--check", "--no-cache", ".")
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]


def test_ruff_is_configured_at_line_length_100():
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]
    assert cfg["line-length"] == 100 and sys.version_info >= (3, 11)
