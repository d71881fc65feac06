"""Custom CUDA kernels (tiling, fused shift-averaging postprocess, overlay) and their binding;
``CudaDeviceImage`` tiles on the GPU into an engine's input.

Optional: the CPU path never imports this package. ``gpu_accumulator_factory()`` gives the
pipeline a ``GpuPostprocess`` factory when the library, cuda-python and a GPU are present, else
None (the numpy ``SaliencyAccumulator`` stays the default and the oracle).
"""

from cxr_edge.cuda.kernels import CudaKernels, find_library, load_kernels
from cxr_edge.cuda.postprocess import GpuPostprocess, gpu_accumulator_factory, gpu_postprocess_available
from cxr_edge.cuda.tiling import CudaDeviceImage

__all__ = [
    "CudaDeviceImage",
    "CudaKernels",
    "GpuPostprocess",
    "find_library",
    "gpu_accumulator_factory",
    "gpu_postprocess_available",
    "load_kernels",
]
