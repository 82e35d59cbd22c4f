"""Import the NVIDIA stack on demand, turning its absence into one line that says what to install.

`ssae edge --help`, the CPU daemon and the tests run on boxes without TensorRT, pycuda or a CUDA
build of torch; only the backend that needs one imports it, through these functions.
"""

from __future__ import annotations

from edge.errors import UserError

INSTALL_TRT = (
    "install TensorRT 10 for Python (JetPack ships it; on x86: pip install tensorrt from NVIDIA's index) "
    "and pycuda (pip install 'ssae-inspect[nvidia]', built against the local CUDA driver)"
)


class GpuStackMissing(UserError):
    """A GPU library or device is missing; the message names what to install or which backend to use instead."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:
        raise GpuStackMissing(f"the TensorRT backend needs the tensorrt package, which cannot be imported here ({e}); {INSTALL_TRT}") from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise GpuStackMissing(f"TensorRT {trt.__version__} found; the TensorRT backend uses the TensorRT 10 API: {INSTALL_TRT}")
    return trt


def import_pycuda():
    """pycuda.driver, initialised. pycuda.autoinit is avoided: it makes a context global to the process."""
    try:
        import pycuda.driver as cuda
    except (ImportError, OSError) as e:
        raise GpuStackMissing(f"the TensorRT backend needs pycuda, which cannot be imported here ({e}); {INSTALL_TRT}") from None
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            raise GpuStackMissing("pycuda finds no CUDA device; check the driver (nvidia-smi) or use backend = \"onnxruntime\"")
    except cuda.Error as e:
        raise GpuStackMissing(f"CUDA driver unusable ({e}); check the driver (nvidia-smi) or use backend = \"onnxruntime\"") from None
    return cuda


def import_torch(device: str):
    """torch, checked to reach `device` ("cuda", "cuda:1" or "cpu")."""
    try:
        import torch
    except ImportError as e:
        raise GpuStackMissing(f"the torch-cuda backend needs torch ({e}); install a CUDA build of torch, or use backend = \"onnxruntime\"") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GpuStackMissing(
            f"the torch-cuda backend needs CUDA, but torch {torch.__version__} sees no GPU "
            "(a CPU-only build, or no driver); install a CUDA build of torch, or use backend = \"onnxruntime\""
        )
    return torch
