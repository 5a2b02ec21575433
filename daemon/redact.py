"""Keeping credentials out of what the daemon shows: logs, errors, HTTP bodies, ``config show``.

Two layers, because neither alone is enough:

* by shape: credentials inside URLs (``scheme://user:pass@host``, ``?api_key=...``) are
  masked wherever they appear, so an engine's error that quotes its ``base_url`` cannot carry
  the password into a log line or a client's error body, even when no one registered it;
* by value: every secret the configuration holds (``SecretStr`` fields, ``kafka.client_options``
  values, URL passwords) is registered when the configuration loads, and any text the daemon
  shows has those exact strings replaced, wherever a library quoted them.

Where text leaves a process, one choke point per medium applies it: the log formatter
(:class:`RedactingFormatter`), the process's stdout and stderr (:func:`mask_console`: rich,
``typer.echo``, ``print`` and Python's own tracebacks alike), HTTP error bodies and /readyz
(:func:`redact`, :func:`redact_data`), and diagnostic fields on Kafka topics (installed into
``streams.masking`` when the configuration loads).

Kept at the top of the package (imported by every layer) and free of third-party imports.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlsplit

MASK = "**********"

#: Words that make a key's value a credential (config keys, URL query keys, client options):
#: ``admin_token``, ``sasl_plain_password``, ``access_token``; not ``max_tokens``.
SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "token",
        "credential",
        "credentials",
        "private",
        "jaas",
        "signature",
        "sig",
        "auth",
        "authorization",
        "apikey",
        "key",
    }
)
#: Shortest string registered as a secret: masking "a" or "1" everywhere would garble logs.
MIN_SECRET_LEN = 4

_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@?#'\"]+@")
_QUERY_PAIR = re.compile(r"(?P<sep>[?&;])(?P<key>[^=&\s#'\"?;]+)=(?P<value>[^&\s#'\";]*)")

_lock = threading.Lock()
#: The registered secrets, longest first (a secret inside another is masked with it), kept
#: sorted at registration: ``redact`` runs on every log line.
_registered: tuple[str, ...] = ()


def is_secret_name(name: str) -> bool:
    """True for a key whose value is a credential by its name (``admin_token``, ``api_key``);
    judged by whole words, so that ``max_tokens`` or ``ssl_keyfile`` (a path) are not."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    return bool(SECRET_WORDS.intersection(words)) or "apikey" in "".join(words)


def register(values: Iterable[object]) -> None:
    """Remember secret values so that ``redact`` masks them in any text from now on."""
    global _registered
    with _lock:
        _registered = _longest_first([*_registered, *(str(v) for v in values)])


def _longest_first(secrets: Iterable[str]) -> tuple[str, ...]:
    kept = {s for s in secrets if len(s) >= MIN_SECRET_LEN}
    return tuple(sorted(kept, key=len, reverse=True))


def url_secrets(text: str) -> list[str]:
    """The credentials inside a URL: the userinfo's password (or a bare token as user) and
    the values of secret-named query keys."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return []
    found = []
    if parts.password:
        found.append(parts.password)
    elif parts.username:
        found.append(parts.username)  # https://<token>@host: the user is the credential
    found += [v for k, v in parse_qsl(parts.query) if is_secret_name(k) and v]
    return found


def mask_url(text: str) -> str:
    """``text`` with URL userinfo and secret-named query values masked (by shape only)."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _QUERY_PAIR.sub(
        lambda m: f"{m['sep']}{m['key']}={MASK}" if is_secret_name(m["key"]) else m[0], text
    )


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with URL credentials, every registered secret and ``extra`` ones masked
    (``extra``: secrets of a configuration that failed to load, so none is registered)."""
    text = mask_url(text)
    known = _longest_first([*_registered, *extra]) if extra else _registered
    for s in known:
        if s in text:
            text = text.replace(s, MASK)
    return text


class RedactingFormatter(logging.Formatter):
    """A formatter whose output (message, arguments and traceback alike) goes through
    ``redact``: a library that logs its settings or an exception quoting a URL cannot put a
    credential in the daemon's log."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def redact_data(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every string in it, keys
    included, through ``redact``: for a JSON body, masked before it is encoded (masking the
    encoded text would miss a secret whose characters JSON escapes)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_data(v) for v in value]
    return value


class RedactingStream:
    """A text stream that passes every write through ``redact`` to the stream it wraps,
    and everything else (``isatty``, ``fileno``, ``encoding``, ``flush``) straight to it.

    Masks per write: each ``print``, rich render, ``click.echo`` and log line is one write,
    so a secret inside one is masked whole. Bytes are refused as a text stream refuses them
    (click probes a stream that way to tell text from binary).
    """

    def __init__(self, stream: TextIO) -> None:
        self.wrapped = stream

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.wrapped.write(redact(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        if name == "wrapped":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.wrapped, name)


def mask_console() -> None:
    """Send this process's stdout and stderr through ``redact`` (idempotent).

    The CLI's one choke point for the console: error lines and results printed through
    rich, ``typer.echo``, JSON ``print``-ed by ``status``, topic data shown by ``tail``, and
    the tracebacks Python prints for an uncaught exception (which quote an engine's URL).
    Handlers that hold a stream from before this call keep it (the log's own formatter masks).
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))
