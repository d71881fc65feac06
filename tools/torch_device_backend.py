"""A ``DeviceBackend`` over PyTorch on CUDA: proves the device path where TensorRT is absent.

Not part of the product (tests and tools/gpu_check.sh only). It implements the same contract as
``TensorRtBackend`` (cxr_edge/backends/base.py): a 256-byte aligned input buffer of
``chunk_patches`` patches that the CUDA tile kernel fills on ``stream_handle``, and
``run_device_input(rows, out_ptr)``, which runs the model on that stream and writes the
``(rows, C) float32`` logits at a device address (the GPU postprocess's logits buffer) with a
device-to-device copy on the same stream. With it the whole device path - upload, GPU tiling,
model, fused postprocess, overlay - runs on any CUDA machine that has torch and cuda-python.

Float32 throughout: TF32 is switched off for matmuls and convolutions (it would move logits by
about 1e-3 relative), process-wide, which is why this lives in tools/.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxr_edge.gpu import Stream, copy_device
from cxr_edge.metadata import ModelMetadata


class TorchDeviceBackend:
    """``model``: a patch model ``(N, 1, P, P) -> (N, C)`` (e.g. a MedicalPatchNet), moved to
    ``device``; ``metadata``: its ModelMetadata; ``chunk_patches``: patches per engine call."""

    name = "torch-cuda"
    thread_safe = False  # one input buffer

    def __init__(
        self, model: Any, metadata: ModelMetadata, chunk_patches: int = 2048, device: str = "cuda"
    ) -> None:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self._torch = torch
        self.metadata = metadata
        self.chunk_patches = int(chunk_patches)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        patch = metadata.patch_size
        with torch.cuda.stream(self._stream):
            self._input = torch.zeros(
                (self.chunk_patches, 1, patch, patch), dtype=torch.float32, device=self.device
            )
        self._stream.synchronize()
        if self._input.data_ptr() % 256:
            raise RuntimeError("torch gave an input buffer that is not 256-byte aligned")
        self._row_bytes = metadata.num_classes * 4

    @property
    def stream_handle(self) -> int:
        return int(self._stream.cuda_stream)

    def input_address(self) -> int:
        return int(self._input.data_ptr())

    def run_device_input(self, rows: int, out_ptr: int) -> None:
        """Model on the first ``rows`` patches of the input buffer; logits to ``out_ptr``."""
        torch = self._torch
        if not 1 <= rows <= self.chunk_patches:
            raise ValueError(f"{rows} patches; this backend takes 1..{self.chunk_patches}")
        with torch.cuda.stream(self._stream), torch.inference_mode():
            logits = self.model(self._input[:rows]).float().contiguous()
            # Same stream: the copy runs after the model, and the caching allocator reuses the
            # logits' memory only for work enqueued later on this stream.
            copy_device(int(logits.data_ptr()), out_ptr, rows * self._row_bytes, Stream(self.stream_handle))

    def _upload(self, host_rows: np.ndarray) -> None:
        torch = self._torch
        with torch.cuda.stream(self._stream):
            staged = torch.from_numpy(np.ascontiguousarray(host_rows, dtype=np.float32)).pin_memory()
            self._input[: len(host_rows)].copy_(staged, non_blocking=True)
        self._stream.synchronize()  # the pinned copy must outlive the transfer

    def run_device(self, patches: np.ndarray, out_ptr: int | None = None) -> int:
        """Host patches -> logits at ``out_ptr`` (required here), chunk by chunk."""
        if out_ptr is None:
            raise ValueError("TorchDeviceBackend.run_device needs an output address")
        for start in range(0, len(patches), self.chunk_patches):
            chunk = patches[start : start + self.chunk_patches]
            self._upload(chunk)
            self.run_device_input(len(chunk), out_ptr + start * self._row_bytes)
        return out_ptr

    def run(self, patches: np.ndarray) -> np.ndarray:
        """``(N, 1, P, P) float32`` -> ``(N, C) float32`` on the host."""
        torch = self._torch
        out = np.empty((len(patches), self.metadata.num_classes), dtype=np.float32)
        for start in range(0, len(patches), self.chunk_patches):
            chunk = patches[start : start + self.chunk_patches]
            self._upload(chunk)
            with torch.cuda.stream(self._stream), torch.inference_mode():
                out[start : start + len(chunk)] = self.model(self._input[: len(chunk)]).float().cpu().numpy()
        return out

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        self._stream.synchronize()
