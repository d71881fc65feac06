"""ctypes binding of ``libcxr_edge_cuda.so`` (cxr_edge/cuda/saliency.cu).

The library is found in ``$CXR_EDGE_CUDA_LIB``, then next to this file, then in ``<repo>/build/``
(``tools/build_cuda.sh``). Launchers take integer device addresses and an integer
``cudaStream_t``; a non-zero status from the library becomes a one-line ``CxrEdgeError``.
Nothing here imports cuda-python until device memory is needed, and loading the library needs
no GPU (the CUDA runtime is linked statically).
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import numpy as np

from cxr_edge.errors import CxrEdgeError

LIBRARY_NAME = "libcxr_edge_cuda.so"
LIBRARY_ENV = "CXR_EDGE_CUDA_LIB"
BUILD_HINT = "build it with 'tools/build_cuda.sh' (cmake -S . -B build && cmake --build build) or set CXR_EDGE_CUDA_LIB"

FLOAT32 = 0
FLOAT16 = 1
MAX_STEPS = 128
MAX_OVERLAYS = 64
STATUS_CUDA_ERROR = 9
STATUS_SHARED_MEMORY = 10
#: The device attribute the column pass's shared memory is checked against.
SHARED_MEMORY_ATTRIBUTE = "cudaDevAttrMaxSharedMemoryPerBlockOptin"

_DTYPE_CODES = {np.dtype(np.float32): FLOAT32, np.dtype(np.float16): FLOAT16}


class TileParams(ctypes.Structure):
    """Mirror of ``cxr_tile_params``: shifts ``[shift_begin, shift_end)`` of S*S."""

    _fields_ = [
        ("image_size", ctypes.c_int),
        ("patch_size", ctypes.c_int),
        ("steps", ctypes.c_int),
        ("shift_begin", ctypes.c_int),
        ("shift_end", ctypes.c_int),
        ("out_dtype", ctypes.c_int),
    ]


class PostprocessParams(ctypes.Structure):
    """Mirror of ``cxr_postprocess_params``."""

    _fields_ = [
        ("image_size", ctypes.c_int),
        ("patch_size", ctypes.c_int),
        ("steps", ctypes.c_int),
        ("num_classes", ctypes.c_int),
        ("logits_dtype", ctypes.c_int),
    ]


class PostprocessBuffers(ctypes.Structure):
    """Mirror of ``cxr_postprocess_buffers``: device addresses, None for optional outputs."""

    _fields_ = [
        ("logits", ctypes.c_void_p),
        ("shift_logits", ctypes.c_void_p),
        ("image_logits", ctypes.c_void_p),
        ("probabilities", ctypes.c_void_p),
        ("raw", ctypes.c_void_p),
        ("scaled", ctypes.c_void_p),
        ("workspace", ctypes.c_void_p),
    ]


class OverlayParams(ctypes.Structure):
    """Mirror of ``cxr_overlay_params`` (render.overlay's inputs other than the arrays)."""

    _fields_ = [
        ("image_size", ctypes.c_int),
        ("height", ctypes.c_int),
        ("width", ctypes.c_int),
        ("crop_top", ctypes.c_int),
        ("crop_left", ctypes.c_int),
        ("crop_side", ctypes.c_int),
        ("num_overlays", ctypes.c_int),
        ("alpha_max", ctypes.c_float),
        ("map_index", ctypes.c_int * MAX_OVERLAYS),
        ("vmax", ctypes.c_float * MAX_OVERLAYS),
        ("lut", ctypes.c_ubyte * (256 * 3)),
    ]


_STRUCTS = (TileParams, PostprocessParams, PostprocessBuffers, OverlayParams)


def dtype_code(dtype: np.dtype | type | str) -> int:
    """Library dtype code of float32 / float16; CxrEdgeError for anything else."""
    dt = np.dtype(dtype)
    if dt not in _DTYPE_CODES:
        raise CxrEdgeError(None, f"CUDA kernels take float32 or float16, not {dt}")
    return _DTYPE_CODES[dt]


def library_candidates() -> list[Path]:
    """Where the library is looked for, in order."""
    env = os.environ.get(LIBRARY_ENV)
    if env:
        return [Path(env)]  # an explicit override is the only candidate
    here = Path(__file__).resolve().parent
    return [here / LIBRARY_NAME, here.parents[1] / "build" / LIBRARY_NAME]


def find_library() -> Path | None:
    """The first existing candidate, or None."""
    return next((p for p in library_candidates() if p.is_file()), None)


class CudaKernels:
    """The loaded library: typed, checked wrappers around its extern "C" functions."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._lib = ctypes.CDLL(str(self.path))
        except OSError as exc:
            raise CxrEdgeError(self.path, f"cannot load the CUDA kernel library ({exc})") from exc
        try:
            self._declare(self._lib)
        except AttributeError as exc:  # a symbol is missing: an older build of the library
            raise CxrEdgeError(self.path, f"outdated CUDA kernel library ({exc}); rebuild it") from exc

    def _declare(self, lib: ctypes.CDLL) -> None:
        lib.cxr_status_string.restype = ctypes.c_char_p
        lib.cxr_status_string.argtypes = [ctypes.c_int]
        lib.cxr_last_cuda_error_string.restype = ctypes.c_char_p
        lib.cxr_struct_size.argtypes = [ctypes.c_int]
        lib.cxr_shift_offsets.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.cxr_device_count.argtypes = [ctypes.POINTER(ctypes.c_int)]
        lib.cxr_postprocess_workspace_bytes.argtypes = [
            ctypes.POINTER(PostprocessParams),
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_size_t),
        ]
        lib.cxr_postprocess_shared_bytes.argtypes = [
            ctypes.POINTER(PostprocessParams),
            ctypes.POINTER(ctypes.c_size_t),
        ]
        lib.cxr_device_shared_memory_optin.argtypes = [ctypes.POINTER(ctypes.c_int)]
        lib.cxr_tile_launch.argtypes = [
            ctypes.POINTER(TileParams),
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.cxr_postprocess_launch.argtypes = [
            ctypes.POINTER(PostprocessParams),
            ctypes.POINTER(PostprocessBuffers),
            ctypes.c_void_p,
        ]
        lib.cxr_overlay_launch.argtypes = [
            ctypes.POINTER(OverlayParams),
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        for which, struct in enumerate(_STRUCTS):
            native = lib.cxr_struct_size(which)
            if native != ctypes.sizeof(struct):
                raise CxrEdgeError(
                    self.path,
                    f"{struct.__name__} is {ctypes.sizeof(struct)} bytes here, {native} in the library; rebuild it",
                )

    def check(self, status: int, what: str) -> None:
        """Raise CxrEdgeError for a non-zero library status (with the CUDA error text if any)."""
        if status == 0:
            return
        text = self._lib.cxr_status_string(status).decode()
        if status == STATUS_CUDA_ERROR:
            text = f"{text}: {self._lib.cxr_last_cuda_error_string().decode()}"
        raise CxrEdgeError(None, f"{what} failed: {text}")

    def shift_offsets(self, steps: int, patch_size: int) -> np.ndarray:
        """The library's sorted shift offsets ``(S,) int64`` (host only, no GPU needed)."""
        out = np.zeros(max(int(steps), 1), dtype=np.int32)
        self.check(
            self._lib.cxr_shift_offsets(
                int(steps), int(patch_size), out.ctypes.data_as(ctypes.POINTER(ctypes.c_int))
            ),
            "cxr_shift_offsets",
        )
        return out.astype(np.int64)

    def device_count(self) -> int:
        """CUDA devices visible to the library's runtime; 0 without a driver or GPU."""
        count = ctypes.c_int(0)
        self._lib.cxr_device_count(ctypes.byref(count))
        return int(count.value)

    def workspace_bytes(self, params: PostprocessParams, raw: bool, scaled: bool) -> int:
        size = ctypes.c_size_t(0)
        self.check(
            self._lib.cxr_postprocess_workspace_bytes(
                ctypes.byref(params), int(raw), int(scaled), ctypes.byref(size)
            ),
            "cxr_postprocess_workspace_bytes",
        )
        return int(size.value)

    def shared_bytes(self, params: PostprocessParams) -> int:
        """Dynamic shared memory per block the column pass needs (host only, no GPU needed)."""
        size = ctypes.c_size_t(0)
        self.check(
            self._lib.cxr_postprocess_shared_bytes(ctypes.byref(params), ctypes.byref(size)),
            "cxr_postprocess_shared_bytes",
        )
        return int(size.value)

    def shared_memory_optin(self) -> int:
        """``cudaDevAttrMaxSharedMemoryPerBlockOptin`` of the current device, in bytes."""
        limit = ctypes.c_int(0)
        self.check(self._lib.cxr_device_shared_memory_optin(ctypes.byref(limit)), SHARED_MEMORY_ATTRIBUTE)
        return int(limit.value)

    def check_shared_memory(self, params: PostprocessParams) -> None:
        """CxrEdgeError naming the device limit when the column pass cannot run with ``params``."""
        problem = shared_memory_problem(params, self.shared_memory_optin())
        if problem:
            raise CxrEdgeError(None, problem)

    def tile(self, params: TileParams, image_ptr: int, out_ptr: int, stream: int = 0) -> None:
        """image ``(N, N) float32`` -> ``((k1-k0)*G*G, 1, P, P)`` patches at ``out_ptr``."""
        self.check(
            self._lib.cxr_tile_launch(ctypes.byref(params), image_ptr, out_ptr, stream or None), "tile kernel"
        )

    def postprocess(self, params: PostprocessParams, buffers: PostprocessBuffers, stream: int = 0) -> None:
        """Patch logits -> shift/image logits, probabilities and the requested maps."""
        status = self._lib.cxr_postprocess_launch(ctypes.byref(params), ctypes.byref(buffers), stream or None)
        if status == STATUS_SHARED_MEMORY:
            self.check_shared_memory(params)  # the same check, with the numbers in the message
        self.check(status, "postprocess kernels")

    def overlay(
        self,
        params: OverlayParams,
        gray_ptr: int,
        maps_ptr: int,
        out_ptr: int,
        vmax_ptr: int | None = None,
        stream: int = 0,
    ) -> None:
        """gray ``(h, w) uint8`` + maps ``(M, N, N) float32`` -> ``(num_overlays, h, w, 3) uint8``."""
        self.check(
            self._lib.cxr_overlay_launch(
                ctypes.byref(params), gray_ptr, maps_ptr, vmax_ptr or None, out_ptr, stream or None
            ),
            "overlay kernel",
        )


@functools.lru_cache(maxsize=4)
def _load(path: str) -> CudaKernels:
    return CudaKernels(path)


def load_kernels(path: str | Path | None = None) -> CudaKernels:
    """Load (once) the library at ``path`` or the first one found; CxrEdgeError when absent."""
    if path is None:
        found = find_library()
        if found is None:
            where = ", ".join(str(p) for p in library_candidates())
            raise CxrEdgeError(
                None, f"CUDA kernel library {LIBRARY_NAME} not found (looked in {where}); {BUILD_HINT}"
            )
        path = found
    path = Path(path)
    if not path.is_file():
        raise CxrEdgeError(path, f"no such CUDA kernel library; {BUILD_HINT}")
    return _load(str(path.resolve()))


def column_pass_shared_bytes(steps: int, image_size: int, patch_size: int, classes: int) -> int:
    """Bytes of shared memory per block of the column pass: ``S * C * (G + 1) * 4`` (the patch
    logits of S shifts in one patch row, ``(S, G, C)``, and their weights ``(S, C)``, float32).
    Mirrors ``cxr_postprocess_shared_bytes``; tests check the two agree."""
    grid = image_size // patch_size
    return steps * classes * (grid + 1) * 4


def max_classes(steps: int, image_size: int, patch_size: int, limit_bytes: int) -> int:
    """The most classes whose column pass fits ``limit_bytes`` of shared memory per block."""
    return limit_bytes // column_pass_shared_bytes(steps, image_size, patch_size, 1)


def shared_memory_problem(params: PostprocessParams, limit_bytes: int) -> str | None:
    """None when the column pass fits the device's opt-in shared memory, else the one-line reason."""
    steps, size, patch, classes = params.steps, params.image_size, params.patch_size, params.num_classes
    need = column_pass_shared_bytes(steps, size, patch, classes)
    if need <= limit_bytes:
        return None
    fit = max_classes(steps, size, patch, limit_bytes)
    return (
        f"{classes} classes at S={steps} need {need} bytes of shared memory per block in the CUDA "
        f"postprocess; this GPU allows {limit_bytes} ({SHARED_MEMORY_ATTRIBUTE}), enough for at most "
        f"{fit} classes at S={steps}: use the CPU postprocess or fewer steps"
    )


def tile_params(
    image_size: int, patch_size: int, steps: int, shift_begin: int, shift_end: int, dtype: object
) -> TileParams:
    return TileParams(image_size, patch_size, steps, shift_begin, shift_end, dtype_code(dtype))  # type: ignore[arg-type]


def overlay_params(
    image_size: int,
    shape: tuple[int, int],
    crop: object,
    map_index: list[int],
    vmax: list[float],
    alpha_max: float = 0.6,
) -> OverlayParams:
    """Overlay params for ``map_index`` maps over a display image of ``shape`` (h, w).

    crop: a ``CropBox`` (top, left, side); vmax: one value per overlay (ignored when the
    launch passes a device vmax array). The LUT is ``render.DIVERGING_LUT``, the oracle's.
    """
    from cxr_edge.render import DIVERGING_LUT

    if not 1 <= len(map_index) <= MAX_OVERLAYS or len(vmax) != len(map_index):
        raise CxrEdgeError(
            None, f"1..{MAX_OVERLAYS} overlays with one vmax each, got {len(map_index)} and {len(vmax)}"
        )
    params = OverlayParams()
    params.image_size = int(image_size)
    params.height, params.width = int(shape[0]), int(shape[1])
    params.crop_top, params.crop_left, params.crop_side = int(crop.top), int(crop.left), int(crop.side)  # type: ignore[attr-defined]
    params.num_overlays = len(map_index)
    params.alpha_max = float(alpha_max)
    for o, (m, v) in enumerate(zip(map_index, vmax)):
        params.map_index[o] = int(m)
        params.vmax[o] = float(v)
    ctypes.memmove(params.lut, np.ascontiguousarray(DIVERGING_LUT, dtype=np.uint8).ctypes.data, 256 * 3)
    return params
