"""`offloop.loads_in_slices` is `json.loads`: the same value for any JSON, an error for anything it refuses,
whatever the cuts between slices meet (label values holding the very characters a cut looks for), and it
pauses for scrapes between slices when it runs off the loop."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core import offloop

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
#: Strings rich in what a cut looks for (`},{"`) and in what ends a slice wrongly.
tricky = st.text(alphabet='},{"[]:\\ab\n', max_size=12)
values = st.recursive(
    scalars | tricky, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(tricky, kids, max_size=4)
)
images = st.lists(
    st.dictionaries(tricky | st.sampled_from(["Id", "RepoTags", "Labels"]), values, max_size=5), max_size=40
)


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer sliced, in slices of a few objects: the cuts meet every corner of small inputs."""
    monkeypatch.setattr(offloop, "LOADS_IN_ONE", 0)
    monkeypatch.setattr(offloop, "LOADS_SLICE", 8)


def encodings(value: Any) -> list[str]:
    """The engine's compact form, and spaced forms (which no cut finds)."""
    return [json.dumps(value, separators=(",", ":")), json.dumps(value), json.dumps(value, indent=1)]


@settings(max_examples=60, deadline=None)
@given(images)
def test_a_listing_decodes_as_json_loads_does(listing: list[Any]) -> None:
    for text in encodings(listing):
        assert offloop.loads_in_slices(text.encode()) == json.loads(text)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(tricky | st.just("Images"), images | values, max_size=5))
def test_an_answer_with_listings_in_it_decodes_as_json_loads_does(answer: dict[str, Any]) -> None:
    for text in encodings(answer):
        decoded = offloop.loads_in_slices(text)
        assert decoded == json.loads(text)
        assert list(decoded) == list(json.loads(text))  # members in the same order, duplicates as json.loads


@settings(max_examples=60, deadline=None)
@given(images, st.integers(min_value=0, max_value=10_000), st.sampled_from(['"', "}", "]", ",", "{", "x", "\\", ""]))
def test_a_broken_answer_is_refused_as_json_loads_refuses_it(listing: list[Any], at: int, junk: str) -> None:
    text = json.dumps(listing, separators=(",", ":"))
    at %= len(text) + 1
    broken = text[:at] + junk + text[at + 1 :]
    try:
        expected = json.loads(broken)
    except ValueError:
        with pytest.raises(ValueError):
            offloop.loads_in_slices(broken)
    else:
        assert offloop.loads_in_slices(broken) == expected


def test_a_label_value_that_looks_like_a_cut_is_not_one() -> None:
    listing = [{"Id": str(i), "Labels": {"note": "ends },{" if i % 3 == 0 else "plain"}} for i in range(200)]
    text = json.dumps(listing, separators=(",", ":"))
    assert '},{"' in text.replace('},{"Id"', "")  # the look-alike is there, away from the true cuts
    assert offloop.loads_in_slices(text) == listing


def test_bytes_in_the_encodings_json_loads_reads() -> None:
    listing = [{"Id": "é", "RepoTags": ["ü:1"]}] * 50
    for encoding in ("utf-8", "utf-8-sig", "utf-16", "utf-32"):
        body = json.dumps(listing, ensure_ascii=False).encode(encoding)
        assert offloop.loads_in_slices(body) == json.loads(body) == listing


def test_off_the_loop_it_pauses_between_slices_while_a_scrape_is_served() -> None:
    listing = [{"Id": str(i), "RepoTags": [f"r/{i}:1"]} for i in range(400)]
    text = json.dumps(listing, separators=(",", ":"))
    checkpoints = 0
    real = offloop.checkpoint

    def counted() -> None:
        nonlocal checkpoints
        checkpoints += 1
        real()

    done = threading.Event()
    result: list[Any] = []

    def work() -> None:
        result.append(offloop._lowered(offloop.loads_in_slices, (text,)))
        done.set()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(offloop, "checkpoint", counted)
        patch.setattr(offloop, "LOADS_SLICE", 1000)  # about 28 images a slice
        with offloop.scrapes_first():
            thread = threading.Thread(target=work)
            thread.start()
            assert not done.wait(offloop.PAUSE_LIMIT / 2)  # held at its first checkpoint by the scrape
        thread.join(5)
    assert result == [listing]
    assert checkpoints >= len(text) // 1100  # between slices, not once for the whole
