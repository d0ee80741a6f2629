"""Values as JSON, never pickle.

Encoding goes through pydantic-core, so pydantic models, dataclasses, datetimes, UUIDs,
enums, sets and tuples are accepted; anything else is rejected at the call with a
:class:`SerializationError` naming where the value came from. Decoding is plain JSON, then,
when the receiving side has a type annotation, validation into that type (so a step that
returns a pydantic model gives back the same model on replay).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import pydantic
import pydantic_core

from ._errors import SerializationError

__all__ = ["decode", "dumps", "encode", "loads", "validate"]


def dumps(value: Any, *, what: str) -> str:
    """Encode ``value`` to a JSON string; ``what`` names it in the error message."""
    try:
        return pydantic_core.to_json(value, inf_nan_mode="constants").decode()
    except (pydantic_core.PydanticSerializationError, ValueError, TypeError) as exc:
        raise SerializationError(
            f"{what}: {type(value).__name__} value cannot be stored as JSON ({exc}). "
            "Use JSON types, a pydantic model or a dataclass; Tether never pickles.",
            what=what,
        ) from None


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def encode(value: Any, *, what: str) -> Any:
    """Round-trip ``value`` to plain JSON data (dicts, lists, str, numbers, None)."""
    return json.loads(dumps(value, what=what))


_SCALARS = frozenset({str, int, float, bool})


@functools.lru_cache(maxsize=1024)
def _adapter(tp: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(tp)


def decode(data: Any, tp: Any) -> Any:
    """Turn decoded JSON back into ``tp`` (``None``/``Any`` keeps it as is)."""
    if tp is None or tp is Any or data is None:
        return data
    if type(data) is tp and tp in _SCALARS:  # the common case, without building a validator
        return data
    if tp is float and type(data) is int:
        return float(data)
    try:
        return _adapter(tp).validate_python(data)
    except (pydantic.ValidationError, TypeError) as exc:
        raise SerializationError(
            f"stored value does not validate as {getattr(tp, '__name__', tp)!s}: {exc}"
        ) from None
    except pydantic.PydanticSchemaGenerationError:
        return data


def validate(data: Any, tp: Any) -> None:
    """Check that decoded JSON fits ``tp``, ``None`` included (a value given from outside,
    such as a result a person says a call returned); raises ``SerializationError``."""
    if tp is None or tp is Any:
        return
    try:
        _adapter(tp).validate_python(data)
    except (pydantic.ValidationError, TypeError) as exc:
        raise SerializationError(
            f"value does not validate as {getattr(tp, '__name__', tp)!s}: {exc}"
        ) from None
    except pydantic.PydanticSchemaGenerationError:
        return
