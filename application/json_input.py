"""Rules every JSON document from outside must pass before it is read: no duplicate keys (which
value would count?) and only text a database column can store."""

from __future__ import annotations

import re
from typing import Any

# Characters no database text column stores (NUL) or UTF-8 cannot encode (lone surrogates).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate keys: {sorted({k for k in keys if keys.count(k) > 1})[:5]}")
    return dict(pairs)


def unstorable_strings(document: Any) -> list[str]:
    """Where in the document (dotted paths) a key or string is not storable text."""
    found: list[str] = []
    stack: list[tuple[str, Any]] = [("", document)]
    while stack and len(found) < 20:
        path, value = stack.pop()
        if isinstance(value, str):
            if UNSTORABLE.search(value):
                found.append(path or "body")
        elif isinstance(value, dict):
            for key, item in value.items():
                name = f"{path}.{key}" if path else str(key)
                if UNSTORABLE.search(str(key)):
                    found.append(name.encode("utf-8", "backslashreplace").decode())
                else:
                    stack.append((name, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{index}", item) for index, item in enumerate(value))
    return sorted(found)
