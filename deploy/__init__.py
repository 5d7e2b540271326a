"""Deployment: MindIR and ONNX export, and the ONNX Runtime session that runs the exported graph."""
