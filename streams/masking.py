"""The filter that diagnostic text passes through on its way onto a topic.

Some fields of what ``streams`` writes are the daemon's own prose about a failure: the
``error`` of an ``adapter-status`` record, a promotion's ``reason``, a tool stage's output in
a verdict, a dead letter's error header. That prose is often an exception's text, and
exceptions quote what they failed on: an engine's URL with its password, a key a server
refused. Kafka topics outlive processes and are read by anyone with the topic's ACL, so
such text must be masked before it is written.

Knowing what to mask (the configuration's secrets, credentials inside URLs) is the
daemon's business (``daemon.redact``), and ``streams`` is a library that must not import
the daemon. So the filter lives here and the daemon installs its own when the configuration
loads (:func:`set_text_filter`); until one is installed, text passes through unchanged.
Model output (answers, candidates, judge generations) is data, never filtered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated

from pydantic import PlainSerializer

TextFilter = Callable[[str], str]


def _unchanged(text: str) -> str:
    return text


_lock = threading.Lock()
_filter: TextFilter = _unchanged


def set_text_filter(text_filter: TextFilter | None) -> None:
    """Install the filter every diagnostic text goes through from now on (None: none)."""
    global _filter
    with _lock:
        _filter = text_filter or _unchanged


def mask(text: str) -> str:
    """``text`` through the installed filter."""
    return _filter(text)


#: A string field of a message that carries diagnostic text: stored as given in memory,
#: masked whenever the message is serialized (so also after ``model_copy(update=...)``,
#: which skips validators).
MaskedText = Annotated[str, PlainSerializer(mask, return_type=str)]
