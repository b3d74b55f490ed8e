"""`basic_auth_users` in `--web.config.file`: hashes checked at load, and the gate's decisions (exporter.web.basicauth).

Real bcrypt throughout, at the lowest cost (04) so each comparison takes about a millisecond.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from pathlib import Path

import bcrypt
import pytest

from exporter.config import ConfigError
from exporter.web import basicauth
from exporter.web.basicauth import MAX_PASSWORD_BYTES, BasicAuthGate, Verdict, basic_auth_gate, parse_basic
from exporter.web.webconfig import WebConfig, load_web_config, parse_web_config


def bcrypt_hash(password: bytes, cost: int = 4, prefix: str = "$2y$") -> str:
    return prefix + bcrypt.hashpw(password, bcrypt.gensalt(cost)).decode()[4:]


def basic(user: str | bytes, password: str | bytes) -> str:
    raw = (user if isinstance(user, bytes) else user.encode()) + b":"
    raw += password if isinstance(password, bytes) else password.encode()
    return "Basic " + base64.b64encode(raw).decode()


ALICE = bcrypt_hash(b"wonderland")
BOB = bcrypt_hash(b"builder", prefix="$2a$")


# --------------------------------------------------------------------------------------------- loading


def test_users_load_from_the_node_exporter_file_format(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  alice: {ALICE}\n  bob: '{BOB}'\n")
    web = load_web_config(path)
    assert web.basic_auth_users == {"alice": ALICE, "bob": BOB}
    assert basic_auth_gate(web) is not None


def test_no_users_means_no_gate() -> None:
    assert basic_auth_gate(WebConfig()) is None
    assert basic_auth_gate(parse_web_config({"basic_auth_users": {}})) is None


@pytest.mark.parametrize(
    ("users", "expected"),
    [
        ({"alice": "wonderland"}, "basic_auth_users.alice: is not a bcrypt hash"),  # a password, not its hash
        ({"alice": ALICE[:-1]}, "basic_auth_users.alice: is not a bcrypt hash"),  # truncated
        ({"alice": "$2x$" + ALICE[4:]}, "basic_auth_users.alice: is not a bcrypt hash"),  # broken 2x variant
        ({"alice": ALICE[:4] + "03" + ALICE[6:]}, "basic_auth_users.alice: is not a bcrypt hash"),  # cost < 4
        ({"alice": "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="}, "basic_auth_users.alice: is not a bcrypt hash"),
        ({"alice": None}, "basic_auth_users.alice: is not a bcrypt hash"),
        ({"a:b": ALICE}, "basic_auth_users.a:b: a user name must be non-empty and without ':'"),
        ({"": ALICE}, "basic_auth_users.: a user name must be non-empty"),
        ({5: ALICE}, "basic_auth_users[5]: keys must be strings"),
        (["alice"], "basic_auth_users: must be a mapping"),
    ],
)
def test_bad_users_are_refused_naming_the_user(users: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_web_config({"basic_auth_users": users})
    assert len(info.value.problems) == 1, info.value.problems
    assert info.value.problems[0].startswith(expected), info.value.problems
    assert "wonderland" not in str(info.value)  # a password typed where the hash goes is not echoed


def test_every_bad_user_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_web_config({"basic_auth_users": {"alice": "x", "bob": BOB, "carol": "y"}})
    assert sorted(p.split(":")[0] for p in info.value.problems) == ["basic_auth_users.alice", "basic_auth_users.carol"]


# --------------------------------------------------------------------------------------------- header


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (basic("alice", "wonderland"), ("alice", b"wonderland")),
        ("basic " + basic("alice", "a:b:c")[6:], ("alice", b"a:b:c")),  # scheme case-insensitive; first ':' splits
        (basic("alice", ""), ("alice", b"")),
        (basic("zoë", "pässword"), ("zoë", "pässword".encode())),
        (None, None),
        ("", None),
        ("Bearer " + base64.b64encode(b"alice:wonderland").decode(), None),
        ("Basic " + base64.b64encode(b"alice").decode(), None),  # no colon
        ("Basic not*base64", None),
        ("Basic é", None),
        (basic(b"\xff", "x"), None),  # user name not UTF-8
    ],
)
def test_parse_basic(header: str | None, expected: tuple[str, bytes] | None) -> None:
    assert parse_basic(header) == expected


# --------------------------------------------------------------------------------------------- gate


async def test_the_right_password_passes_and_everything_else_is_refused() -> None:
    gate = BasicAuthGate({"alice": ALICE, "bob": BOB})
    assert await gate.allows(basic("alice", "wonderland"))
    assert await gate.allows(basic("bob", "builder"))  # a $2a$ hash
    assert not await gate.allows(basic("alice", "builder"))  # another user's password
    assert not await gate.allows(basic("alice", "Wonderland"))
    assert not await gate.allows(basic("carol", "wonderland"))  # unknown user
    assert not await gate.allows(basic("Alice", "wonderland"))  # names are case-sensitive, as in Go
    assert not await gate.allows(None)
    assert not await gate.allows("Bearer wonderland")


async def test_unknown_users_cost_a_bcrypt_comparison_and_are_refused_even_with_a_valid_password() -> None:
    """Timing must not tell which users exist: an unknown name is compared against a configured hash too."""
    gate = BasicAuthGate({"alice": ALICE})
    assert not await gate.allows(basic("mallory", "wonderland"))  # the decoy is alice's hash: it matches
    assert gate.bcrypt_checks == 1
    assert not await gate.allows(basic("mallory", "wonderland"))  # and is never remembered
    assert gate.bcrypt_checks == 2


async def test_the_decoy_is_the_costliest_hash() -> None:
    cheap, dear = bcrypt_hash(b"a", 4), bcrypt_hash(b"b", 5)
    gate = BasicAuthGate({"cheap": cheap, "dear": dear})
    assert gate._decoy == dear.encode()  # an unknown user costs what the slowest real one does
    assert BasicAuthGate({"dear": dear, "cheap": cheap})._decoy == dear.encode()


async def test_successes_are_cached_and_failures_are_not() -> None:
    gate = BasicAuthGate({"alice": ALICE})
    for _ in range(5):
        assert await gate.allows(basic("alice", "wonderland"))
    assert gate.bcrypt_checks == 1
    for _ in range(3):
        assert not await gate.allows(basic("alice", "guess"))
    assert gate.bcrypt_checks == 4
    assert await gate.allows(basic("alice", "wonderland"))
    assert gate.bcrypt_checks == 4


async def test_the_cache_is_bounded_and_forgets_the_least_recently_used() -> None:
    users = {f"u{i}": bcrypt_hash(f"p{i}".encode()) for i in range(3)}
    gate = BasicAuthGate(users, cache_size=2)
    for i in range(3):
        assert await gate.allows(basic(f"u{i}", f"p{i}"))
    assert gate.bcrypt_checks == 3
    assert await gate.allows(basic("u2", "p2"))  # still cached
    assert gate.bcrypt_checks == 3
    assert await gate.allows(basic("u0", "p0"))  # evicted by u2: checked again
    assert gate.bcrypt_checks == 4
    assert await gate.allows(basic("u1", "p1"))  # evicted by u0
    assert gate.bcrypt_checks == 5


async def test_a_remembered_password_does_not_outlive_its_hash() -> None:
    """Cache entries are keyed by the hash too: a user whose hash changes must present the new password."""
    old = BasicAuthGate({"alice": ALICE})
    assert await old.allows(basic("alice", "wonderland"))
    new_hash = bcrypt_hash(b"looking-glass")
    old._users["alice"] = new_hash.encode()  # what a reload of the users would do
    assert not await old.allows(basic("alice", "wonderland"))
    assert await old.allows(basic("alice", "looking-glass"))


async def test_passwords_longer_than_bcrypt_reads_are_refused() -> None:
    """bcrypt reads 72 bytes: Go ignores the rest, bcrypt 5 raises. Refusing is the same on every version."""
    long = b"x" * MAX_PASSWORD_BYTES
    gate = BasicAuthGate({"alice": bcrypt_hash(long)})
    assert await gate.allows(basic("alice", long))
    assert not await gate.allows(basic("alice", long + b"y"))


async def test_concurrent_first_requests_share_one_bcrypt_check() -> None:
    """Checks run one at a time; requests that waited for a check of the same credentials reuse its result."""
    gate = BasicAuthGate({"alice": ALICE})
    results = await asyncio.gather(*(gate.allows(basic("alice", "wonderland")) for _ in range(8)))
    assert all(results)
    assert gate.bcrypt_checks == 1


async def test_a_slow_check_runs_off_the_event_loop() -> None:
    """While bcrypt works on one request (cost 13: about a second), cached requests are still answered.

    Ordering, not timing: if the comparison ran on the loop, the cached request could only be served after
    the slow one had finished.
    """
    gate = BasicAuthGate({"alice": ALICE, "slow": bcrypt_hash(b"slow", cost=13)})
    assert await gate.allows(basic("alice", "wonderland"))
    slow = asyncio.create_task(gate.allows(basic("slow", "slow")))
    await asyncio.sleep(0)  # the task runs up to its first suspension: the comparison in its thread
    assert gate.bcrypt_checks == 2
    assert await gate.allows(basic("alice", "wonderland"))
    assert not slow.done()
    assert await slow


def test_a_gate_needs_users() -> None:
    with pytest.raises(ValueError, match="at least one user"):
        BasicAuthGate({})


async def test_checks_beyond_the_queue_are_answered_busy_at_once_and_remembered_users_still_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flood of wrong passwords must not queue without bound behind the one-at-a-time bcrypt check."""
    gate = BasicAuthGate({"alice": ALICE})
    assert await gate.check(basic("alice", "wonderland")) is Verdict.ALLOWED  # remembered from here on
    release = threading.Event()
    entered = threading.Event()
    real = bcrypt.checkpw

    def held(password: bytes, hashed: bytes) -> bool:
        entered.set()
        release.wait(10)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", held)
    waiting = [asyncio.create_task(gate.check(basic("alice", f"guess{i}"))) for i in range(basicauth.MAX_PENDING)]
    await asyncio.to_thread(entered.wait, 10)  # the first check runs, the others wait their turn
    assert await asyncio.wait_for(gate.check(basic("alice", "one-too-many")), 1) is Verdict.BUSY
    assert await asyncio.wait_for(gate.check(basic("alice", "wonderland")), 1) is Verdict.ALLOWED
    release.set()
    assert await asyncio.gather(*waiting) == [Verdict.REFUSED] * basicauth.MAX_PENDING
    assert gate.bcrypt_checks == 1 + basicauth.MAX_PENDING  # the busy one cost no check
    assert await gate.check(basic("alice", "after the flood")) is Verdict.REFUSED  # room again


async def test_a_check_whose_client_is_gone_is_skipped() -> None:
    gate = BasicAuthGate({"alice": ALICE})
    assert await gate.check(basic("alice", "wonderland"), wanted=lambda: False) is Verdict.REFUSED
    assert gate.bcrypt_checks == 0
