"""A fresh interpreter in which neither the Hub package (`modeling_mise`) nor the tools (`mise`) can be imported,
though both are installed: what a user of a saved folder with `trust_remote_code=True` has."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKED_PACKAGES = ("modeling_mise", "mise")

BLOCK_IMPORT = textwrap.dedent(
    f"""
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED_PACKAGES!r}:  # the packages themselves, not `mise_...` names
                raise ImportError(f"{{name}} is blocked in this process")
    sys.meta_path.insert(0, _Block())
    for _package in {BLOCKED_PACKAGES!r}:
        try:
            __import__(_package)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{{_package}} was importable")
    """
)


def run_clean(code: str, tmp_path: Path) -> str:
    """Run `code` in a fresh interpreter, away from the repository, without `modeling_mise` and `mise`; its
    stdout (the test fails with its stderr when it exits non-zero)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    workdir = tmp_path / "clean_cwd"
    workdir.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_IMPORT + textwrap.dedent(code)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout
