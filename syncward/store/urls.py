"""Store URLs as they may be shown: a password never appears in an error, a log or status.

`redact` masks the password of the user-info part (``scheme://user:***@host``) and the
value of any ``password`` query parameter (which asyncpg accepts too). It works on the
text, not on a parse, so a password that was never percent-encoded (a ``#``, an ``@``, a
``/`` in it) is masked all the same: everything between ``user:`` and the last ``@``
before the host is the password.
"""

from __future__ import annotations

import re

__all__ = ["redact"]

_USERINFO = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*:)(?P<pw>.*)@(?P<tail>[^@]*)$",
                       re.S)
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)[^&#]*", re.I)


def redact(url: str) -> str:
    """``url`` with every password in it replaced by ``***``."""
    m = _USERINFO.match(url)
    if m is not None:
        url = f"{m.group('head')}***@{m.group('tail')}"
    return _QUERY_PASSWORD.sub(r"\g<key>***", url)
