"""NNCF as a dependency: its C++ fake-quantize kernels, built once per environment and never left
half-built, and its import without the noise of the libraries it pulls in.

NNCF compiles its quantizer extension with torch's JIT builder the first time a quantizer runs, and
gives up after 60 s (`ExtensionLoaderTimeoutException`): on a busy 2-core machine the first QAT run
can die there. A build killed midway leaves torch's `lock` file behind, and every later run waits on
it until it times out. The default build folder (`~/.cache/torch_extensions/py311_cpu`) is shared by
every environment with the same Python and torch, whose differing source paths make them rebuild
each other's extension.

`ensure_quantizer_extension()` fixes all three before the first quantizer runs: it points torch's
builder at a folder of this environment (unless `TORCH_EXTENSIONS_DIR` is set), builds under an OS
file lock (released by the kernel if the process dies, so a `lock` file found while holding it was
left by a dead build and is removed), with a log line instead of a timeout, and falls back to NNCF's
pure-torch functions, as NNCF does, if compiling fails.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from qacompress.core.atomic import file_lock
from qacompress.core.errors import QACompressError

logger = logging.getLogger(__name__)

#: Torch's own lock file inside a build folder (torch.utils.file_baton.FileBaton).
TORCH_LOCK = "lock"
#: Our lock beside it: held (flock) by whichever qacompress process is building.
BUILD_LOCK = "qacompress-build.lock"
#: Set when qacompress chose the folder itself (then it may clear a dead build's lock).
_OWNED_ENV = "QACOMPRESS_OWNS_TORCH_EXTENSIONS_DIR"


def environment_build_root() -> Path:
    """A build folder of this Python environment: `~/.cache/qacompress/torch_extensions/<env-hash>`."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    tag = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:12]
    return cache / "qacompress" / "torch_extensions" / tag


def _use_environment_root() -> bool:
    """Point torch's extension builder at this environment's folder unless the user chose one."""
    if os.environ.get("TORCH_EXTENSIONS_DIR") and not os.environ.get(_OWNED_ENV):
        return False
    root = environment_build_root()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["TORCH_EXTENSIONS_DIR"] = str(root)
    os.environ[_OWNED_ENV] = "1"
    return True


def _clear_dead_lock(build_dir: Path, owned: bool) -> None:
    """Remove torch's `lock` left by a killed build, or say how to when the folder is the user's."""
    lock = build_dir / TORCH_LOCK
    if not lock.exists():
        return
    if owned:
        logger.warning("removed %s, left by an interrupted build of NNCF's quantizer extension", lock)
        lock.unlink(missing_ok=True)
        return
    raise QACompressError(
        f"a build lock {lock} is in the way of NNCF's quantizer extension (left by an interrupted build, or "
        f"another program is building there): when nothing else is building, remove it (rm {lock}) and run again"
    )


@functools.lru_cache(maxsize=None)
def ensure_quantizer_extension(device_type: str = "cpu") -> bool:
    """Build (or load) NNCF's quantizer extension for `device_type` before NNCF needs it.

    Returns True when the compiled kernels are in use, False when NNCF will fall back to its
    reference functions (slower training, same arithmetic). Safe to call from every process of a
    `torchrun` job: one builds, the others wait and then load.
    """
    owned = _use_environment_root()
    import nncf
    from nncf.torch.quantization import extensions as nncf_extensions
    from nncf.torch.quantization.reference import ReferenceQuantizedFunctions

    loader = nncf_extensions.QuantizedFunctionsCUDALoader if device_type == "cuda" else (
        nncf_extensions.QuantizedFunctionsCPULoader
    )
    build_dir = Path(loader.get_build_dir())
    def busy() -> None:
        logger.info("waiting for another process to finish building NNCF's quantizer extension in %s", build_dir)

    with file_lock(build_dir / BUILD_LOCK, on_busy=busy):
        _clear_dead_lock(build_dir, owned)
        built = (build_dir / f"{loader.name()}.so").is_file()
        if not built:
            logger.info("building NNCF's %s quantizer extension once for this environment (a minute or two) in %s",
                        device_type.upper(), build_dir)
        start = time.perf_counter()
        try:
            module = loader.load()  # compiles if needed; no timeout here, unlike NNCF's lazy loader
        except nncf.InstallationError as exc:  # only the CUDA loader raises; the CPU one falls back
            raise QACompressError(f"NNCF could not compile its {device_type.upper()} quantizer kernels: "
                                  f"{str(exc).splitlines()[0]}") from None
        if not built:
            logger.info("built NNCF's quantizer extension in %.0f s", time.perf_counter() - start)
    # NNCF's lazy loader will load the finished build again; with the .so in place it takes a moment.
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")
    return module is not ReferenceQuantizedFunctions


def import_nncf():
    """Import NNCF quietly: torchao, which it imports, logs missing CUDA kernels on CPU machines."""
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nncf
        import nncf.torch  # noqa: F401
    logging.getLogger("nncf").setLevel(logging.WARNING)
    return nncf
