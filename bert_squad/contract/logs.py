"""The serve command's own lines ("bert-squad-serve: ...": ready, restarts, stops, errors) and the two log formats
(--log-format): written the same way by the serve process and by Serving's master, so that one stdout reads as one
log. JSON lines come from python-json-logger (a well-kept formatter on the standard logging module), not from strings
we build. The front door's access lines (bert_squad/front/access.py) go through the same handlers."""
from __future__ import annotations

import logging
import sys

LOG_FORMATS = ("text", "json")
_said = logging.getLogger("bert_squad.serve")


def say(message: str, error: bool = False, fresh_line: bool = False) -> None:
    """One of the serve command's own lines. `fresh_line`: in text, start it on a line of its own (Serving's C++
    threads print to the same stdout)."""
    _said.log(logging.ERROR if error else logging.INFO, message, extra={"fresh_line": fresh_line})


class TextFormatter(logging.Formatter):
    """`bert-squad-serve: <message>`."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        text = text if text.startswith("bert-squad-serve:") else f"bert-squad-serve: {text}"
        return "\n" + text if getattr(record, "fresh_line", False) else text


def configure(log_format: str, text_formatter: type = TextFormatter) -> None:
    """Send this process's log records to stdout in `log_format` (text lines through `text_formatter`; in text,
    errors go to stderr as they always did)."""
    if log_format == "json":
        from pythonjsonlogger.core import RESERVED_ATTRS
        from pythonjsonlogger.json import JsonFormatter

        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s", timestamp="time",
                                           rename_fields={"levelname": "level", "name": "logger"},
                                           reserved_attrs=[*RESERVED_ATTRS, "fresh_line"]))
        handlers = [handler]
    else:
        out, err = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
        out.addFilter(lambda record: record.levelno < logging.ERROR)
        err.setLevel(logging.ERROR)
        for handler in (out, err):
            handler.setFormatter(text_formatter("%(message)s"))
        handlers = [out, err]
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(logging.INFO)
