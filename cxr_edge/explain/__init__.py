"""Exact, non-generative explanations of a ``Prediction``, computed from its patch logits and maps.

- ``evidence``: what "evidence for a finding" is (the positive part of its map) and its share
  in a region (the border band, a zone, outside the body);
- ``decisive``: the smallest set of patches whose neutralisation reverses a call;
- ``body``: a body mask from the radiograph's own background;
- ``rationale``: one templated sentence per finding, with patient- or image-side zones;
- ``shortcuts``: warnings when evidence sits on the border or outside the body.
- ``explanations``: all of them for one prediction at once (``explain``), the image regions
  computed once, for the report, the overlays and the findings table.

Every function reads a ``Prediction`` and returns plain values; nothing here draws or writes.
"""
