"""A fresh interpreter in which neither the Hub package (`modeling_mise`) nor the tools (`mise`) can be imported,
though both are installed: what a user of a saved folder with `trust_remote_code=True` has. The blocking is
`mise.hub.push.run_without_package`'s, the one `mise push` validates folders with; this adds a check that it
holds and the test's own `HF_HOME` and working directory."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mise.hub.push import run_without_package

BLOCKED_PACKAGES = ("modeling_mise", "mise")

# run first in the clean process: the blocking holds for both packages (and not for `mise_...` names)
CHECK_BLOCKED = f"""
for _package in {BLOCKED_PACKAGES!r}:
    try:
        __import__(_package)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{{_package}} was importable")
"""


def run_clean(code: str, tmp_path: Path) -> str:
    """Run `code` in a fresh interpreter, away from the repository, without `modeling_mise` and `mise`; its
    stdout (the test fails with its stderr when it exits non-zero)."""
    workdir = tmp_path / "clean_cwd"
    workdir.mkdir(exist_ok=True)
    result = run_without_package(
        CHECK_BLOCKED + "\n" + textwrap.dedent(code),
        cwd=workdir,
        env={"HF_HOME": str(tmp_path / "hf_home")},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout
