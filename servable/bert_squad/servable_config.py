"""bert_squad servable: three stages of glue around the bert_squad library.

preprocess (per question: text -> windows) -> model (per batch of questions: windows
packed by sequence-length bucket) -> postprocess (per question: scores -> answers).
A stage that raises for one question fails only that question.
"""
import os
from pathlib import Path

from mindspore_serving.server import register

from bert_squad.serving import servable_glue as glue
from bert_squad.contract import VERSION_ENV

glue.exit_with_master()  # a worker outlives no master (a serve command SIGKILLed)
glue.keep_worker_alive_on_bad_text()
version_dir = glue.version_dir(Path(__file__).resolve().parent, os.environ.get(VERSION_ENV))
meta, tokenizer = glue.load_version(version_dir)
runtime = glue.require_runtime(meta)  # a runtime that cannot load fails the worker at start, not its first request
lite_context = glue.model_context(os.environ, os.sched_getaffinity(0))
# Serving takes its own models (runtime "serving": one per bucket) only while it imports this file; the other
# runtimes run their one model themselves and declare none.
declared = runtime.declare_models(meta, lite_context)
glue.load_at_start(version_dir, meta, lite_context, declared, os.environ)  # ready when the server says so


def preprocess(question, context_text):
    return glue.preprocess(tokenizer, question, context_text)


def check_tokens(input_ids, input_mask, token_type_id):
    return glue.check_tokens(meta.config, input_ids, input_mask, token_type_id)


def run_model(instances):
    yield from glue.run_model(glue.scorer(version_dir, meta, lite_context, declared), instances)


def postprocess(context_text, start, end, lengths, char_offsets, max_context):
    return glue.postprocess(context_text, start, end, lengths, char_offsets, max_context)


def postprocess_with_options(context_text, start, end, lengths, char_offsets, max_context, top_k, max_len):
    return glue.postprocess(context_text, start, end, lengths, char_offsets, max_context, top_k, max_len)


@register.register_method(output_names=glue.ANSWER_OUTPUTS)
def predict(question, context):
    ids, mask, segment, lengths, offsets, max_ctx = register.add_stage(preprocess, question, context, outputs_count=6)
    start, end = register.add_stage(run_model, ids, mask, segment, lengths, outputs_count=2,
                                    batch_size=glue.INSTANCES_PER_MODEL_CALL)
    answer, score, first, last, starts, ends, scores = register.add_stage(
        postprocess, context, start, end, lengths, offsets, max_ctx, outputs_count=7)
    return answer, score, first, last, starts, ends, scores


@register.register_method(output_names=glue.ANSWER_OUTPUTS)
def predict_with_options(question, context, top_k, max_answer_length):
    ids, mask, segment, lengths, offsets, max_ctx = register.add_stage(preprocess, question, context, outputs_count=6)
    start, end = register.add_stage(run_model, ids, mask, segment, lengths, outputs_count=2,
                                    batch_size=glue.INSTANCES_PER_MODEL_CALL)
    answer, score, first, last, starts, ends, scores = register.add_stage(
        postprocess_with_options, context, start, end, lengths, offsets, max_ctx, top_k, max_answer_length,
        outputs_count=7)
    return answer, score, first, last, starts, ends, scores


@register.register_method(output_names=["start_logits", "end_logits"])
def predict_features(input_ids, input_mask, token_type_id):
    ids, mask, segment, lengths = register.add_stage(check_tokens, input_ids, input_mask, token_type_id,
                                                     outputs_count=4)
    start, end = register.add_stage(run_model, ids, mask, segment, lengths, outputs_count=2,
                                    batch_size=glue.INSTANCES_PER_MODEL_CALL)
    start_logits, end_logits = register.add_stage(glue.first_window, start, end, outputs_count=2)
    return start_logits, end_logits
