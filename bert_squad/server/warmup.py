"""The warm-up question: the master asks it before it reports ready, /readyz asks it as its probe."""

WARMUP_QUESTION = "Who wrote the plays?"
WARMUP_CONTEXT = "The plays were written by William Shakespeare in London."
