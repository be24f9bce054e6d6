"""The GPU config's shared libraries resolve on a machine without a GPU: loading a library needs no
driver. Each check runs in a fresh interpreter without LD_LIBRARY_PATH, as a user's process would.

- CTranslate2 (Whisper on CUDA): the CUDA library names it dlopens are read from its binary; each must
  be provided by stream.asr.cuda_libs' preloading (the gpu extra's CUDA 12 wheels), and after the
  preload a dlopen by bare soname (what CTranslate2 does) must return the wheel's file.
- torch (CLIP on CUDA): every CUDA library its CUDA-linked libraries need, and the cuDNN / NVRTC
  libraries it loads lazily on first use, load from torch's own wheels.
libcuda.so.1 is the NVIDIA driver's: it comes with the driver on a GPU host, never from a wheel.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stream.asr.cuda_libs import CT2_NEEDS, CUDA12_LIBS, wheel_file

DRIVER = {"libcuda.so.1"}
# CTranslate2 dlopens NCCL only for tensor parallelism across GPUs (not used by sentistream; torch's
# NCCL is in the process anyway on a GPU host).
CT2_OPTIONAL = {"libnccl.so.2"}
CUDA_NAME = re.compile(rb"lib(?:cu[a-zA-Z]+|nvrtc[a-zA-Z-]*|nccl|nvJitLink|nvshmem_host)\.so\.\d+(?:\.\d+)?")

gpu_extra = pytest.mark.skipif(
    any(wheel_file(dist, name) is None for dist, name in CUDA12_LIBS),
    reason="the gpu extra's CUDA 12 wheels are not installed, so CTranslate2's CUDA libraries cannot be checked "
    "(make install-gpu installs them; make install leaves them out: with them every `import torch` maps ~140 MB more)",
)


def _run(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ct2_library() -> Path:
    import ctranslate2

    libs = sorted((Path(ctranslate2.__file__).parent.parent / "ctranslate2.libs").glob("libctranslate2*.so*"))
    assert libs, "ctranslate2's bundled libctranslate2 not found"
    return libs[0]


def test_ctranslate2_asks_only_for_what_the_preload_provides():
    names = {m.decode() for m in CUDA_NAME.findall(_ct2_library().read_bytes())}
    assert "libcublas.so.12" in names, f"CTranslate2's CUDA libraries changed: {sorted(names)}"
    provided = {Path(n).name for _, n in CUDA12_LIBS}
    unprovided = names - DRIVER - CT2_OPTIONAL - provided
    # e.g. a CTranslate2 upgrade that starts dlopening libcudnn.so.9: the gpu extra must follow.
    assert not unprovided, f"CTranslate2 dlopens {sorted(unprovided)}, which stream.asr.cuda_libs does not provide"
    assert set(CT2_NEEDS) <= names


_LOADS = (
    "import ctypes, json, os\n"
    "def loads(n):\n"
    "    try:\n"
    "        ctypes.CDLL(n, mode=os.RTLD_LOCAL); return True\n"
    "    except OSError:\n"
    "        return False\n"
    "def mapped(part):\n"
    "    return sorted({l.split()[-1] for l in open('/proc/self/maps') if part in l})\n"
)


@gpu_extra
def test_ctranslate2_cuda12_libraries_load_after_preload():
    got = _run(
        _LOADS + "from stream.asr.cuda_libs import CT2_NEEDS, preload_cuda12_libs\n"
        "before = {n: loads(n) for n in CT2_NEEDS}\n"
        "loaded = preload_cuda12_libs()\n"
        "after = {n: loads(n) for n in (*CT2_NEEDS, 'libcublasLt.so.12', 'libnvrtc.so.12')}\n"
        "print(json.dumps({'before': before, 'after': after, 'loaded': sorted(loaded), 'paths': mapped('libcublas.so.12')}))\n"
    )
    if not any(got["before"].values()):  # (a system CUDA 12 would provide it anyway)
        assert got["before"] == {n: False for n in CT2_NEEDS}, got
    assert all(got["after"].values()), got  # CTranslate2's dlopen by bare soname now succeeds
    for _, pattern in CUDA12_LIBS:
        assert any(Path(name).match(pattern) for name in got["loaded"]), (pattern, got)
    # and gets exactly the wheel's file
    assert got["paths"] == [str(wheel_file("nvidia-cublas-cu12", "libcublas.so.12"))], got


@gpu_extra
def test_cuda12_preload_coexists_with_torchs_cuda13():
    """The GPU process: torch (CUDA 13 cuBLAS) first, then Whisper's CUDA 12 cuBLAS; one copy of each."""
    got = _run(
        _LOADS + "import torch\n"
        "from stream.asr.cuda_libs import preload_cuda12_libs\n"
        "preload_cuda12_libs()\n"
        "x = torch.ones(4, 4) @ torch.ones(4, 4)\n"
        "print(json.dumps({'v12': mapped('libcublas.so.12'), 'v13': mapped('libcublas.so.13'), 'ok': float(x.sum())}))\n"
    )
    assert got["v12"] == [str(wheel_file("nvidia-cublas-cu12", "libcublas.so.12"))], got
    assert len(got["v13"]) == 1 and "libcublas.so.13" in got["v13"][0], got
    assert got["ok"] == 64.0


_WHISPER_ON_CUDA = (
    "import json\n"
    "from stream.config import AsrConfig\n"
    "from stream.asr import cuda_libs\n"
    "from stream.asr.model import load_whisper\n"
    "from models.errors import UserError\n"
    "try:\n"
    "    load_whisper(AsrConfig(device='cuda', compute_type='float16'), shared=False); err = ''\n"
    "except UserError as e:\n"
    "    err = str(e)\n"
    "print(json.dumps({'err': err, 'preloaded': sorted(cuda_libs._loaded)}))\n"
)


@gpu_extra
def test_whisper_on_cuda_preloads_before_ctranslate2():
    got = _run(_WHISPER_ON_CUDA)
    assert "libcublas.so.12" in got["preloaded"], got
    # No GPU here: CTranslate2 then fails on the driver/device (one line), never on a missing library.
    assert "libcublas" not in got["err"] and "gpu extra" not in got["err"], got


def test_whisper_on_cuda_without_the_gpu_extra_says_how_to_install_it():
    if all(wheel_file(dist, name) for dist, name in CUDA12_LIBS):
        pytest.skip("the gpu extra is installed: the missing-wheels message cannot be seen here")
    got = _run(_LOADS + "print(json.dumps({'system': loads('libcublas.so.12')}))\n")
    if got["system"]:
        pytest.skip("a system CUDA 12 provides libcublas.so.12 here")
    got = _run(_WHISPER_ON_CUDA)
    assert got["err"].startswith("asr.device=cuda needs CUDA 12 cuBLAS") and "make install-gpu" in got["err"], got
    assert "\n" not in got["err"]


def _torch_cuda_libraries() -> list[Path]:
    import torch

    lib = Path(torch.__file__).parent / "lib"
    site = Path(torch.__file__).parent.parent
    libs = sorted(lib.glob("*.so"))  # loading each pulls in what it links (cuBLAS, cuDNN, NCCL, ...) through torch's RPATH
    # Loaded lazily on first use: NVRTC (libcaffe2_nvrtc links it, and the driver), its builtins, cuDNN's sub-libraries.
    libs += sorted(p for p in site.glob("nvidia/*/lib/libnvrtc*.so.*") if ".alt." not in p.name)
    libs += sorted((site / "nvidia" / "cudnn" / "lib").glob("libcudnn*.so.*"))
    return libs


def test_torch_cuda_libraries_load_without_a_gpu():
    import torch

    if torch.version.cuda is None:
        pytest.skip("this torch is a CPU-only build: the GPU config needs a CUDA build of torch")
    libs = _torch_cuda_libraries()
    assert any(p.name == "libtorch_cuda.so" for p in libs), libs
    assert any(p.name.startswith("libcudnn_cnn") for p in libs), "cuDNN's sub-libraries not found next to torch"
    got = _run(
        "import ctypes, json, os\n"
        f"libs = {json.dumps([str(p) for p in libs])}\n"
        "failed = {}\n"
        "for p in libs:\n"
        "    try:\n"
        "        ctypes.CDLL(p, mode=os.RTLD_LOCAL)\n"
        "    except OSError as e:\n"
        "        failed[p] = str(e)\n"
        "print(json.dumps(failed))\n"
    )
    # Only the driver may be missing here (libcaffe2_nvrtc links libcuda.so.1 directly).
    real = {p: e for p, e in got.items() if not any(d in e for d in DRIVER)}
    assert not real, real
    assert set(got) <= {str(p) for p in libs if p.name == "libcaffe2_nvrtc.so"}, got
