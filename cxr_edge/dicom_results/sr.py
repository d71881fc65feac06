"""The Structured Report of one prediction: a TID 1500 Measurement Report in a Comprehensive SR.

Per finding (every label of the model, in label order) two measurement groups share one
Tracking UID:

- TID 1501 (image level): finding type (the label's concept, with a finding site where the
  concept needs one), Probability and Threshold Value (dimensionless), a qualitative evaluation
  Present/Absent (omitted when the model has no threshold), the source image, the algorithm;
- TID 1410 (planar ROI): the evidence peak as a POINT on the source image and the map's value
  there (Saliency, logit units), the same finding type and algorithm.

Why TID 1500 in a Comprehensive SR (docs/dicom.md): TID 1500 is the template PACS viewers and
archives parse for AI results (coded finding, numeric measurements, qualitative evaluations,
algorithm identification, image references); a POINT (SCOORD) needs the Comprehensive SR IOD.

Coordinates: ``cxr_edge.report.evidence_summary`` gives the peak at pixel-centre indices of
the original image (0-based, the centre of the first pixel is 0); DICOM SCOORD puts the top-left
corner of the image at (0, 0), so the centre of that pixel is (0.5, 0.5): we add 0.5.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_edge.dicom_results import codes
from cxr_edge.dicom_results.identity import model_label, model_sha256, series_description
from cxr_edge.dicom_results.sc import MANUFACTURER, OVERLAY_SERIES_NUMBER
from cxr_edge.dicom_results.uids import ResultUids

if TYPE_CHECKING:
    from cxr_edge.prediction import Prediction

REPORT_SERIES_NUMBER = OVERLAY_SERIES_NUMBER + 1
ALGORITHM_NAME = "MedicalPatchNet (cxr-edge)"

#: DICOM SCOORD origin is the corner of the top-left pixel; report.py's origin is its centre.
PIXEL_CENTRE = 0.5


def algorithm_version(prediction: Prediction) -> str:
    """TID 4019 Algorithm Version: the cxr-edge version that exported the model (its metadata's
    ``package_version``; Software Versions has the runtime's) and the model file's full sha256."""
    return f"cxr-edge {prediction.metadata.package_version}; model sha256 {model_sha256(prediction)}"


def algorithm_parameters(prediction: Prediction, map_kind: str) -> list[str]:
    md = prediction.metadata
    params = [
        f"variant {md.variant.name}",
        f"precision {md.precision}",
        f"steps per patch {prediction.steps}",
        f"map {map_kind}",
        f"backend {prediction.backend}",
    ]
    if md.intended_use:
        params.append(f"intended use: {md.intended_use}")
    return params


def build_structured_report(
    source: Any, prediction: Prediction, uids: ResultUids, map_kind: str = "scaled"
) -> Any:
    """The SR (a ``highdicom.sr.ComprehensiveSR``) of ``prediction`` made from the source dataset
    ``source``; ``map_kind``: the map whose peak is reported ("raw" or "scaled")."""
    import highdicom as hd

    from cxr_edge import __version__
    from cxr_edge.report import evidence_summary

    algorithm = hd.sr.AlgorithmIdentification(
        name=ALGORITHM_NAME,
        version=algorithm_version(prediction),
        parameters=algorithm_parameters(prediction, map_kind),
    )
    group_image = hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)
    region_image = hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID)
    groups: list[Any] = []
    for finding in prediction.findings:
        coded = codes.label_concept(finding.label)
        sites = [hd.sr.FindingSite(coded.site)] if coded.site is not None else None
        tracking_uid = uids.tracking(finding.label)
        measurements = [
            hd.sr.Measurement(name=codes.PROBABILITY, value=finding.probability, unit=codes.NO_UNITS)
        ]
        if finding.threshold is not None:
            measurements.append(
                hd.sr.Measurement(name=codes.THRESHOLD, value=finding.threshold, unit=codes.NO_UNITS)
            )
        evaluations = None
        if finding.positive is not None:
            presence = codes.PRESENT if finding.positive else codes.ABSENT
            evaluations = [hd.sr.QualitativeEvaluation(name=coded.concept, value=presence)]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=finding.label),
                finding_type=coded.concept,
                finding_sites=sites,
                algorithm_id=algorithm,
                measurements=measurements,
                qualitative_evaluations=evaluations,
                source_images=[group_image],
            )
        )
        peak = evidence_summary(prediction, finding.label, map_kind)["peak"]
        point = np.array([[peak["x"] + PIXEL_CENTRE, peak["y"] + PIXEL_CENTRE]], dtype=np.float64)
        peak_measurements = None
        if peak["value"] is not None:
            peak_measurements = [
                hd.sr.Measurement(name=codes.SALIENCY, value=peak["value"], unit=codes.LOGIT)
            ]
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=tracking_uid, identifier=f"{finding.label} evidence peak"
                ),
                referenced_region=hd.sr.ImageRegion(hd.sr.GraphicTypeValues.POINT, point, region_image),
                finding_type=coded.concept,
                finding_sites=sites,
                algorithm_id=algorithm,
                measurements=peak_measurements,
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(codes.DEVICE),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.device_observer,
            name="cxr-edge",
            manufacturer_name=MANUFACTURER,
            model_name=model_label(prediction)[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PROCEDURE_XR,
        imaging_measurements=groups,
    )
    schemes = None
    if codes.uses_local_scheme(prediction.labels):
        schemes = [
            hd.coding_schemes.CodingSchemeIdentificationItem(codes.LOCAL_SCHEME, codes.LOCAL_SCHEME_NAME)
        ]
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=uids.report_series,
        series_number=REPORT_SERIES_NUMBER,
        sop_instance_uid=uids.report_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # machine output, not signed off by a reader
        is_verified=False,
        series_description=series_description(prediction, "findings"),
        manufacturer_model_name=model_label(prediction)[:64],
        software_versions=f"cxr-edge {__version__}",
        coding_schemes=schemes,
    )
