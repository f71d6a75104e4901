"""What both Pythons share: the serve command (Python 3.10+, bert_squad.server and bert_squad.front) and Serving's side
(Python 3.9, bert_squad.serving). This module: the environment variables and exit codes they hand each other; beside
it the warm-up question (warmup), the children's parent watch and /proc readings (processes), the log formats
(logs) and the metrics Serving's side records (serving_metrics). Only the standard library, protobuf (through
bert_squad_client) and prometheus_client: importable on both.

The serve command starts Serving's master in a child process on Python 3.9 (bert_squad/serving/master.py, through
bert_squad/server/supervisor.py), which starts Serving's workers; those import servable_config.py
(bert_squad/serving/servable_glue.py). Each side reads here what the other one sets, so a name or a code has one home.
"""

# Set by the serve process for the master and, through it, for the workers.
VERSION_ENV = "BERT_SQUAD_VERSION"  # the version folder the workers serve
THREADS_ENV = "BERT_SQUAD_THREADS"  # inference threads per worker
PIN_ENV = "BERT_SQUAD_PIN_CORES"  # "1": worker k computes on the k-th block of THREADS_ENV cores
# prometheus_client's: the directory every process writes its metrics to (metrics.py). The serve process sets it
# before any process imports prometheus_client, which picks its multiprocess mode at import: so it lives here,
# not in metrics.py, which the serve process may import only after setting it.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Set by the serve process for the master: the internal address (a unix socket in the workdir, relative to it, plain
# text) its gRPC endpoint listens on. Only the front door and the health probe dial it: every public port is the
# front door's.
MASTER_ADDRESS_ENV = "BERT_SQUAD_MASTER_ADDRESS"
# Set by the supervisor for the master: the pipe it reports on, one line: "ready <warm-up>" or
# "error <stage> <reason>", the stage that failed being one of these (the serve command counts a refused version by it).
READY_FD_ENV = "BERT_SQUAD_READY_FD"
STAGE_LOAD, STAGE_WARM_UP = "load", "warm_up"
# Set by each process for the ones it starts (serve process -> master or first export, master -> workers): its pid.
# A child checks at start, and then twice a second, that this is still its parent, and kills itself once it is not
# (processes.exit_with_parent): a serve command killed without a chance to clean up (SIGKILL, the OOM killer) leaves
# no master or worker holding the model's memory.
PARENT_PID_ENV = "BERT_SQUAD_PARENT_PID"

# Exit codes of the serve command and of the master process.
EXIT_START_FAILED = 2  # could not start; the error line says why
EXIT_SERVING_DIED = 3  # Serving kept dying (master: its workers died and it would not restart them; serve
#                        command: a crash loop of masters): an outer supervisor should take over
