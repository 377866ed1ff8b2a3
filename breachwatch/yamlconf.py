"""Load a YAML file into a pydantic model, refusing it with file, line and key path.

Every config and policy file goes through here, so `check-config` and the daemon refuse the
same files with the same words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from breachwatch.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)

KeyPath = tuple[str | int, ...]


def _index_lines(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            lines[(*path, key)] = key_node.start_mark.line + 1
            _index_lines(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*path, index), lines)


def read_yaml(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Parse a YAML file; return its data and the line of every key path."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(name, "", f"cannot read the file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(name, "", "a UTF-8 text file") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(name, "", f"valid YAML ({getattr(exc, 'problem', exc)})", line) from exc
    except RecursionError as exc:  # PyYAML composes recursively: "[[[[..." must not crash
        raise ConfigError(name, "", "valid YAML (nested too deeply)") from exc
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    return data, lines


def _describe(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key (not allowed here; check the spelling)"
    if kind == "missing":
        return "required key is missing"
    message = str(error.get("msg", "invalid value"))
    value = error.get("input")
    if not isinstance(value, dict | list) and kind != "missing":
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return f"{message} (got {shown})"
    return message


def validate_data(
    model: type[ModelT], data: Any, file: str, lines: dict[KeyPath, int] | None = None
) -> ModelT:
    """Validate already-read data; the first error becomes a ConfigError with its line."""
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc: KeyPath = tuple(part for part in first["loc"] if isinstance(part, str | int))
        # pydantic adds the validator name for unions/tagged unions; keep what exists in the file
        line = None
        if lines:
            probe = loc
            while probe and probe not in lines:
                probe = probe[:-1]
            line = lines.get(probe)
        key_path = ".".join(str(part) for part in loc)
        raise ConfigError(file, key_path, _describe(dict(first)), line) from exc


def load_yaml_model(model: type[ModelT], path: Path) -> ModelT:
    data, lines = read_yaml(path)
    return validate_data(model, data, str(path), lines)
