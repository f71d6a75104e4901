"""The Prometheus metrics Serving's side records: the master (worker restarts) and the workers (the servable's
stages). They write into the directory the serve command names ($PROMETHEUS_MULTIPROC_DIR, set before any process
imports prometheus_client: it picks its multiprocess mode at import), and the front door's GET /metrics sums every
process's files (bert_squad/front/metrics.py); without that variable (a unit test, a script) a process counts for
itself."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

WORKER_RESTARTS = Counter("bert_squad_worker_restarts", "Times a Serving worker process exited (Serving restarts it)")
QUESTIONS = Counter("bert_squad_questions", "Questions the servable tokenized (every protocol)", ["outcome"])
STAGE = Histogram("bert_squad_stage_duration_seconds", "Time of one servable stage: preprocess and postprocess "
                  "per question, model per batch", ["stage"], buckets=STAGE_BUCKETS)
WINDOWS = Histogram("bert_squad_windows_per_question", "Windows one question's context was cut into",
                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 256))
TOKENS = Histogram("bert_squad_tokens_per_window", "Real (unpadded) tokens in one window",
                   buckets=(16, 32, 64, 96, 128, 192, 256, 320, 384))
