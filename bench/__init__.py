"""Benchmark of issue #6: this project's servable against ONNX Runtime and PyTorch on the same weights.

Entry point: `python bench/run.py` under the Python 3.9 server venv.
"""
