"""OpenSSH public keys: what is accepted, what is refused and why, fingerprints as
``ssh-keygen -l`` prints them, the wire constraints naming the field, the ssh:// address."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import msgspec
import pytest

from common import wire
from common.errors import ApiError
from common.ssh import (
    MAX_KEYS,
    SshKeyError,
    fingerprint,
    looks_like_key,
    parse_public_key,
    parse_ssh_url,
    ssh_url,
)
from tests.support.ssh_keys import blob, ed25519_line, keygen, keygen_fingerprint


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("key_type", "bits", "shown"),
    [
        ("ed25519", None, "ED25519"),
        ("ecdsa", 256, "ECDSA"),
        ("ecdsa", 384, "ECDSA"),
        ("ecdsa", 521, "ECDSA"),
        ("rsa", 2048, "RSA"),
    ],
)
def test_fingerprint_and_type_match_ssh_keygen(
    tmp_path: Path, key_type: str, bits: int | None, shown: str
) -> None:
    pub = keygen(tmp_path, "id", key_type, bits=bits, comment="ada@laptop work")
    line = pub.read_text()
    key = parse_public_key(line)
    want_bits, want_fingerprint, want_comment, want_type = keygen_fingerprint(pub)
    assert key.fingerprint == want_fingerprint
    assert (key.comment, want_type) == (want_comment, shown)
    assert key.type == line.split()[0]
    # The normalized line is the file's line (ssh-keygen writes single spaces, padded base64).
    assert key.line == line.strip()


#: x and y of P-256's base point.
P256_GENERATOR = bytes.fromhex(
    "6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296"
    "4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5"
)


def test_a_security_key_line_matches_ssh_keygen(tmp_path: Path) -> None:
    """sk-* keys need a token to make; ssh-keygen reads a made-up one all the same."""
    raw = blob(b"sk-ssh-ed25519@openssh.com", bytes(range(32)), b"ssh:")
    pub = tmp_path / "sk.pub"
    pub.write_text(f"sk-ssh-ed25519@openssh.com {b64(raw)} yubikey\n")
    key = parse_public_key(pub.read_text())
    _, want_fingerprint, comment, key_type = keygen_fingerprint(pub)
    assert (key.fingerprint, key.comment, key_type) == (want_fingerprint, comment, "ED25519-SK")

    point = b"\x04" + P256_GENERATOR  # a point ssh-keygen's OpenSSL accepts
    raw = blob(b"sk-ecdsa-sha2-nistp256@openssh.com", b"nistp256", point, b"ssh:")
    pub.write_text(f"sk-ecdsa-sha2-nistp256@openssh.com {b64(raw)}\n")
    _, want_fingerprint, comment, key_type = keygen_fingerprint(pub)
    assert parse_public_key(pub.read_text()).fingerprint == want_fingerprint
    assert (comment, key_type) == ("", "ECDSA-SK")


def test_fingerprint_is_unpadded_base64_of_sha256() -> None:
    assert fingerprint(b"") == "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"


def test_blanks_around_and_between_fields_are_normalized() -> None:
    line = ed25519_line("a", "ada@laptop")
    kind, data, comment = line.split(" ", 2)
    key = parse_public_key(f"  {kind}\t{data}   {comment} two  \n")
    assert key.line == f"{kind} {data} {comment} two"
    assert parse_public_key(f"{kind} {data}").comment == ""


RSA_512 = blob(b"ssh-rsa", b"\x01\x00\x01", b"\x00" + b"\xc3" * 64)
ED = blob(b"ssh-ed25519", bytes(32))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "key type 'ssh-dss' is not one of ssh-ed25519"),
        ('from="10.0.0.1" ssh-ed25519 AAAA', "key type 'from=\"10.0.0.1\"' is not one of"),
        ("ssh-ed25519", "ssh-ed25519 key without its base64 part"),
        ("ssh-ed25519 AAAA!!!!", "base64 part does not decode"),
        (f"ssh-rsa {b64(ED)}", "the line says ssh-rsa but the key inside is 'ssh-ed25519'"),
        (f"ssh-ed25519 {b64(ED[:-5])}", "truncated"),
        (f"ssh-ed25519 {b64(ED + blob(b'x'))}", "truncated or has extra data"),
        (f"ssh-ed25519 {b64(ED + b'xy')}", "truncated"),
        (f"ssh-ed25519 {b64(blob(b'ssh-ed25519', bytes(31)))}", "31 bytes, not 32"),
        (
            f"ecdsa-sha2-nistp384 {b64(blob(b'ecdsa-sha2-nistp384', b'nistp256', bytes(65)))}",
            "on curve 'nistp256'",
        ),
        (
            f"ecdsa-sha2-nistp256 {b64(blob(b'ecdsa-sha2-nistp256', b'nistp256', bytes(65)))}",
            "point is not a nistp256 point",
        ),
        (f"ssh-rsa {b64(RSA_512)}", "the RSA key has 512 bits; at least 1024"),
        (f"ssh-ed25519 {b64(ED)} a\x00b", "without NUL or line breaks"),
        (f"ssh-ed25519 {b64(ED)} one\nssh-ed25519 {b64(ED)}", "without NUL or line breaks"),
        (f"ssh-ed25519 {b64(ED)} bell\x07", "control characters"),
        ("ssh-ed25519 " + "A" * 5000, "longer than 4096 characters"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "this is a private key; give the public one"),
        ("", "empty"),
    ],
)
def test_refused_keys_say_why(text: str, says: str) -> None:
    with pytest.raises(SshKeyError) as refused:
        parse_public_key(text)
    assert says in str(refused.value)


def test_looks_like_key_tells_keys_from_file_names() -> None:
    assert looks_like_key(ed25519_line("a"))
    assert looks_like_key("ssh-rsa")
    assert not looks_like_key("~/.ssh/id_ed25519.pub")
    assert not looks_like_key("")


# ---------------------------------------------------------------- wire constraints


def create(keys: object) -> bytes:
    return json.dumps(
        {"framework": "conda", "editor": "jupyterlab", "ssh_public_keys": keys}
    ).encode()


@pytest.mark.parametrize(
    ("keys", "field"),
    [
        (["ssh-dss AAAA"], "$.ssh_public_keys[0]"),
        ([ed25519_line("a"), "ssh-ed25519 AAAA\nssh-ed25519 AAAA"], "$.ssh_public_keys[1]"),
        ([ed25519_line("a", "nul\x00")], "$.ssh_public_keys[0]"),
        (["x"], "$.ssh_public_keys[0]"),
        ([ed25519_line(str(i)) for i in range(MAX_KEYS + 1)], "$.ssh_public_keys"),
    ],
)
def test_create_refuses_malformed_keys_naming_the_field(keys: list[str], field: str) -> None:
    with pytest.raises(ApiError) as refused:
        wire.decode(create(keys), wire.NotebookCreate)
    assert refused.value.code == "invalid_request"
    assert f"`{field}`" in refused.value.message


def test_keys_are_optional_and_roundtrip() -> None:
    assert wire.decode(create([]), wire.NotebookCreate).ssh_public_keys == []
    keys = [ed25519_line(str(i), f"k{i}") for i in range(MAX_KEYS)]
    assert wire.decode(create(keys), wire.NotebookCreate).ssh_public_keys == keys
    update = wire.decode(json.dumps({"keys": keys[:2]}).encode(), wire.SshKeysUpdate)
    assert update.keys == keys[:2]
    with pytest.raises(ApiError) as refused:
        wire.decode(b'{"keys": ["nope"]}', wire.SshKeysUpdate)
    assert "`$.keys[0]`" in refused.value.message


def test_older_peers_decode_without_the_ssh_fields() -> None:
    nb = msgspec.json.decode(
        json.dumps(
            {
                "id": "n",
                "project": "p",
                "name": "n",
                "framework": "f",
                "editor": "e",
                "image": "i",
                "state": "RUNNING",
                "state_reason": "",
                "state_at": 1.0,
                "gpu": 0,
                "cpu": 1,
                "memory_mb": 1,
                "labels": {},
                "envvars": {},
                "created_at": 1.0,
                "generation": 1,
            }
        ),
        type=wire.Notebook,
    )
    assert (nb.ssh_keys, nb.ssh) == ([], None)
    register = {"cpus": 1, "memory_mb": 1, "gpus": [], "agent_url": "http://a", "version": "0"}
    assert wire.decode(json.dumps(register).encode(), wire.AgentRegister).ssh_address == ""


@pytest.mark.parametrize("address", ["gpu-01.example.com:2222", "10.0.0.7:22", "[fd00::7]:2222"])
def test_register_takes_an_ssh_address(address: str) -> None:
    body = {"cpus": 1, "memory_mb": 1, "gpus": [], "agent_url": "u", "version": "0"}
    got = wire.decode(json.dumps({**body, "ssh_address": address}).encode(), wire.AgentRegister)
    assert got.ssh_address == address


@pytest.mark.parametrize("address", ["gpu-01", "gpu-01:0", "gpu-01:70000", "-x:22", "a b:22"])
def test_register_refuses_a_bad_ssh_address_naming_it(address: str) -> None:
    body = {"cpus": 1, "memory_mb": 1, "gpus": [], "agent_url": "u", "version": "0"}
    with pytest.raises(ApiError) as refused:
        wire.decode(json.dumps({**body, "ssh_address": address}).encode(), wire.AgentRegister)
    assert "`$.ssh_address`" in refused.value.message


# ---------------------------------------------------------------- the address


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [("gpu-01:2222", "gpu-01", 2222), ("[fd00::7]:22", "fd00::7", 22)],
)
def test_ssh_url_roundtrip(address: str, host: str, port: int) -> None:
    url = ssh_url("6f1c-42", address)
    assert url == f"ssh://6f1c-42@{address}"
    parsed = parse_ssh_url(url)
    assert (parsed.user, parsed.host, parsed.port) == ("6f1c-42", host, port)


@pytest.mark.parametrize("url", ["http://a@b:1", "ssh://b:1", "ssh://a@b", "nonsense"])
def test_parse_ssh_url_refuses_other_things(url: str) -> None:
    with pytest.raises(ValueError):
        parse_ssh_url(url)
