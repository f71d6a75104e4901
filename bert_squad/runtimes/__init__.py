"""Inference engines behind the servable's model stage, one module each."""
