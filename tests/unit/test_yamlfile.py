"""Deeply nested YAML: a config error naming the line and the limit, never a RecursionError."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.cli import main
from exporter.config import ConfigError, load_config
from exporter.config.yamlfile import MAX_DEPTH, YAMLProblem, parse_yaml

DEEP = 5000


def deep_flow_sequence(levels: int) -> str:
    return "[" * levels + "]" * levels + "\n"


def deep_flow_mapping(levels: int) -> str:
    return "{a: " * levels + "1" + "}" * levels + "\n"


def deep_block_mapping(levels: int) -> str:
    return "".join("  " * i + "a:\n" for i in range(levels - 1)) + "  " * (levels - 1) + "a: 1\n"


def anchor_chain(links: int) -> str:
    """Each anchor holds the previous one: shallow as written, `links` levels deep once expanded."""
    lines = ["l0: &l0 [x]"] + [f"l{i}: &l{i} [*l{i - 1}]" for i in range(1, links)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (deep_flow_sequence(DEEP), 1),
        (deep_flow_mapping(DEEP), 1),
        (deep_block_mapping(500), MAX_DEPTH),  # the line of the last container within the limit; indentation
        # makes a deeper block file larger than the size limit
    ],
    ids=["flow-sequence", "flow-mapping", "block-mapping"],
)
def test_deep_nesting_is_a_config_error_naming_the_line_and_the_limit(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "config.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [f"--config.file: {path} line {line}: nesting deeper than {MAX_DEPTH} levels"]


def test_nesting_up_to_the_limit_is_read() -> None:
    assert parse_yaml(deep_flow_sequence(MAX_DEPTH)) is not None
    with pytest.raises(YAMLProblem, match=f"nesting deeper than {MAX_DEPTH} levels"):
        parse_yaml(deep_flow_sequence(MAX_DEPTH + 1))


def test_nesting_through_a_chain_of_aliases_is_bounded_too() -> None:
    assert parse_yaml(anchor_chain(MAX_DEPTH - 2))["l97"] is not None  # the mapping adds a level
    with pytest.raises(YAMLProblem, match=f"nesting deeper than {MAX_DEPTH} levels"):
        parse_yaml(anchor_chain(MAX_DEPTH))
    with pytest.raises(YAMLProblem, match=f"nesting deeper than {MAX_DEPTH} levels"):
        parse_yaml(anchor_chain(DEEP))


def test_config_check_and_start_up_refuse_deep_nesting_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "deep.yml"
    path.write_text(deep_flow_sequence(DEEP))
    for args in (["--config.check"], []):
        assert main(["--config.file", str(path), *args]) == 1
        err = capsys.readouterr().err
        assert f"--config.file: {path} line 1: nesting deeper than {MAX_DEPTH} levels" in err
        assert "Traceback" not in err and "RecursionError" not in err


def test_a_deep_web_config_is_refused_naming_its_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    web = tmp_path / "web.yml"
    web.write_text(deep_flow_mapping(DEEP))
    assert main(["--web.config.file", str(web), "--config.check"]) == 1
    assert f"--web.config.file: {web} line 1: nesting deeper than {MAX_DEPTH} levels" in capsys.readouterr().err
