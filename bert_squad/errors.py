"""Typed errors of the question-answering pipeline."""


class InputError(ValueError):
    """A request the pipeline refuses; the message says what was wrong and what to do.

    Servers send the message back to the caller for that one request, so it must
    read well on its own.
    """
