import msgspec
import pytest

from common import wire
from common.errors import STATUS, ApiError
from common.states import NotebookState


def roundtrip(obj):
    return wire.decode(wire.encode(obj), type(obj))


def test_notebook_create_roundtrip_and_defaults():
    req = wire.decode(b'{"framework":"conda","editor":"jupyterlab"}', wire.NotebookCreate)
    assert req.gpu is None and req.cpu is None and req.labels == {} and req.envvars == {}
    full = wire.NotebookCreate(
        "conda",
        "jupyterlab",
        gpu=2,
        cpu=8,
        name="my-nb",
        labels={"team": "vision"},
        envvars={"SEED": "1"},
    )
    assert roundtrip(full) == full


def test_agent_protocol_roundtrips():
    reg = wire.AgentRegister(
        cpus=8,
        memory_mb=1024,
        agent_url="http://127.0.0.1:8471",
        version="0.1.0",
        gpus=[wire.GpuInfo("GPU-1", 0, "NVIDIA H100", 81920, 10, 5)],
    )
    assert roundtrip(reg) == reg
    a = wire.Assignment(
        notebook="n1",
        project="p",
        generation=2,
        desired="running",
        state=NotebookState.STARTING,
        image="img",
        command=["x"],
        editor_port=8888,
        url_path="/lab",
        gpus=["GPU-1"],
        cpu=4,
        memory_mb=100,
        env={"A": "b"},
        initialized=True,
        access_token="t",
    )
    batch = wire.Assignments(version=3, items=[a])
    assert roundtrip(batch) == batch
    tr = wire.TransitionBatch([wire.Transition("n1", 2, NotebookState.RUNNING, "up", 1.5)])
    assert roundtrip(tr) == tr
    usage = wire.UsageBatch([wire.UsageItem("n1", 2, 3, 1.0)])
    assert roundtrip(usage) == usage


def bad(body: bytes, type_=wire.NotebookCreate) -> ApiError:
    with pytest.raises(ApiError) as info:
        wire.decode(body, type_)
    assert info.value.code == "invalid_request" and info.value.status == 400
    return info.value


@pytest.mark.parametrize(
    "body,field",
    [
        (b'{"framework":"c","editor":"j","gpu":-1}', "$.gpu"),
        (b'{"framework":"c","editor":"j","gpu":1000}', "$.gpu"),
        (b'{"framework":"c","editor":"j","cpu":-2}', "$.cpu"),
        (b'{"framework":"c","editor":"j","cpu":100000}', "$.cpu"),
        (b'{"framework":"c","editor":"j","gpu":"two"}', "$.gpu"),
        (b'{"framework":"c","editor":"j","labels":{"k":"v v"}}', "$.labels"),
        (b'{"framework":"c","editor":"j","labels":{"-k":"v"}}', "$.labels"),
        (b'{"framework":"c","editor":"j","envvars":{"1X":"v"}}', "$.envvars"),
        (b'{"framework":"c","editor":"j","name":"Bad Name"}', "$.name"),
        (b'{"editor":"j"}', "framework"),
        (b'{"framework":"","editor":"j"}', "$.framework"),
        (b'{"framework":"c","editor":"j","surprise":1}', "surprise"),
    ],
)
def test_bad_input_names_the_field(body, field):
    assert field in bad(body).message


def test_not_json_and_empty_body():
    assert "not valid JSON" in bad(b"{nope").message
    assert "empty" in bad(b"").message
    assert "JSON object" in bad(b"").message


def test_error_codes_map_to_statuses_once():
    assert STATUS["invalid_request"] == 400 and STATUS["not_found"] == 404
    assert STATUS["conflict"] == 409 and STATUS["unauthenticated"] == 401
    with pytest.raises(ValueError):
        ApiError("no-such-code", "x")


def test_one_decoder_per_type():
    assert wire.decoder(wire.Heartbeat) is wire.decoder(wire.Heartbeat)
    assert isinstance(wire.decoder(wire.Heartbeat), msgspec.json.Decoder)


def volume(**overrides) -> bytes:
    body = {"container": "datasets", "alias": "lab-s3", "mount_path": "/workspace/data"}
    body.update(overrides)
    return wire.encode(body)


@pytest.mark.parametrize("path", ["/workspace/data", "/data/imagenet", "/mnt/a.b/c-d_e", "/a/b..c"])
def test_volume_mount_paths_accepted(path):
    assert wire.decode(volume(mount_path=path), wire.Volume).mount_path == path


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"mount_path": "/workspace/../etc"}, "$.mount_path"),
        ({"mount_path": "/../etc"}, "$.mount_path"),
        ({"mount_path": "relative/path"}, "$.mount_path"),
        ({"mount_path": "/a//b"}, "$.mount_path"),
        ({"mount_path": "/"}, "$.mount_path"),
        ({"prefix": "../other-project"}, "$.prefix"),
        ({"prefix": "a/../../b"}, "$.prefix"),
        ({"prefix": "/abs"}, "$.prefix"),
        ({"container": "ab"}, "$.container"),
        ({"permission": "rwx"}, "$.permission"),
    ],
)
def test_volume_that_could_escape_is_refused(overrides, field):
    assert field in bad(volume(**overrides), wire.Volume).message


def test_snapshot_and_progress_reports_roundtrip():
    snap = wire.SnapshotInfo("20261121T201500Z-ab12", 1.0, "checkpoint", 10, 1000, 400)
    report = wire.SnapshotReport("nb", 2, snap, retained=[snap.id])
    assert roundtrip(report) == report
    progress = wire.ProgressReport("nb", 2, wire.Progress("restore", 4, 10, 400, 1000, 1.0))
    assert roundtrip(progress) == progress


def test_a_heartbeat_of_an_older_agent_decodes_without_disk_figures():
    old = wire.decode(b'{"gpus":[],"containers":["nb1"]}', wire.Heartbeat)
    assert old.disk is None and old.workspaces == []
    new = wire.Heartbeat(
        disk=wire.DiskSpace(free_bytes=10, total_bytes=100),
        workspaces=[wire.WorkspaceUse(notebook="nb1", used_bytes=4096, measured_at=1.0)],
    )
    assert roundtrip(new) == new


@pytest.mark.parametrize(
    "body, field",
    [
        (b'{"disk":{"free_bytes":-1,"total_bytes":1}}', "$.disk.free_bytes"),
        (b'{"workspaces":[{"notebook":"n","used_bytes":-5,"measured_at":1}]}', "used_bytes"),
    ],
)
def test_negative_disk_figures_are_refused(body, field):
    with pytest.raises(ApiError) as err:
        wire.decode(body, wire.Heartbeat)
    assert field in err.value.message


@pytest.mark.parametrize(
    "field, value",
    [
        ("name", "train\n"),
        ("labels", {"team\n": "cv"}),
        ("labels", {"team": "cv\n"}),
        ("envvars", {"SEED\n": "1"}),
    ],
)
def test_a_trailing_newline_is_not_a_valid_name(field: str, value: object) -> None:
    body = {"framework": "conda", "editor": "jupyterlab", field: value}
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(body), type=wire.NotebookCreate)


def test_an_error_body_becomes_the_error_the_server_raised() -> None:
    body = wire.encode(wire.ErrorBody("conflict", "notebook n is RUNNING", {"state": "RUNNING"}))
    error = wire.error_from_body(409, body)
    assert error is not None
    assert (error.code, error.message, error.detail) == (
        "conflict",
        "notebook n is RUNNING",
        {"state": "RUNNING"},
    )
    # A code from a newer peer: the status decides, the message is kept.
    newer = wire.error_from_body(404, b'{"code": "gone_fishing", "message": "later"}')
    assert newer is not None and (newer.code, newer.message) == ("not_found", "later")
    # Not an error body at all: the caller describes the failure itself.
    assert wire.error_from_body(502, b"<html>Bad Gateway</html>") is None
    assert wire.error_from_body(500, b"") is None
