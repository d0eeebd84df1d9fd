"""Sections an entry owns: a registered entry that is a pydantic model validates its own section of the file.

Student families (space.students.<name>), quantization schemes with options (space.quantization.<name>) and pick
policies with settings (pick.<name>) share this: a key of the enclosing section that names a registered entry is that
entry's section, validated by the entry's class; any other unknown key is an error naming the keys allowed there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from evaluators.errors import not_allowed
from evaluators.registry import Registry


def owns_section(entry: Any) -> bool:
    """Whether a registered entry declares settings of its own (its pydantic fields)."""
    return isinstance(entry, type) and issubclass(entry, BaseModel) and bool(entry.model_fields)


def split_sections(
    data: dict[str, Any], own: list[str], registry: Registry[Any]
) -> tuple[dict[str, Any], dict[str, BaseModel | None], list[dict[str, Any]]]:
    """The enclosing section's own keys, the entries' validated sections (None where the file wrote null), and the
    errors, as pydantic line errors placed under each key."""
    mine = {k: v for k, v in data.items() if k in own}
    sections: dict[str, BaseModel | None] = {}
    errors: list[dict[str, Any]] = []
    for key, value in data.items():
        if key in own:
            continue
        entry = registry.get(key) if key in registry else None
        if not owns_section(entry):
            allowed = [*own, *(e.name for e in registry if owns_section(e))]
            message = f"unknown key; {not_allowed(key, allowed)}"
            errors.append({"type": PydanticCustomError("unknown_key", message), "loc": (key,), "input": value})
            continue
        try:
            sections[key] = None if value is None else entry.model_validate(value)
        except ValidationError as exc:
            errors.extend(nested_errors(key, entry, exc))
    return mine, sections, errors


def with_sections(
    cls: type[BaseModel],
    data: Any,
    handler: Callable[[Any], Any],
    registry: Registry[Any],
    chosen: str,
    stray: str,
) -> Any:
    """The body of an enclosing section's wrap validator: its own keys validated by `handler`, each registered
    entry's section by the entry. `chosen` names the field that chooses entries (a name or a list of names); a section
    of an entry not chosen is an error saying `stray` (formatted with {chosen}, the field's value, and {name}, the
    section's key); each chosen entry with settings of its own gets its section (its defaults where the file gives
    none, or null)."""
    if not isinstance(data, dict):
        return handler(data)
    own, sections, errors = split_sections(data, list(cls.model_fields), registry)
    raise_if(errors, cls.__name__)
    model = handler(own)
    value = getattr(model, chosen)
    names = [value] if isinstance(value, str) else list(value)
    for name in [name for name in sections if name not in names]:
        misplaced(name, stray.format(chosen=value, name=name), data[name], cls.__name__)
    for name in names:
        entry = registry.get(name)
        if owns_section(entry) and sections.get(name) is None:
            try:  # the entry's defaults (a setting without a default must then be given)
                sections[name] = entry.model_validate({})
            except ValidationError as exc:
                raise_if(nested_errors(name, entry, exc), cls.__name__)
    model.__pydantic_extra__.update({k: v for k, v in sections.items() if k in names and v is not None})
    return model


def nested_errors(key: str, entry: type[BaseModel], exc: ValidationError) -> list[dict[str, Any]]:
    """An entry section's errors, placed under its key; an unknown key names the section's keys."""
    out = []
    for err in exc.errors():
        loc = (key, *err["loc"])
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            message = f"unknown key; {not_allowed(err['loc'][-1], list(entry.model_fields))}"
            out.append({"type": PydanticCustomError("unknown_key", message), "loc": loc, "input": err["input"]})
        else:
            out.append({"type": PydanticCustomError(err["type"], err["msg"]), "loc": loc, "input": err["input"]})
    return out


def raise_if(errors: list[dict[str, Any]], title: str) -> None:
    """Raise the collected errors as one ValidationError (pydantic then prefixes the enclosing location)."""
    if errors:
        raise ValidationError.from_exception_data(title, errors)


def misplaced(key: str, message: str, value: Any, title: str) -> None:
    """Raise one error placed under key (a section the file gives where it does not apply)."""
    raise_if([{"type": PydanticCustomError("misplaced_section", message), "loc": (key,), "input": value}], title)
