"""Structured JSON logging (structlog) for the parent and enclave processes. Side: any.

One line of JSON per event on stderr. Callers pass only non-secret fields: hashed
session ids, operation names, outcomes, error *types*. There is deliberately no
processor that formats exception tracebacks with local values: a traceback can
quote arguments, and secrets must never reach a log.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

__all__ = ["configure_logging"]


def _strip_exception_details(
    _logger: object, _name: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Replace exc_info/stack by the exception's type name: never its text or frames."""
    exc_info = event.pop("exc_info", None)
    event.pop("stack_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        if isinstance(exc_info, BaseException):
            event["error_type"] = type(exc_info).__name__
        elif isinstance(exc_info, tuple) and exc_info[0] is not None:
            event["error_type"] = exc_info[0].__name__
    return event


def configure_logging(process: str, *, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to JSON lines tagged with ``process``."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    out = stream if stream is not None else sys.stderr

    def tag_process(
        _logger: object, _name: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        event.setdefault("process", process)
        return event

    shared_chain: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        tag_process,
        _strip_exception_details,
    ]
    structlog.configure(
        processors=[*shared_chain, structlog.processors.JSONRenderer(sort_keys=True)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Libraries logging through stdlib (aiohttp, psycopg pool) get the same JSON
    # lines and the same exception stripping.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared_chain,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(sort_keys=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    # Our own request log line replaces aiohttp's access log (which would print URLs).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
