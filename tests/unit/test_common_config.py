import pytest

from common.config import (
    AgentConfig,
    ConfigError,
    SchedulerConfig,
    image_ref,
    image_tag,
    load,
    split_hostport,
    version_key,
)

CATALOG = """
listen = "127.0.0.1:9000"
[catalog.frameworks.tiny]
image = "nbfleet/tiny:latest"
editors = ["httpd"]
[catalog.editors.httpd]
port = 8080
command = ["busybox", "httpd", "-f", "-p", "{port}"]
"""


def test_file_then_environment(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(CATALOG)
    env = {"NBFLEET_SCHEDULER_LISTEN": "0.0.0.0:9100", "NBFLEET_SCHEDULER_CPUS_PER_GPU": "8"}
    config = load(SchedulerConfig, path, env_prefix="NBFLEET_SCHEDULER_", environ=env)
    assert config.listen == "0.0.0.0:9100"
    assert config.cpus_per_gpu == 8
    assert config.catalog.frameworks["tiny"].editors == ["httpd"]
    assert config.catalog.editors["httpd"].port == 8080


def test_bool_from_environment():
    config = load(
        AgentConfig,
        None,
        env_prefix="NBFLEET_AGENT_",
        environ={"NBFLEET_AGENT_NVIDIA_RUNTIME": "true"},
    )
    assert config.nvidia_runtime is True


def test_bad_value_names_setting(tmp_path):
    with pytest.raises(ConfigError, match="cpus_per_gpu"):
        load(
            SchedulerConfig,
            None,
            env_prefix="NBFLEET_SCHEDULER_",
            environ={"NBFLEET_SCHEDULER_CPUS_PER_GPU": "lots"},
        )
    path = tmp_path / "a.toml"
    path.write_text("no_such_setting = 1\n")
    with pytest.raises(ConfigError, match="no_such_setting"):
        load(AgentConfig, path, env_prefix="X_", environ={})


def test_missing_and_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(AgentConfig, tmp_path / "nope.toml", env_prefix="X_", environ={})
    path = tmp_path / "bad.toml"
    path.write_text("listen = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(AgentConfig, path, env_prefix="X_", environ={})


def test_catalog_editor_must_exist_and_user_not_root(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(CATALOG.replace('editors = ["httpd"]', 'editors = ["vscode"]'))
    with pytest.raises(ConfigError, match="vscode"):
        load(SchedulerConfig, path, env_prefix="X_", environ={})
    path.write_text(CATALOG.replace('editors = ["httpd"]', 'editors = ["httpd"]\nuser = "0:0"'))
    with pytest.raises(ConfigError, match="root"):
        load(SchedulerConfig, path, env_prefix="X_", environ={})


def test_split_hostport():
    assert split_hostport("127.0.0.1:8470") == ("127.0.0.1", 8470)
    with pytest.raises(ConfigError):
        split_hostport("8470")


VERSIONED = """
[catalog.frameworks.hf]
editors = ["httpd"]
[catalog.frameworks.hf.versions."4.57"]
image = "nbfleet/huggingface:4.57"
[catalog.frameworks.hf.versions."5.18"]
image = "nbfleet/huggingface:5.18"
[catalog.frameworks.hf.versions."5.9"]
image = "nbfleet/huggingface:5.9"
[catalog.editors.httpd]
port = 8080
command = ["busybox", "httpd"]
"""


def test_framework_versions_are_ordered_newest_first_numbers_as_numbers(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(VERSIONED)
    hf = load(SchedulerConfig, path, env_prefix="X_", environ={}).catalog.frameworks["hf"]
    assert list(hf.all_versions()) == ["5.18", "5.9", "4.57"]
    assert hf.newest() == "5.18"
    assert version_key("py3.11") > version_key("py3.9")
    assert version_key("2.13.1") > version_key("2.13") > version_key("2.9")


def test_a_framework_with_one_image_has_one_version_named_by_its_tag(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(CATALOG)
    tiny = load(SchedulerConfig, path, env_prefix="X_", environ={}).catalog.frameworks["tiny"]
    assert {v: s.image for v, s in tiny.all_versions().items()} == {"latest": "nbfleet/tiny:latest"}
    assert (image_tag("registry:5000/a/b"), image_tag("a/b:1.2"), image_tag("b@sha256:ab")) == (
        "latest",
        "1.2",
        "latest",
    )
    assert (image_ref("registry:5000/a/b"), image_ref("a/b:1.2")) == (
        "registry:5000/a/b:latest",
        "a/b:1.2",
    )


def test_a_framework_needs_versions_or_an_image_and_good_version_names(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(VERSIONED.replace('editors = ["httpd"]', 'editors = ["httpd"]\nimage = "x"'))
    with pytest.raises(ConfigError, match="not both"):
        load(SchedulerConfig, path, env_prefix="X_", environ={})
    path.write_text(VERSIONED.replace('versions."5.9"', 'versions."5 9"'))
    with pytest.raises(ConfigError, match="'5 9'"):
        load(SchedulerConfig, path, env_prefix="X_", environ={})
    none = "[catalog.frameworks.hf]\neditors = []\n"
    path.write_text(none)
    with pytest.raises(ConfigError, match="has no versions"):
        load(SchedulerConfig, path, env_prefix="X_", environ={})
