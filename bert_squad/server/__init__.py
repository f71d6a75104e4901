"""The serve command, its health endpoints, and the glue servable_config.py delegates to."""
