import pytest

from common.config import AgentConfig, ConfigError, SchedulerConfig, load, split_hostport

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
