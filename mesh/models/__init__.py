"""The model side of the mesh: manifests, the demo models, int8, calibration, the evidence gate.

Modules: ``manifest`` (the artifact's contract), ``demo`` (build the digits models),
``quantize`` (int8 variants), ``calibrate`` (escalation thresholds from evidence), ``validate``
(latency, memory and accuracy against the manifest), ``evaluate`` (the cascade's figures) and
``session`` (opening ONNX Runtime sessions for these tools).
"""
