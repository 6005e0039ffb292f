"""Structured logging (structlog) for the coordinator and nodes, with stdlib loggers routed in.

Every event, ours or a stdlib logger's (uvicorn, libp2p), goes through one formatter chain:
exceptions become a plain traceback text *without local variables*, capped in size, and
:func:`redact_secrets` then masks secrets in every value (the configured API keys, bearer
and basic credentials, ``X-API-Key``/token/password pairs, passwords in URLs) before the
renderer writes the line. See docs/security.md, "Errors and logs".
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog

REDACTED = "***"
#: Longest exception text one log event carries; past this the middle is cut.
MAX_EXCEPTION_CHARS = 32_000
#: Configured secrets shorter than this are masked only by the patterns below, never as
#: bare substrings (a 2-character "key" would otherwise mangle every line).
MIN_LITERAL_SECRET = 4

_SENSITIVE_NAMES = (
    r"x[-_]api[-_]key|api[-_]?keys?|authorization|proxy[-_]authorization|access[-_]?token"
    r"|auth[-_]?token|refresh[-_]?token|token|secret|client[-_]?secret|password|passwd"
)
_VALUE = r"[^\s'\",;&)}\]]+"
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # scheme://user:password@host -> scheme://user:***@host
    (
        re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/?#@'\"]*):([^\s@/'\"]+)@"),
        rf"\1:{REDACTED}@",
    ),
    # Authorization: Bearer <token> / Basic <credentials>
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s'\",;\\]+"), rf"\1\2{REDACTED}"),
    # ('x-api-key', 'value') and (b'authorization', b'...') as header tuples print
    (
        re.compile(
            rf"(?i)(['\"](?:{_SENSITIVE_NAMES})['\"]\s*,\s*b?['\"])(?!(?:bearer|basic)\b)"
            r"[^'\"]+"
        ),
        rf"\1{REDACTED}",
    ),
    # x-api-key: value, api_key=value, "password": "value", token=value
    (
        re.compile(
            rf"(?i)(\b(?:{_SENSITIVE_NAMES})\b['\"]?\s*[:=]\s*(?:b?['\"])?)(?!(?:bearer|basic)\b)"
            rf"{_VALUE}"
        ),
        rf"\1{REDACTED}",
    ),
]
_SENSITIVE_KEY = re.compile(rf"(?i)^(?:{_SENSITIVE_NAMES})$")
_META_KEYS = frozenset({"_record", "_from_structlog", "exc_info", "stack_info"})

_literal_secrets: tuple[str, ...] = ()


def set_secrets(secrets: Iterable[str]) -> None:
    """Strings masked wherever they appear in a log event (the configured API keys)."""
    global _literal_secrets
    unique = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_LITERAL_SECRET}
    # Longest first, so a key that contains another is masked whole.
    _literal_secrets = tuple(sorted(unique, key=len, reverse=True))


def redact_text(text: str) -> str:
    """``text`` with every known secret and secret-shaped value replaced by ``***``."""
    for secret in _literal_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_url(url: str | None) -> str | None:
    """A URL fit for a log line: ``scheme://user:***@host/...`` (None stays None)."""
    return None if url is None else redact_text(url)


def _redact_value(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", errors="replace")
        redacted = redact_text(text)
        return value if redacted == text else redacted
    if depth >= 6:
        return redact_text(repr(value))
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if _is_sensitive_key(k) else _redact_value(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, tuple):
        return tuple(_redact_value(v, depth + 1) for v in value)
    if isinstance(value, list | set | frozenset):
        return [_redact_value(v, depth + 1) for v in value]
    # Renderers print anything else by its repr: redact that text instead.
    return redact_text(repr(value))


def _is_sensitive_key(key: Any) -> bool:
    return isinstance(key, str) and _SENSITIVE_KEY.match(key) is not None


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets in every value of the event (see the module doc)."""
    for key, value in list(event_dict.items()):
        if key in _META_KEYS:
            continue
        event_dict[key] = REDACTED if _is_sensitive_key(key) else _redact_value(value)
    return event_dict


def cap_exception(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: bound the rendered traceback (head and tail are kept)."""
    text = event_dict.get("exception")
    if isinstance(text, str) and len(text) > MAX_EXCEPTION_CHARS:
        head = MAX_EXCEPTION_CHARS // 8
        tail = MAX_EXCEPTION_CHARS - head
        cut = len(text) - head - tail
        event_dict["exception"] = f"{text[:head]}\n... [{cut} characters cut] ...\n{text[-tail:]}"
    return event_dict


def _secrets_from_environment() -> list[str]:
    return [k.strip() for k in os.environ.get("QMESH_API_KEYS", "").split(",") if k.strip()]


class _Handoff(logging.handlers.QueueHandler):
    """Hands a record to the log thread as it is: rendering (structlog's renderer, secret
    redaction) and the write happen there. (``QueueHandler`` would render it here.)"""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_listener: logging.handlers.QueueListener | None = None


def stop_background_logging() -> None:
    """Write out what the log thread still holds and stop it (at exit, or before the
    logging is configured again)."""
    global _listener
    listener, _listener = _listener, None
    if listener is not None:
        listener.stop()


def configure_logging(
    level: str = "INFO",
    *,
    json: bool = False,
    secrets: Iterable[str] = (),
    background: bool = False,
) -> None:
    """Configure structlog and route stdlib loggers (uvicorn, libp2p) through it.

    ``secrets`` (the configured API keys) are masked wherever they appear, as are the keys
    in ``QMESH_API_KEYS`` of this process's environment. With ``background`` the lines are
    rendered and written by a thread of their own, so the thread that logs (the API's event
    loop: an access line per request) only queues them; measured under load, rendering and
    writing took a fifth of the API loop's time.
    """
    set_secrets([*secrets, *_secrets_from_environment()])
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # A plain traceback: never rich's, whose local variables held request headers.
                structlog.processors.format_exc_info,
                cap_exception,
                redact_secrets,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    stop_background_logging()
    if background:
        global _listener
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        _listener = logging.handlers.QueueListener(records, handler)
        _listener.start()
        atexit.unregister(stop_background_logging)  # once, however often this is called
        atexit.register(stop_background_logging)
        root.handlers[:] = [_Handoff(records)]
    else:
        root.handlers[:] = [handler]
    root.setLevel(level)
    # libp2p disables propagation by default, which would hide its warnings from our logs.
    p2p = logging.getLogger("libp2p")
    p2p.handlers.clear()
    p2p.propagate = True
    p2p.setLevel(max(logging.getLevelName(level), logging.WARNING))
    # Chatter that says nothing to an operator at INFO: alembic announcing its plugins on
    # import, qiskit's transpiler timing every pass, httpx announcing every request (the API
    # front forwards every request with it).
    for noisy in QUIET_AT_INFO:
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))


#: Loggers kept at WARNING unless the configured level is stricter.
QUIET_AT_INFO = (
    "alembic.runtime.plugins",
    "qiskit.passmanager",
    "qiskit.compiler",
    "httpx",
    "httpcore",
)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)  # type: ignore[no-any-return]
