import pytest

from exporter.core.units import format_duration, parse_bytes, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("7d", 604800),
        ("250ms", 0.25),
        ("2w", 1209600),
        ("0s", 0),
        ("0", 0),  # Prometheus allows a bare 0, and no other unitless number
        ("1y2w3d4h5m6s7ms", 31536000 + 2 * 604800 + 3 * 86400 + 4 * 3600 + 5 * 60 + 6.007),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "30", "5 m", "1h 30m", "m5", "1.5h", "-1s", "10x", "30m1h", "1h1h", "1s1h", "00", "1ms1s", "30s\n", "1Y"],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    for text in ("30s", "5m", "1h30m", "1w2d", "250ms", "1y", "1m1s500ms"):
        assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("5GB", 5_000_000_000),
        ("512MiB", 512 * 2**20),
        (1024, 1024),
        ("1.5kB", 1500),
        ("10", 10),
        ("2 GiB", 2 * 2**30),
        ("5Gi", 5 * 2**30),
        ("1.5KiB", 1536),
        ("0", 0),
    ],
)
def test_parse_bytes(value: str | int, size: int) -> None:
    assert parse_bytes(value) == size


@pytest.mark.parametrize("value", ["5XB", "GB", "-1", True, -5, "1e9", "5G", "5k", "0.1B", 1.5])
def test_parse_bytes_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_bytes(value)  # type: ignore[arg-type]


def test_duration_overflow_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_duration("300000000y")
