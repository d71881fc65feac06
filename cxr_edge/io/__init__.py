"""Reading X-rays: PNG/JPEG through OpenCV, DICOM through pydicom, all to the reference's "L" image."""

from cxr_edge.io.xray import XrayImage, load_xray

__all__ = ["XrayImage", "load_xray"]
