"""Typed configs: pydantic models with defaults in code, YAML holding only what differs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, ValidationError, model_serializer

from synthfm.errors import SynthfmError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # Fields added after configs were already hashed into run directories: left out of dumps while they hold
    # their default, so an older config keeps its hash and its finished runs are reused.
    omit_when_default: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The dump, without the `omit_when_default` fields that still hold their default."""
        data = handler(self)
        for name in self.omit_when_default:
            if getattr(self, name) == type(self).model_fields[name].get_default(call_default_factory=True):
                data.pop(name, None)
        return data


def _field_names_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Walk `loc` through nested models and return the allowed keys of the innermost model."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            break
        current = _inner_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    """Return the first BaseModel class inside an annotation such as `list[Task] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def describe_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> SynthfmError:
    """Turn a pydantic error into one message naming each key, its value and what is allowed."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(_field_names_at(model, loc[:-1]))
            lines.append(f"unknown key '{key}'; allowed keys here: {allowed}")
        elif e["type"] == "missing":
            lines.append(f"missing required key '{key}'")
        else:
            lines.append(f"bad value for '{key}': {e['input']!r} ({e['msg']})")
    return SynthfmError(
        f"invalid {model.__name__} in {source}:\n  - " + "\n  - ".join(lines),
        "edit the named keys (see docs for each config's fields and defaults)",
    )


def validate_config(model: type[M], data: Any, source: str) -> M:
    """Validate a mapping as `model`, raising SynthfmError that names bad keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SynthfmError(f"{source} must hold a mapping of keys, got {type(data).__name__}",
                           "write the config as 'key: value' lines")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise describe_validation_error(err, model, source) from None


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise SynthfmError(f"config file not found: {path}", "check the path")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SynthfmError(f"{path} is not valid YAML: {err}", "fix the YAML syntax at the line shown") from None


def load_config(model: type[M], path: str | Path) -> M:
    """Load a YAML file into a typed config."""
    return validate_config(model, read_yaml(path), str(path))


def dump_config(config: BaseModel) -> str:
    """Serialise a config to YAML (all fields, resolved defaults included)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
