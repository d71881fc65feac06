"""A DICOM node (``cxr-edge serve-dicom``): receive CR/DX chest radiographs, infer, forward the
DICOM results (SC + SR) to the PACS. Modules: ``destinations`` (AE@HOST:PORT), ``spool``
(durable bounded queue), ``scp`` (receiving), ``sender`` (forwarding), ``worker`` (infer and
deliver with retries), ``log`` (structured lines), ``node`` (all of it together).

Needs the ``dicom`` extra (pynetdicom, highdicom). See docs/dicom.md.
"""
