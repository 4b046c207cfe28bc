"""NNCF's quantizer extension: built per environment, and a build killed midway does not block the
next run (real compiler, real torch JIT builder, in a private cache folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qacompress.core.extensions import TORCH_LOCK, environment_build_root

# qacompress's INFO lines ("building ...", "waiting for another process ...") go to stderr.
BUILD = (
    "import logging; log = logging.getLogger('qacompress'); log.setLevel(logging.INFO); "
    "log.addHandler(logging.StreamHandler()); "
    "from qacompress.core.extensions import ensure_quantizer_extension as e; print('compiled', e())"
)


def clean_env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_EXTENSIONS_DIR", "QACOMPRESS_OWNS_TORCH_EXTENSIONS_DIR")}
    env.update(XDG_CACHE_HOME=str(cache), PYTHONUNBUFFERED="1", **extra)
    return env


def build_dir_under(root: Path) -> Path:
    return root / "nncf" / "quantized_functions_cpu" / torch.__version__


def test_each_environment_builds_in_its_own_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    here = environment_build_root()
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "another-venv"))
    there = environment_build_root()
    assert here != there and here.parent == there.parent == tmp_path / "qacompress" / "torch_extensions"


@pytest.mark.slow
def test_a_build_killed_midway_does_not_block_the_next_run(tmp_path):
    env = clean_env(tmp_path)
    probe = subprocess.run(
        [sys.executable, "-c", "from qacompress.core.extensions import environment_build_root as r; print(r())"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lock = build_dir_under(Path(probe.stdout.strip())) / TORCH_LOCK
    first = subprocess.Popen([sys.executable, "-c", BUILD], env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 600  # a bound on waiting, not a speed check: start-up is slow on a loaded machine
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.exists(), "the build never started"
    time.sleep(2)  # the compiler is running now
    os.killpg(first.pid, signal.SIGKILL)  # the build process and its compiler children
    first.wait()
    assert lock.exists(), "a killed build leaves torch's lock behind"

    second = subprocess.run([sys.executable, "-c", BUILD], env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "compiled True" in second.stdout  # the C++ kernels, not NNCF's slower fallback
    assert "interrupted build" in second.stderr and not lock.exists()
    assert "building NNCF's CPU quantizer extension" in second.stderr  # the INFO lines do show
    # A third run finds the build finished and neither rebuilds nor waits (said by its log lines, not
    # timed: on a loaded 2-core machine even a plain start-up can take minutes).
    third = subprocess.run([sys.executable, "-c", BUILD], env=env, capture_output=True, text=True, timeout=600)
    assert "compiled True" in third.stdout
    assert "building" not in third.stderr and "waiting" not in third.stderr, third.stderr[-2000:]


def test_a_lock_in_the_users_own_folder_is_reported_in_one_line(tmp_path):
    """Where the user chose TORCH_EXTENSIONS_DIR another program may be building: say what to remove."""
    root = tmp_path / "ext"
    lock = build_dir_under(root) / TORCH_LOCK
    lock.parent.mkdir(parents=True)
    lock.touch()
    script = (
        "import sys\n"
        "from qacompress.core.errors import QACompressError\n"
        "from qacompress.core.extensions import ensure_quantizer_extension\n"
        "try:\n    ensure_quantizer_extension()\nexcept QACompressError as e:\n    print(e); sys.exit(2)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env=clean_env(tmp_path, TORCH_EXTENSIONS_DIR=str(root)),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stdout.strip()
    assert "\n" not in line and f"rm {lock}" in line
    assert lock.exists(), "a lock in the user's folder is not ours to remove"
