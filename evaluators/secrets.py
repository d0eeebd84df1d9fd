"""The one way slimsweep shows a text that may hold a secret: passwords and tokens in URLs masked as `***`.

It lives in the lowest package (evaluators imports nothing else of ours) so that every layer can mask what it shows,
stores or sends to MLflow: a database URL's password, a token given as an http(s) URL's password, and query-string
or connection-string secrets (`?password=`, `&access_token=`, `password=...` in a libpq string).
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# scheme://user:PASSWORD@host: the user stays (it says who), the password goes. It runs to the last '@' before white
# space or a quote, so a raw '@', '/' or ':' typed in a password is masked with it (a host is never a secret).
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@'\"]*:)(?P<secret>[^\s'\"]+)@")
# A key that names a secret, then '=' and its value: query strings, libpq's "password=..." and the like.
_KEYED = re.compile(
    r"(?P<head>\b[\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)[\w.-]*=)"
    r"(?P<secret>[^\s&;#'\"]+)",
    re.IGNORECASE,
)
# A mapping key whose value is itself a secret ("token", "db_password"; not "token_file", which names a path).
_SECRET_KEY = re.compile(r"[\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """text with every password or token in it (URL user info, secret-named keys) replaced by ***."""
    if not isinstance(text, str):
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _KEYED.sub(lambda m: f"{m['head']}{MASK}", text)


def masked(data: Any) -> Any:
    """A copy of JSON-like data with mask_secrets applied to every string, and a secret-named key's value masked."""
    if isinstance(data, str):
        return mask_secrets(data)
    if isinstance(data, dict):
        return {
            key: MASK if isinstance(key, str) and _SECRET_KEY.fullmatch(key) and value else masked(value)
            for key, value in data.items()
        }
    if isinstance(data, (list, tuple)):
        return type(data)(masked(value) for value in data)
    return data
