"""MedicalPatchNet in plain PyTorch: ``patchnet`` (the model), ``efficientnet`` (its backbone),
``checkpoint`` (load/save), ``batchnorm`` (calibration of random weights), ``sample_patches``
(image-like inputs). Nothing is imported here, so ``cxr_edge.model.checkpoint`` helpers stay
importable without torch until a model is built."""
