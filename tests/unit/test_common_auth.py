import pytest

from common import auth
from common.errors import ApiError

SECRET = b"s3cr3t-for-host-a"


def make_verifier(now=1_000_000.0):
    clock = {"now": now}
    verifier = auth.Verifier(
        lambda host: SECRET if host == "host-a" else None, clock=lambda: clock["now"]
    )
    return verifier, clock


def signed(method="POST", path="/v1/agents/heartbeat", body=b'{"gpus":[]}', now=1_000_000.0):
    return auth.sign(SECRET, "host-a", method, path, body, now=now)


def test_valid_request_returns_host():
    verifier, _ = make_verifier()
    headers = signed()
    assert verifier.verify("POST", "/v1/agents/heartbeat", headers, b'{"gpus":[]}') == "host-a"


def expect_401(verifier, method, path, headers, body, fragment):
    with pytest.raises(ApiError) as info:
        verifier.verify(method, path, headers, body)
    assert info.value.code == "unauthenticated" and info.value.status == 401
    assert fragment in info.value.message


def test_unsigned_request_refused():
    verifier, _ = make_verifier()
    expect_401(verifier, "POST", "/v1/agents/heartbeat", {}, b"", "not signed")


def test_tampered_body_path_method_refused():
    verifier, _ = make_verifier()
    headers = signed()
    expect_401(verifier, "POST", "/v1/agents/heartbeat", headers, b'{"gpus":[1]}', "bad signature")
    expect_401(verifier, "POST", "/v1/agents/usage", headers, b'{"gpus":[]}', "bad signature")
    expect_401(verifier, "PUT", "/v1/agents/heartbeat", headers, b'{"gpus":[]}', "bad signature")


def test_wrong_secret_refused():
    verifier, _ = make_verifier()
    headers = auth.sign(b"other", "host-a", "POST", "/p", b"", now=1_000_000.0)
    expect_401(verifier, "POST", "/p", headers, b"", "bad signature")


def test_unknown_host_refused():
    verifier, _ = make_verifier()
    headers = auth.sign(SECRET, "host-z", "POST", "/p", b"", now=1_000_000.0)
    expect_401(verifier, "POST", "/p", headers, b"", "unknown host")


@pytest.mark.parametrize("skew", [301, -301, 3600])
def test_stale_request_refused(skew):
    verifier, _ = make_verifier()
    headers = signed(now=1_000_000.0 - skew)
    expect_401(verifier, "POST", "/v1/agents/heartbeat", headers, b'{"gpus":[]}', "stale")


def test_skew_within_window_accepted():
    verifier, _ = make_verifier()
    headers = signed(now=1_000_000.0 - 299)
    assert verifier.verify("POST", "/v1/agents/heartbeat", headers, b'{"gpus":[]}') == "host-a"


def test_replay_refused():
    verifier, _ = make_verifier()
    headers = signed()
    verifier.verify("POST", "/v1/agents/heartbeat", headers, b'{"gpus":[]}')
    expect_401(verifier, "POST", "/v1/agents/heartbeat", headers, b'{"gpus":[]}', "replayed")


def test_replay_refused_until_the_timestamp_is_stale_anyway():
    verifier, clock = make_verifier()
    headers = signed()
    verifier.verify("POST", "/v1/agents/heartbeat", headers, b'{"gpus":[]}')
    clock["now"] += 299
    expect_401(verifier, "POST", "/v1/agents/heartbeat", headers, b'{"gpus":[]}', "replayed")
    clock["now"] += 2
    expect_401(verifier, "POST", "/v1/agents/heartbeat", headers, b'{"gpus":[]}', "stale")


def test_nonce_cache_is_bounded_by_time():
    verifier, clock = make_verifier()
    for _ in range(50):
        verifier.verify(
            "POST", "/p", auth.sign(SECRET, "host-a", "POST", "/p", now=clock["now"]), b""
        )
        clock["now"] += 30
    # Only nonces from the last 2 * MAX_SKEW_S are kept.
    assert len(verifier._seen) <= 2 * auth.MAX_SKEW_S // 30 + 1


def test_tokens_are_random_and_stored_as_digests():
    a, b = auth.new_token("nbf_"), auth.new_token("nbf_")
    assert a != b and a.startswith("nbf_") and len(a) > 40
    assert auth.token_digest(a) != a and len(auth.token_digest(a)) == 64


def test_empty_secret_file_refused(tmp_path):
    path = tmp_path / "secret"
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        auth.read_secret(path)
    path.write_text("abc\n")
    assert auth.read_secret(path) == b"abc"
