"""Serving's side (Python 3.9: MindSpore Serving 2.0.2 has no newer build): what runs beside MindSpore Serving, as
child processes of the serve command and behind its internal unix socket only. The master (Serving's master and
workers, the warm-up), the glue servable_config.py delegates to in the workers, and the export on first start.
Nothing here imports bert_squad.front or bert_squad.server (tests/test_boundary.py)."""
