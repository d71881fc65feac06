"""cxr-edge: edge runtime for MedicalPatchNet chest X-ray classification and saliency.

Pipeline: load -> preprocess -> tile -> backend (onnxruntime | tensorrt) -> postprocess -> render/report.
"""

__version__ = "0.1.0"
