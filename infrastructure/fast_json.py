"""The library's JSON transcoder, with orjson doing the text: byte for byte the same output.

The library encodes an event's state with `json.JSONEncoder(default=...)`, calling back into
Python for every UUID, Decimal and datetime; that was a tenth of the importer's CPU. Here the
state is first rewritten into plain dicts, lists, strings and integers (each registered type as
the library's own `{"_type_": name, "_data_": ...}`) and orjson writes the text. For those
values orjson's text is the library's text (compact separators, UTF-8 not escaped, the same
escapes: tests/unit/test_fast_json.py checks every code point and generated states). Anything
else (floats, whose exponents orjson writes differently, subclasses of the plain types, keys
that are not strings, integers beyond 64 bits) goes to the library's encoder unchanged, so
stored events, and the audit chain's hashes over them, never depend on which encoder ran.

Decoding parses with orjson and turns the same tagged dicts back into their types, as the
library's object hook does; an unregistered name raises the library's error. Text holding a
float (orjson would also read an integer beyond 64 bits as one) is read by the library.
"""

from __future__ import annotations

from typing import Any

import orjson
from eventsourcing.persistence import JSONTranscoder, TranscodingNotRegisteredError

PLAIN = frozenset({str, int, bool, type(None)})


class _Unfit(Exception):
    """A value the fast path does not write exactly as the library would."""


class FastJSONTranscoder(JSONTranscoder):
    def encode(self, obj: Any) -> bytes:
        try:
            return orjson.dumps(self._plain(obj))
        except (_Unfit, orjson.JSONEncodeError):
            return super().encode(obj)

    def decode(self, data: bytes) -> Any:
        # orjson reads an integer beyond 64 bits as a float and refuses NaN: any float, or text
        # it refuses, is read again by the library (only its encoder writes floats).
        try:
            return self._typed(orjson.loads(data))
        except (_Unfit, orjson.JSONDecodeError):
            return super().decode(data)

    # ---- encoding: typed values -> plain JSON values ---------------------------------------

    def _plain_dict(self, d: dict[Any, Any]) -> dict[Any, Any]:
        # Keys that are not strings make orjson raise, and the library's encoder takes over.
        return {key: value if type(value) in PLAIN else self._plain(value) for key, value in d.items()}

    def _plain(self, value: Any) -> Any:
        kind = type(value)
        if kind in PLAIN:
            return value
        if kind is dict:
            return self._plain_dict(value)
        if kind is list or kind is tuple:
            return [self._plain(item) for item in value]
        transcoding = self.types.get(kind)  # exact type, as the library looks it up
        if transcoding is None:
            raise _Unfit
        return {"_type_": transcoding.name, "_data_": self._plain(transcoding.encode(value))}

    # ---- decoding: plain JSON values -> typed values ---------------------------------------

    def _typed_dict(self, d: dict[str, Any]) -> Any:
        if len(d) == 2 and "_type_" in d and "_data_" in d:
            name = d["_type_"]
            try:
                transcoding = self.names[name]
            except (KeyError, TypeError):
                msg = (f"Data serialized with name '{name}' is not deserializable. "
                       "Please register a custom transcoding for this type.")
                raise TranscodingNotRegisteredError(msg) from None
            return transcoding.decode(self._typed(d["_data_"]))
        for key, value in d.items():
            kind = type(value)
            if kind is dict:
                d[key] = self._typed_dict(value)
            elif kind is list:
                d[key] = [self._typed(item) for item in value]
            elif kind is float:
                raise _Unfit
        return d

    def _typed(self, value: Any) -> Any:
        kind = type(value)
        if kind is dict:
            return self._typed_dict(value)
        if kind is list:
            return [self._typed(item) for item in value]
        if kind is float:
            raise _Unfit
        return value


__all__ = ["FastJSONTranscoder"]
