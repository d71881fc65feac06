"""tools/gpu_check.sh cannot run without a GPU; here: it parses, is executable, and fails fast
with a one-line reason when a tool it needs is missing (the first thing it checks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "gpu_check.sh"


def test_gpu_check_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert os.access(SCRIPT, os.X_OK)
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text


def test_gpu_check_fails_fast_naming_the_missing_tool(tmp_path: Path) -> None:
    """PATH holds only ``dirname`` (all the script runs before its tool check), so nvidia-smi is
    missing on any machine and the check stops there, before anything is built or run."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    dirname = shutil.which("dirname")
    assert dirname is not None
    (bindir / "dirname").symlink_to(dirname)
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run(
        [bash, str(SCRIPT)],
        env={"PATH": str(bindir), "GPU_CHECK_OUT": str(tmp_path / "out")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("gpu_check: FAILED: 'nvidia-smi' is not on PATH")
    assert not (tmp_path / "out").exists()


def test_gpu_tools_show_their_help_without_a_gpu() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_device_path.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "--steps" in done.stdout, done.stderr
