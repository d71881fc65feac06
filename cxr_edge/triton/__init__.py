"""NVIDIA Triton Inference Server: a model repository for cxr-edge, its server-side models, and a client.

- ``protocol``: model, tensor and parameter names shared by the repository, the models and the client.
- ``repository``: ``export_repository`` writes a Triton model repository (``whole`` or ``split`` layout).
- ``model_cxr_edge``, ``model_patchnet``: the Python-backend ``model.py`` files it copies.
- ``serving``: what the server-side models share (parsed arguments, one-line errors) and the
  PatchBackend the ``split`` layout's image model uses to call ``patchnet`` through BLS.
- ``client``: ``TritonCxrEdge``, the remote twin of ``cxr_edge.pipeline.CxrEdge``.
- ``server``: start the ``tritonserver`` of the ``nvidia-pytriton`` wheel on loopback (tests, bench).

Nothing here imports ``tritonclient`` or ``triton_python_backend_utils`` at import time.
"""
