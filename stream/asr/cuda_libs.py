"""The CUDA 12 libraries CTranslate2 (faster-whisper's backend) loads on a GPU, found in the
`gpu` extra's wheels without LD_LIBRARY_PATH.

CTranslate2 4.x links the CUDA runtime statically and, on first GPU use, dlopens
``libcublas.so.12`` by name (cuBLAS pulls ``libcublasLt.so.12`` through its own RPATH and dlopens
``libnvrtc.so.12``, which dlopens its builtins). torch 2.14 brings CUDA 13 only (other sonames), so
those names resolve nowhere unless the system has a CUDA 12 toolkit. Loading each file once by its
full path, RTLD_LOCAL, makes the dynamic loader hand the same library to CTranslate2's later
``dlopen("libcublas.so.12")`` (it matches loaded objects by soname), and keeps their symbols out of
the global scope where torch's CUDA 13 libraries live (cuBLAS symbols are versioned per soname too).

cuDNN is not in the list: CTranslate2 4.8 does not reference it (tests/test_gpu_libs.py reads the
names from its binary and fails if that changes). Do not install nvidia-cudnn-cu12 next to torch:
it writes the same nvidia/cudnn/lib files as torch's nvidia-cudnn-cu13.
"""
from __future__ import annotations

import ctypes
import importlib.metadata as md
import os
import threading
from pathlib import Path

from models.errors import UserError

# (wheel, file name) in load order: dependencies first.
CUDA12_LIBS: tuple[tuple[str, str], ...] = (
    ("nvidia-cublas-cu12", "libcublasLt.so.12"),
    ("nvidia-cublas-cu12", "libcublas.so.12"),
    ("nvidia-cuda-nvrtc-cu12", "libnvrtc-builtins.so.12.*"),
    ("nvidia-cuda-nvrtc-cu12", "libnvrtc.so.12"),
)
# What CTranslate2 itself dlopens by name; the rest come with these.
CT2_NEEDS = ("libcublas.so.12",)
GPU_INSTALL_HINT = "install the gpu extra: make install-gpu, or pip install 'sentistream[gpu]'"

_loaded: dict[str, Path] = {}
_lock = threading.Lock()


def wheel_file(dist: str, pattern: str) -> Path | None:
    """The installed file of wheel `dist` whose name matches `pattern` (glob), or None."""
    try:
        wheel = md.distribution(dist)
    except md.PackageNotFoundError:
        return None
    for f in wheel.files or []:
        if Path(f.name).match(pattern) and ".alt." not in f.name:
            path = Path(str(wheel.locate_file(f)))
            if path.is_file():
                return path
    return None


def _resolvable(soname: str) -> bool:
    try:
        ctypes.CDLL(soname, mode=os.RTLD_LOCAL)
        return True
    except OSError:
        return False


def preload_cuda12_libs() -> dict[str, Path]:
    """Load CTranslate2's CUDA 12 libraries from the gpu extra's wheels (once per process).
    Returns {file name: path} of what it loaded. Raises UserError, one line, when neither the wheels
    nor a system CUDA 12 provide libcublas.so.12."""
    with _lock:
        if _loaded:
            return dict(_loaded)
        found = {pattern: wheel_file(dist, pattern) for dist, pattern in CUDA12_LIBS}
        if any(p is None for p in found.values()):
            if all(_resolvable(name) for name in CT2_NEEDS):
                return {}  # a system CUDA 12 (LD_LIBRARY_PATH, ldconfig) already provides them
            missing = ", ".join(pattern for pattern, p in found.items() if p is None)
            raise UserError(f"asr.device=cuda needs CUDA 12 cuBLAS for CTranslate2 ({missing} not found): {GPU_INSTALL_HINT}")
        for path in found.values():
            assert path is not None
            try:
                ctypes.CDLL(str(path), mode=os.RTLD_LOCAL)
            except OSError as exc:
                raise UserError(f"could not load {path.name} for CTranslate2 ({str(exc).splitlines()[0]}): {GPU_INSTALL_HINT}") from None
            _loaded[path.name] = path
        return dict(_loaded)
