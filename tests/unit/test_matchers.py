import pytest

from exporter.core.matchers import all_match, parse_matcher


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ('alertname="DockerDiskPressure"', {"alertname": "DockerDiskPressure"}, True),
        ('alertname="DockerDiskPressure"', {"alertname": "Other"}, False),
        ('severity=~"warning|critical"', {"severity": "critical"}, True),
        ('severity=~"warning|critical"', {"severity": "critical-ish"}, False),  # anchored
        ('severity!~"info"', {"severity": "warning"}, True),
        ('host!="node-1"', {"host": "node-1"}, False),
        ('host!="node-1"', {}, True),  # missing label is the empty string
        ('host=""', {}, True),
        ("team=infra", {"team": "infra"}, True),  # unquoted values, as amtool accepts
        (r'msg="say \"hi\""', {"msg": 'say "hi"'}, True),
    ],
)
def test_matcher_semantics(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_matcher(text).matches(labels) is expected


@pytest.mark.parametrize("text", ["alertname", '="x"', 'a=~"("', 'a=="x"', "1abc=x"])
def test_bad_matchers_name_the_problem(text: str) -> None:
    with pytest.raises(ValueError, match=r"matcher|regular expression"):
        parse_matcher(text)


def test_all_match_empty_matches_everything() -> None:
    assert all_match([], {"a": "b"})
    assert not all_match([parse_matcher('a="b"'), parse_matcher('c="d"')], {"a": "b"})


def test_str_round_trips() -> None:
    m = parse_matcher(r'msg="say \"hi\""')
    assert parse_matcher(str(m)) == m


@pytest.mark.parametrize(
    ("text", "requires"),
    [
        ('alertname="X"', True),
        ('alertname=~"Docker.+"', True),
        ('alertname=""', False),  # matches alerts without the label
        ('alertname=~".*"', False),
        ('alertname=~"X|"', False),
        ('severity!="info"', False),
        ('severity!~"info"', False),
    ],
)
def test_requires_label(text: str, requires: bool) -> None:
    assert parse_matcher(text).requires_label() is requires
