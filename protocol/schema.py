"""Typed field conversion for wire messages.

Each message class declares its fields as type-annotated dataclass fields; this
module compiles those annotations once per class into converters that check a
decoded msgpack value and turn it into the field's Python type. Converters raise
``DecodeError`` naming the offending field. Supported field types: ``str``,
``bytes``, ``int``, ``float`` (finite only), ``bool``, ``StrEnum`` subclasses,
``tuple[T, ...]``, ``dict[str, str]``, ``T | None``, nested ``Struct`` classes
and the recursive control ``Value``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable

from .errors import DecodeError, LocalProtocolError

Converter = Callable[[object, str], object]

MAX_STR = 4096
MAX_ITEMS = 1024
MAX_VALUE_DEPTH = 16

# The recursive value type carried by control-socket requests and responses. typing.Union, not `|`:
# _is_value_type recognises it at run time by typing.get_origin(...) is typing.Union.
Value = typing.Union[  # noqa: UP007
    None, bool, int, float, str, bytes, list["Value"], dict[str, "Value"]
]


def _conv_str(value: object, where: str) -> str:
    if type(value) is not str:
        raise DecodeError(f"{where}: expected str, got {type(value).__name__}")
    if len(value) > MAX_STR:
        raise DecodeError(f"{where}: string longer than {MAX_STR}")
    return value


def _conv_bytes(value: object, where: str) -> bytes:
    if type(value) is not bytes:
        raise DecodeError(f"{where}: expected bytes, got {type(value).__name__}")
    return value


def _conv_int(value: object, where: str) -> int:
    if type(value) is not int:
        raise DecodeError(f"{where}: expected int, got {type(value).__name__}")
    return value


def _conv_float(value: object, where: str) -> float:
    if type(value) is float:
        result = value
    elif type(value) is int:
        result = float(value)
    else:
        raise DecodeError(f"{where}: expected float, got {type(value).__name__}")
    if not math.isfinite(result):
        raise DecodeError(f"{where}: must be finite, got {result!r}")
    return result


def _conv_bool(value: object, where: str) -> bool:
    if type(value) is not bool:
        raise DecodeError(f"{where}: expected bool, got {type(value).__name__}")
    return value


def _conv_value(value: object, where: str, depth: int = 0) -> object:
    if depth > MAX_VALUE_DEPTH:
        raise DecodeError(f"{where}: nested deeper than {MAX_VALUE_DEPTH}")
    if value is None or type(value) in (bool, int, str, bytes):
        return value
    if type(value) is float:
        return _conv_float(value, where)
    if type(value) in (list, tuple):
        items = typing.cast("list[object]", value)
        if len(items) > MAX_ITEMS:
            raise DecodeError(f"{where}: more than {MAX_ITEMS} items")
        return [_conv_value(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(items)]
    if type(value) is dict:
        mapping = typing.cast("dict[object, object]", value)
        if len(mapping) > MAX_ITEMS:
            raise DecodeError(f"{where}: more than {MAX_ITEMS} entries")
        out: dict[str, object] = {}
        for k, v in mapping.items():
            key = _conv_str(k, f"{where} key")
            out[key] = _conv_value(v, f"{where}.{key}", depth + 1)
        return out
    raise DecodeError(f"{where}: unsupported value type {type(value).__name__}")


def _enum_converter(enum_type: type[enum.Enum]) -> Converter:
    members = {m.value: m for m in enum_type}

    def convert(value: object, where: str) -> object:
        try:
            return members[value]
        except (KeyError, TypeError):
            raise DecodeError(
                f"{where}: {value!r} is not one of {sorted(members)}"
            ) from None

    return convert


def _tuple_converter(item: Converter) -> Converter:
    def convert(value: object, where: str) -> tuple[object, ...]:
        if type(value) not in (list, tuple):
            raise DecodeError(f"{where}: expected array, got {type(value).__name__}")
        items = typing.cast("list[object]", value)
        if len(items) > MAX_ITEMS:
            raise DecodeError(f"{where}: more than {MAX_ITEMS} items")
        try:
            return tuple([item(v, where) for v in items])
        except DecodeError:
            # Slow path, only to name the offending index in the error.
            for i, v in enumerate(items):
                item(v, f"{where}[{i}]")
            raise

    return convert


def _dict_converter(key: Converter, val: Converter) -> Converter:
    def convert(value: object, where: str) -> dict[object, object]:
        if type(value) is not dict:
            raise DecodeError(f"{where}: expected map, got {type(value).__name__}")
        mapping = typing.cast("dict[object, object]", value)
        if len(mapping) > MAX_ITEMS:
            raise DecodeError(f"{where}: more than {MAX_ITEMS} entries")
        return {key(k, f"{where} key"): val(v, f"{where}[{k!r}]") for k, v in mapping.items()}

    return convert


def _optional_converter(inner: Converter) -> Converter:
    def convert(value: object, where: str) -> object:
        return None if value is None else inner(value, where)

    return convert


_VALUE_ORIGINS = {type(None), bool, int, float, str, bytes, list, dict}


def _is_value_type(tp: object) -> bool:
    """True for ``Value`` (also after get_type_hints resolved its forward refs)."""
    if typing.get_origin(tp) is not typing.Union:
        return False
    return {typing.get_origin(a) or a for a in typing.get_args(tp)} == _VALUE_ORIGINS


_SCALARS: dict[object, Converter] = {
    str: _conv_str,
    bytes: _conv_bytes,
    int: _conv_int,
    float: _conv_float,
    bool: _conv_bool,
}


def converter_for(tp: object) -> Converter:
    """Build the converter for one annotated field type."""
    if tp in _SCALARS:
        return _SCALARS[tp]
    if _is_value_type(tp):
        return _conv_value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _tuple_converter(converter_for(args[0]))
    if origin is dict and len(args) == 2:
        return _dict_converter(converter_for(args[0]), converter_for(args[1]))
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return _optional_converter(converter_for(rest[0]))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_converter(tp)
    struct_from_wire = getattr(tp, "from_wire", None)
    if isinstance(tp, type) and struct_from_wire is not None:
        struct_type = tp

        def convert_struct(value: object, where: str) -> object:
            # An instance comes from local construction, a map from the wire.
            if type(value) is struct_type:
                return value
            decoder = _DECODERS.get(struct_type)
            if decoder is not None and type(value) is dict and len(value) == len(_PLANS[struct_type]):
                try:
                    return decoder(value)
                except (KeyError, DecodeError, LocalProtocolError):
                    pass  # from_wire says what is wrong, with the path
            return struct_from_wire(value, where)

        return convert_struct
    raise TypeError(f"unsupported field type {tp!r}")


def to_wire_value(value: object) -> object:
    """Turn a field value into plain msgpack-able data."""
    if isinstance(value, enum.Enum):
        return value.value
    to_wire = getattr(value, "to_wire", None)
    if to_wire is not None:
        return to_wire()
    if isinstance(value, tuple | list):
        return [to_wire_value(v) for v in value]
    if isinstance(value, dict):
        return {k: to_wire_value(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- range checks
def fail(cls: type, name: str, why: str) -> typing.NoReturn:
    raise LocalProtocolError(f"{cls.__name__}.{name} {why}")


def check_range(obj: object, name: str, lo: float, hi: float) -> None:
    """``lo <= value <= hi`` with finite bounds, which NaN and ±inf also fail."""
    value = getattr(obj, name)
    if not lo <= value <= hi:
        fail(type(obj), name, f"must be in [{lo}, {hi}], got {value!r}")


def check_text(obj: object, name: str, max_len: int, *, nonempty: bool = False) -> None:
    value = getattr(obj, name)
    if len(value) > max_len:
        fail(type(obj), name, f"longer than {max_len}")
    if nonempty and not value:
        fail(type(obj), name, "must not be empty")


def check_len(obj: object, name: str, max_items: int) -> None:
    if len(getattr(obj, name)) > max_items:
        fail(type(obj), name, f"has more than {max_items} items")


# ---------------------------------------------------------------- the Struct base
class _NoFastPath:
    """Stands in for a field's exact wire type when every value needs converting."""


# Per field: name, the exact Python type a wire value may have to be taken
# as-is, the converter for everything else, and the path used in error
# messages. A str or float taken as-is skips the converter's length and
# finiteness checks: every Struct's ``_check`` must bound its str fields and
# range-check its float fields (tests/protocol/test_schema.py enforces it).
_Field = tuple[str, type, Converter, str]
_PLANS: dict[type, tuple[_Field, ...]] = {}
# Per Struct class: its fields that are left off the wire at their default (``OMIT_DEFAULTS``), with the default.
_OMITTED: dict[type, dict[str, object]] = {}
_AS_IS = (int, bool, bytes, str, float)


def _plan(cls: type) -> tuple[_Field, ...]:
    """Compile a Struct class's annotations into field converters (once)."""
    plan = _PLANS.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        plan = tuple(
            (
                f.name,
                hints[f.name] if hints[f.name] in _AS_IS else _NoFastPath,
                converter_for(hints[f.name]),
                f"{cls.__name__}.{f.name}",
            )
            for f in dataclasses.fields(cls)
        )
        _PLANS[cls] = plan
    return plan


def _omitted(cls: type) -> dict[str, object]:
    """``cls``'s fields named in ``OMIT_DEFAULTS``, each with its default value (once)."""
    omitted = _OMITTED.get(cls)
    if omitted is None:
        names: frozenset[str] = getattr(cls, "OMIT_DEFAULTS", frozenset())
        omitted = {f.name: f.default for f in dataclasses.fields(cls) if f.name in names}
        if set(omitted) != names or dataclasses.MISSING in omitted.values():
            raise TypeError(f"{cls.__name__}.OMIT_DEFAULTS must name fields with a default")
        _OMITTED[cls] = omitted
    return omitted


class _Missing:
    """Stands in for a field left off the wire."""


# Per Struct class: a function that builds an instance from a decoded map.
_DECODERS: dict[type, Callable[..., Struct]] = {}


def _compile_decoder(cls: type) -> Callable[..., Struct]:
    """Compile ``cls``'s plan into one straight-line function (once per class).

    The function reads each field from the map (KeyError if missing), takes a
    value of the field's exact type as-is or converts it, stores it through
    the slot's descriptor (as dataclasses' own ``__init__`` bypasses the frozen
    ``__setattr__``), then runs ``_check``. It does what a loop over the plan
    would, without the loop's per-field overhead: adverts are decoded at
    gossip rate. Code generation as ``dataclasses`` itself does; the source
    holds only field names (identifiers) and indexes into ``env``.

    A field in ``OMIT_DEFAULTS`` may be absent (it takes its default); present,
    it must differ from the default (one encoding per value), and the map must
    then hold exactly the fields present plus ``reserved`` keys.
    """
    plan = _plan(cls)
    omitted = _omitted(cls)
    env: dict[str, object] = {"new": object.__new__, "cls": cls, "missing": _Missing, "DecodeError": DecodeError}
    lines = ["def decode_fields(mapping, reserved=0):", "    obj = new(cls)", "    absent = 0"]
    for i, (name, as_is, convert, path) in enumerate(plan):
        slot = getattr(cls, name, None)
        env[f"set{i}"] = (
            slot.__set__ if isinstance(slot, types.MemberDescriptorType)
            else (lambda obj, value, name=name: object.__setattr__(obj, name, value))
        )
        env[f"conv{i}"], env[f"type{i}"], env[f"path{i}"] = convert, as_is, path
        if name in omitted:
            env[f"default{i}"] = omitted[name]
            lines += [
                f"    raw = mapping.get({name!r}, missing)",
                "    if raw is missing:",
                "        absent += 1",
                f"        set{i}(obj, default{i})",
                "    else:",
                f"        value = conv{i}(raw, path{i})",
                f"        if value == default{i}:",
                f"            raise DecodeError(path{i} + ': written at its default; a default is left out')",
                f"        set{i}(obj, value)",
            ]
            continue
        lines.append(f"    raw = mapping[{name!r}]")
        if as_is is _NoFastPath:
            lines.append(f"    set{i}(obj, conv{i}(raw, path{i}))")
        else:
            lines.append(f"    set{i}(obj, raw if type(raw) is type{i} else conv{i}(raw, path{i}))")
    if omitted:
        lines += [f"    if len(mapping) != {len(plan)} - absent + reserved:", "        raise KeyError('shape')"]
    lines += ["    obj._check()", "    return obj"]
    exec("\n".join(lines), env)  # noqa: S102 - see the docstring
    decoder = typing.cast("Callable[..., Struct]", env["decode_fields"])
    _DECODERS[cls] = decoder
    return decoder


def _shape_error(cls: type, mapping: dict[str, object], where: str, reserved: int) -> DecodeError:
    names = [name for name, _, _, _ in _plan(cls)]
    missing = [name for name in names if name not in mapping and name not in _omitted(cls)]
    if missing:
        return DecodeError(f"{where}: missing field {missing[0]!r}")
    allowed = set(names) | ({"v", "t"} if reserved else set())
    extra = sorted(str(k) for k in mapping if k not in allowed)
    return DecodeError(f"{where}: unexpected fields {extra}")


class Struct:
    """A typed record; subclasses are frozen dataclasses.

    Fields named in ``OMIT_DEFAULTS`` (a class attribute) are left off the
    wire while they hold their default, so that a field added for a new kind
    of job leaves every older message byte for byte as it was.

    Built locally, every field is converted to its annotated type (a list
    becomes a tuple, an int a float where a float is declared, a str an enum
    member) and range-checked; a wrong type or range raises
    LocalProtocolError. ``from_wire`` does the same conversions on decoded
    msgpack data and raises DecodeError instead.
    """

    __slots__ = ()
    OMIT_DEFAULTS: typing.ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        try:
            for name, as_is, convert, path in _plan(type(self)):
                value = getattr(self, name)
                if type(value) is not as_is:
                    object.__setattr__(self, name, convert(value, path))
        except DecodeError as exc:
            raise LocalProtocolError(str(exc)) from None
        self._check()

    def _check(self) -> None:
        """Range checks; override. Raise LocalProtocolError."""

    @classmethod
    def from_wire(cls, value: object, where: str | None = None, reserved: int = 0) -> typing.Self:
        """Build from a decoded msgpack map, checking every field.

        ``reserved`` is the number of keys besides the fields ("v" and "t"
        for a top-level message, already checked by the caller).
        """
        where = where or cls.__name__
        if type(value) is not dict:
            raise DecodeError(f"{where}: expected map, got {type(value).__name__}")
        mapping = typing.cast("dict[str, object]", value)
        plan = _PLANS.get(cls) or _plan(cls)
        fields = len(mapping) - reserved
        if fields != len(plan) and not len(plan) - len(_omitted(cls)) <= fields < len(plan):
            raise _shape_error(cls, mapping, where, reserved)
        try:
            obj = typing.cast("typing.Self", (_DECODERS.get(cls) or _compile_decoder(cls))(mapping, reserved))
        except KeyError:
            raise _shape_error(cls, mapping, where, reserved) from None
        except DecodeError as exc:
            if where == cls.__name__:
                raise
            raise DecodeError(f"{where}: {exc}") from exc
        except LocalProtocolError as exc:
            raise DecodeError(f"{where}: {exc}") from exc
        return obj

    def to_wire(self) -> dict[str, object]:
        cls = type(self)
        plan = _PLANS.get(cls) or _plan(cls)
        omitted = _OMITTED.get(cls)
        if omitted is None:
            omitted = _omitted(cls)
        if not omitted:
            return {name: to_wire_value(getattr(self, name)) for name, _, _, _ in plan}
        return {
            name: to_wire_value(getattr(self, name))
            for name, _, _, _ in plan
            if name not in omitted or getattr(self, name) != omitted[name]
        }


# ---------------------------------------------------------------- the Message base
PROTOCOL_VERSION = 1


class Message(Struct):
    """A Struct that stands alone on the wire, tagged with ``TYPE``."""

    __slots__ = ()
    TYPE: typing.ClassVar[str] = ""

    def to_wire(self) -> dict[str, object]:
        wire: dict[str, object] = {"v": PROTOCOL_VERSION, "t": self.TYPE}
        wire.update(super().to_wire())
        return wire
