"""Structured logs: one JSON object per line on stdout, or a console form for people."""

from __future__ import annotations

import json
import logging
import sys

import structlog

from supervisor.logs.ring import LogRing


def configure_logging(fmt: str = "json", level: str = "info", ring: LogRing | None = None) -> None:
    """``ring``: also keep each line (as the dict about to be rendered) in this ring."""
    renderer = (
        structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *([ring.processor] if ring is not None else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )


def relay_actor_line(line: str, *, actor_id: str, node: str, stream: str) -> None:
    """Re-emit one line an actor printed, tagged with where it came from."""
    log = structlog.get_logger().bind(actor_id=actor_id, node=node)
    text = line.rstrip("\n")
    if not text:
        return
    try:
        fields = json.loads(text)
    except ValueError:
        fields = None
    if isinstance(fields, dict):
        event = str(fields.pop("event", "actor_log"))
        level = str(fields.pop("level", "info"))
        fields.pop("timestamp", None)
        fields.pop("actor_id", None)
        fields.pop("node", None)
        getattr(log, level if level in ("debug", "info", "warning", "error") else "info")(
            event, source="actor", **fields
        )
    else:
        log.info("actor_output", source="actor", stream=stream, line=text)
