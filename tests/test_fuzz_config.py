"""The config loaders under fuzzing (proof suite): ``load_config`` and ``load_policy`` (both via
``yamlconf``) get the shipped files mutated — values replaced by wrong types, keys deleted or
invented, huge strings, deep YAML nesting, alias fan-out, truncation at any byte, byte flips
and invalid UTF-8. A file is either accepted or refused with a ``ConfigError``; nothing else
may escape (no TypeError, KeyError, RecursionError, UnicodeError...)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from breachwatch.config import load_config
from breachwatch.detection.policy import load_policy
from breachwatch.errors import ConfigError
from tests.daemon_harness import REPO

CONFIG = REPO / "config" / "breachwatch.yml"
POLICY = REPO / "config" / "policy.yml"
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)

WRONG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "-1s", "1e309h", "72h", "left", "*", "../../etc/passwd", "\x00"]),
    st.just("x" * 200_000),  # huge field
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.integers(1, 100).map(lambda depth: _nested(depth)),
)


def _nested(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out += _paths(value, (*prefix, index))
    return out


def _mutate(doc: Any, path: tuple[Any, ...], how: str, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    if not path:
        return value if how == "replace" else doc
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if how == "replace":
        parent[last] = value
    elif how == "delete":
        del parent[last]
    elif how == "add" and isinstance(parent, dict):
        parent[f"unknown_{last}"] = value
    elif how == "add" and isinstance(parent, list):
        parent.append(value)
    return doc


@pytest.fixture(scope="module")
def seeds() -> dict[str, Any]:
    config = yaml.safe_load(CONFIG.read_text())
    # absolute paths, so the mutated copy in tmp still points at the real policy and CSV
    config["policy"] = str(POLICY)
    config["notifications"]["customers"] = str(REPO / "config" / "customers.csv")
    config["state_dir"] = "state"
    return {"config": config, "policy": yaml.safe_load(POLICY.read_text())}


def _load(kind: str, path: Path) -> None:
    try:
        if kind == "config":
            load_config(path)
        else:
            load_policy(path)
    except ConfigError as exc:
        assert str(exc)  # refused, with words


def test_the_seeds_load(tmp_path: Path, seeds: dict[str, Any]) -> None:
    for kind, doc in seeds.items():
        path = tmp_path / f"{kind}.yml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        (load_config if kind == "config" else load_policy)(path)


@pytest.mark.parametrize("kind", ["config", "policy"])
@FUZZ
@given(data=st.data())
def test_structural_mutations_are_accepted_or_refused_cleanly(
    kind: str, tmp_path: Path, seeds: dict[str, Any], data: st.DataObject
) -> None:
    doc = seeds[kind]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        how = data.draw(st.sampled_from(["replace", "delete", "add"]))
        doc = _mutate(doc, path, how, data.draw(WRONG_VALUES))
    target = tmp_path / f"{kind}.yml"
    try:
        target.write_text(yaml.safe_dump(doc, allow_unicode=True))
    except (yaml.representer.RepresenterError, UnicodeEncodeError):
        return  # not writable as YAML: nothing to load
    _load(kind, target)


@pytest.mark.parametrize("kind", ["config", "policy"])
@FUZZ
@given(data=st.data())
def test_byte_level_mutations_are_accepted_or_refused_cleanly(
    kind: str, tmp_path: Path, seeds: dict[str, Any], data: st.DataObject
) -> None:
    raw = bytearray(yaml.safe_dump(seeds[kind], allow_unicode=True).encode())
    how = data.draw(st.sampled_from(["truncate", "flip", "splice", "insert"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 10))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif how == "splice":
        other = (POLICY if kind == "config" else CONFIG).read_bytes()
        at = data.draw(st.integers(0, len(raw)))
        raw = raw[:at] + other[data.draw(st.integers(0, len(other))) :]
    else:
        at = data.draw(st.integers(0, len(raw)))
        junk = data.draw(
            st.sampled_from(
                [
                    b"\t",
                    b": :",
                    b"- ",
                    b"&a ",
                    b"*a",
                    b"!!python/object:os.system ",
                    b"\xff\xfe",
                    b"{",
                    b"[",
                    b"'",
                    b'"',
                    b"\n  \n-",
                ]
            )
        )
        raw = raw[:at] + junk + raw[at:]
    target = tmp_path / f"{kind}.yml"
    target.write_bytes(bytes(raw))
    _load(kind, target)


@pytest.mark.parametrize("kind", ["config", "policy"])
@pytest.mark.parametrize("depth", [50, 500, 5_000, 50_000])
def test_deep_nesting_is_refused_not_a_crash(kind: str, depth: int, tmp_path: Path) -> None:
    target = tmp_path / f"{kind}.yml"
    for text in (
        "version: " + "[" * depth + "]" * depth,
        "version: " + "{a: " * depth + "1" + "}" * depth,
        "".join(f"{'  ' * i}k{i}:\n" for i in range(min(depth, 2_000))) + "  " * 2_000 + "x: 1\n",
    ):
        target.write_text(text)
        with pytest.raises(ConfigError):
            (load_config if kind == "config" else load_policy)(target)


@pytest.mark.parametrize("kind", ["config", "policy"])
def test_alias_fan_out_and_huge_values_are_refused(kind: str, tmp_path: Path) -> None:
    target = tmp_path / f"{kind}.yml"
    laughs = ["a0: &a0 [x, x, x, x, x, x, x, x]"]
    laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 8)}]" for i in range(1, 6)]
    for text in (
        "\n".join(laughs) + "\n",  # 8**6 leaves if expanded
        "state_dir: " + "x" * 2_000_000 + "\n",
        "\ufeff\x00\x01",
        "",
        "---\n---\n",
        "!!binary aGVsbG8=\n",
    ):
        target.write_text(text)
        with pytest.raises(ConfigError):
            (load_config if kind == "config" else load_policy)(target)


@pytest.mark.parametrize("value", [-86_399_999_913_601, 10**20, 1e300, "99999999999d"])
def test_a_duration_beyond_timedelta_is_refused(
    tmp_path: Path, seeds: dict[str, Any], value: object
) -> None:
    """Found by the fuzzer: timedelta raised OverflowError, which is no validation error."""
    doc = copy.deepcopy(seeds["config"])
    doc["incidents"]["correlation_window"] = value
    target = tmp_path / "config.yml"
    target.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="correlation_window"):
        load_config(target)


def test_a_policy_duration_beyond_timedelta_is_a_validation_error() -> None:
    from breachwatch.detection.policy_types import duration_parser

    with pytest.raises(ValueError, match="a positive duration"):
        duration_parser()("99999999999999999y")
