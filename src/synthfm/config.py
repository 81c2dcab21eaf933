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
            if self._at_default(name):
                data.pop(name, None)
        return data

    def _at_default(self, name: str) -> bool:
        """Whether field `name` holds its default."""
        return bool(getattr(self, name) == type(self).model_fields[name].get_default(call_default_factory=True))

    def unused_fields(self) -> tuple[str, ...]:
        """Fields that this config's other settings make irrelevant (e.g. another objective's block)."""
        return ()

    def recorded(self) -> dict[str, Any]:
        """What a run folder records: the JSON dump without the unused fields that hold their default.

        The hash is still taken over the whole dump (`runs.config_hash`); reading the record back fills those
        defaults again, so the record and the config it came from hash the same.
        """
        data = self.model_dump(mode="json")
        for name in self.unused_fields():
            if self._at_default(name):
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


def check_block(model: type[BaseModel], data: dict[str, Any], **set_later: Any) -> dict[str, Any]:
    """`data` unchanged, once it validates as `model` (`set_later`: keys its job fills in where `data` has none).

    For a nested block a job passes on as written (so the job's key stays what it was): a typo in it fails when
    the pipeline is planned, before any job runs, not when its job starts.
    """
    try:
        model.model_validate({**set_later, **data})
    except ValidationError as err:
        raise ValueError(describe_validation_error(err, model, "this block").message) from None
    return data


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


# A YAML document may not expand (through aliases) to more values than this: an alias bomb of a few hundred
# bytes otherwise expands to millions of leaves once a config is validated, hashed or dumped.
MAX_YAML_VALUES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing a key repeated in one mapping (YAML's default keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if repeated:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _count_values(data: Any, limit: int) -> int:
    """Values in a nested structure, counting each alias use again; stops once past `limit`."""
    count, stack = 0, [data]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return count


def parse_yaml(text: str | bytes, source: str) -> Any:
    """Parse YAML text strictly: UTF-8, no repeated keys, no alias expansion past MAX_YAML_VALUES values."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            line = text[:err.start].count(b"\n") + 1
            raise SynthfmError(f"{source} is not UTF-8 text (byte {err.start}, line {line}: "
                               f"{text[err.start:err.start + 1]!r})",
                               "save the file as UTF-8") from None
    if "\0" in text:
        raise SynthfmError(f"{source} holds a NUL character (line {text[:text.index(chr(0))].count(chr(10)) + 1})",
                           "remove it; YAML files are plain text")
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as err:
        raise SynthfmError(f"{source} is not valid YAML: {err}", "fix the YAML at the line shown") from None
    except RecursionError:
        raise SynthfmError(f"{source} is nested too deeply to read", "flatten the YAML") from None
    if _count_values(data, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise SynthfmError(f"{source} expands to more than {MAX_YAML_VALUES} values (through YAML aliases '*name')",
                           "write the values out, or remove the repeated aliases")
    return data


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file, with a clear error for a missing, non-UTF-8, malformed or alias-bomb file."""
    path = Path(path)
    if not path.is_file():
        raise SynthfmError(f"config file not found: {path}", "check the path")
    return parse_yaml(path.read_bytes(), str(path))


def load_config(model: type[M], path: str | Path) -> M:
    """Load a YAML file into a typed config."""
    return validate_config(model, read_yaml(path), str(path))


def given_options(ctx: Any, values: dict[str, Any], params: dict[str, str] | None = None) -> dict[str, Any]:
    """The options of a click/Typer command context typed on the command line (not left at their defaults), under
    their config keys (`params`: config key -> the command's parameter name, where they differ)."""
    params = params or {}
    return {key: value for key, value in values.items()  # by name: Typer's click may be its own copy
            if getattr(ctx.get_parameter_source(params.get(key, key)), "name", None) == "COMMANDLINE"}


def layer_options(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """A config's values in order: the YAML's (`base`, over the defaults in code), then the options actually given
    on the command line (`given`: only those, so an explicit option equal to a default still wins)."""
    return {**base, **given}


def dump_config(config: BaseModel) -> str:
    """Serialise a config to YAML (all fields, resolved defaults included)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
