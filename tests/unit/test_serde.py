from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import socket
import uuid
from typing import Any

import pydantic
import pytest

from tether import SerializationError
from tether._serde import decode, dumps, encode, loads


class Point(pydantic.BaseModel):
    x: int
    y: int
    label: str = "p"


@dataclasses.dataclass
class Box:
    name: str
    corners: list[Point]
    when: dt.datetime


class Color(enum.Enum):
    RED = "red"


def test_pydantic_model_round_trips_as_the_same_type() -> None:
    text = dumps(Point(x=1, y=2), what="test")
    assert json.loads(text) == {"x": 1, "y": 2, "label": "p"}
    value = decode(loads(text), Point)
    assert type(value) is Point
    assert value == Point(x=1, y=2)


def test_dataclass_round_trips_as_the_same_type() -> None:
    box = Box("b", [Point(x=0, y=0), Point(x=3, y=4, label="q")], dt.datetime(2024, 1, 2, 3, 4))
    data = encode(box, what="test")
    assert data["corners"][1] == {"x": 3, "y": 4, "label": "q"}
    value = decode(data, Box)
    assert type(value) is Box
    assert value == box
    assert type(value.corners[0]) is Point


def test_containers_of_models_round_trip() -> None:
    data = encode([Point(x=1, y=1)], what="test")
    value = decode(data, list[Point])
    assert value == [Point(x=1, y=1)]


def test_common_types_are_encoded_as_json() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    data = encode({"u": u, "c": Color.RED, "t": (1, 2), "d": dt.date(2024, 5, 6)}, what="x")
    assert data == {"u": str(u), "c": "red", "t": [1, 2], "d": "2024-05-06"}


def test_untyped_decode_keeps_json_as_is() -> None:
    assert decode({"a": [1, 2]}, None) == {"a": [1, 2]}
    assert decode({"a": 1}, Any) == {"a": 1}
    assert decode(None, Point) is None
    assert loads(None) is None


def test_decode_rejects_a_value_of_the_wrong_shape() -> None:
    with pytest.raises(SerializationError, match="Point"):
        decode({"x": "not a number"}, Point)


def test_plain_object_is_rejected_with_a_clear_error() -> None:
    with pytest.raises(SerializationError) as info:
        dumps({"thing": object()}, what="return value of step 'f'")
    message = str(info.value)
    assert "return value of step 'f'" in message
    assert "never pickles" in message
    assert info.value.code == "serialization"
    assert info.value.what == "return value of step 'f'"  # type: ignore[attr-defined]


def test_socket_is_rejected() -> None:
    with socket.socket() as sock, pytest.raises(SerializationError, match="arguments"):
        dumps([sock], what="arguments")


def test_arbitrary_class_instance_is_rejected() -> None:
    class Opaque:
        def __init__(self) -> None:
            self.secret = 1

    with pytest.raises(SerializationError):
        dumps(Opaque(), what="x")


def test_non_finite_floats_are_kept() -> None:
    assert loads(dumps([float("inf")], what="x")) == [float("inf")]
