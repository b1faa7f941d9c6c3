"""The per-feature privacy policy, applied before a record is written or spooled.

Pure. ``keep`` stores the value as sent, ``drop`` leaves the feature out of the
stored payload, ``hash`` replaces the value by ``HMAC-SHA256(key, value)`` in hex
(the same value always gives the same hash under one key, so analysts can still
group and join on it, but cannot read it back without the key). The key ``"*"``
sets the rule for every feature not named (default ``keep``), so
``{"*": "drop", "amount": "keep"}`` is an allow-list.

A hashed value's bytes are its compact JSON text (``"grocery"`` with the quotes,
``1``, ``true``), so ``1`` and ``"1"`` hash differently; an analyst with the key
reproduces a hash with ``hmac(key, json.dumps(v, separators=(",", ":")))``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Literal

import orjson

Rule = Literal["keep", "drop", "hash"]
DEFAULT_KEY = "*"


class PrivacyPolicy:
    __slots__ = ("_default", "_key", "_rules", "is_identity")

    def __init__(self, rules: Mapping[str, Rule] | None = None, hmac_key: bytes | None = None):
        rules = dict(rules or {})
        self._default: Rule = rules.pop(DEFAULT_KEY, "keep")
        self._rules = {k: v for k, v in rules.items() if v != self._default}
        needs_key = self._default == "hash" or "hash" in self._rules.values()
        if needs_key and not hmac_key:
            raise ValueError("the privacy policy hashes features but no HMAC key is set")
        self._key = hmac_key or b""
        self.is_identity = self._default == "keep" and not self._rules

    def hash_value(self, value: Any) -> str:
        try:
            data = orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError):  # lone surrogates, huge ints, ...
            data = repr(value).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def apply(self, features: Mapping[str, Any]) -> dict[str, Any]:
        """The payload to store. Returns the same dict when the policy keeps all."""
        if self.is_identity:
            return features if isinstance(features, dict) else dict(features)
        out: dict[str, Any] = {}
        rules, default = self._rules, self._default
        for name, value in features.items():
            rule = rules.get(name, default)
            if rule == "keep":
                out[name] = value
            elif rule == "hash":
                out[name] = self.hash_value(value)
        return out
