"""The console's session cookies and CSRF tokens, and its session secret file (no database)."""

from __future__ import annotations

import stat
from pathlib import Path

from api.service.access import Principal, Role
from api.web.console.base import safe_next
from api.web.console.sessions import SessionCodec, load_or_create_secret

ANALYST = Principal(name="alice", role=Role.ANALYST)


def test_a_cookie_round_trips_and_any_change_to_it_is_refused() -> None:
    codec = SessionCodec(b"k" * 32, clock=lambda: 1000.0)
    session = codec.new("0123456789abcdef", ANALYST, seconds=60)
    cookie = codec.encode(session)
    assert codec.decode(cookie) == session
    payload, tag = cookie.split(".")
    flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    for bad in (f"{flipped}.{tag}", f"{payload}.{tag[:-1]}x", payload, "", f"{payload}.{tag}.x"):
        assert codec.decode(bad) is None, bad
    other = SessionCodec(b"o" * 32, clock=lambda: 1000.0)
    assert other.decode(cookie) is None


def test_a_cookie_expires() -> None:
    now = [1000.0]
    codec = SessionCodec(b"k" * 32, clock=lambda: now[0])
    cookie = codec.encode(codec.new("0123456789abcdef", ANALYST, seconds=60))
    now[0] = 1059.0
    assert codec.decode(cookie) is not None
    now[0] = 1060.0
    assert codec.decode(cookie) is None


def test_csrf_tokens_are_bound_to_one_session() -> None:
    codec = SessionCodec(b"k" * 32)
    one, two = codec.new(), codec.new()
    assert one.sid != two.sid
    assert codec.csrf_matches(one, codec.csrf_token(one))
    assert not codec.csrf_matches(one, codec.csrf_token(two))
    assert not codec.csrf_matches(one, None)
    assert not codec.csrf_matches(one, "")


def test_the_secret_is_generated_once_private_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "console-session-key"
    first = load_or_create_secret(path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


def test_after_sign_in_only_console_paths_of_this_site() -> None:
    assert safe_next("/console/applications/x?y=1") == "/console/applications/x?y=1"
    for hostile in (
        None,
        "",
        "https://evil.example/console/",
        "//evil.example",
        "/consolex",
        "/console/\\evil",
        "/lending/apply",
    ):
        assert safe_next(hostile) == "/console", hostile
