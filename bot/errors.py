"""Which failures a member caused or can act on, and the sentence they are shown (ephemerally).

Everything else is a bug or an outage: logged with its traceback, and the member gets a generic line.
"""

from __future__ import annotations

from engine.queue.policy import QueueFullError
from engine.queue.worker import QueueClosed
from engine.requests import RequestError
from engine.service import EngineNotReady


class GenerationUnavailable(RuntimeError):
    """The bot runs without a working model (see ``/status``)."""


class NotAllowed(PermissionError):
    """The member lacks the role or permission an action needs; the message says which."""


def user_error(exc: BaseException) -> str | None:
    """The member-facing text for ``exc``, or None when it is not the member's to fix."""
    if isinstance(exc, RequestError):
        return f"⚠️ {exc}"
    if isinstance(exc, QueueFullError):
        return f"⏳ {exc} Try again in a little while."
    if isinstance(exc, GenerationUnavailable | EngineNotReady | QueueClosed):
        return f"🛠️ Generation is unavailable right now: {exc}. `/status` says more."
    if isinstance(exc, NotAllowed):
        return f"🔒 {exc}"
    return None
