"""The model: find, fetch, verify and cache the ONNX file, run it, build stand-ins."""
