from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from podling import config
from podling.errors import ConfigError


def test_no_file_gives_defaults(tmp_path: Path) -> None:
    cfg = config.load(tmp_path / "config.toml")
    assert cfg == config.Config()
    assert cfg.socket == "/run/podling/podling.sock"
    assert cfg.images.max_concurrent_downloads == 3


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "nope.toml", explicit=True)


def test_default_rendering_round_trips() -> None:
    text = config.render_default()
    assert "# the CRI gRPC Unix socket" in text
    doc = tomllib.loads(text)
    assert doc["images"]["snapshotter"] == "overlayfs"
    assert doc["network"]["cni_bin_dirs"] == ["/usr/lib/cni", "/opt/cni/bin"]


def test_values_and_registries(tmp_path: Path) -> None:
    f = tmp_path / "config.toml"
    f.write_text(
        'root = "/x"\n[images]\nmax_concurrent_downloads = 5\npull_stall_timeout = 2\n'
        '[images.registries."docker.io"]\nmirrors = ["http://127.0.0.1:5000"]\n'
        "skip_upstream = true\n"
    )
    cfg = config.load(f)
    assert cfg.root == "/x"
    assert cfg.images.max_concurrent_downloads == 5
    assert cfg.images.pull_stall_timeout == 2.0
    reg = cfg.images.registries["docker.io"]
    assert reg.mirrors == ["http://127.0.0.1:5000"] and reg.skip_upstream and not reg.insecure


def test_dropins_merge_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[log]\nlevel = "debug"\nformat = "json"\n')
    d = tmp_path / "config.d"
    d.mkdir()
    (d / "20-b.toml").write_text('[log]\nlevel = "error"\n')
    (d / "10-a.toml").write_text('[log]\nlevel = "warning"\n')
    cfg = config.load(tmp_path / "config.toml")
    assert cfg.log.level == "error"  # 20-b wins over 10-a and the main file
    assert cfg.log.format == "json"  # untouched keys of the same table survive


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus = 1\n", "unknown key 'bogus'"),
        ("[images]\nsnapshoter = 'x'\n", "unknown key 'images.snapshoter'"),
        (
            "[images]\nmax_concurrent_downloads = 'three'\n",
            "'images.max_concurrent_downloads' must be an integer",
        ),
        ("[images]\nmax_concurrent_downloads = 0\n", "must be between 1 and 64"),
        ("[log]\nlevel = 'loud'\n", "'log.level' must be one of debug, info, warning, error"),
        ("[images.registries.'q.io']\nmirrors = ['ftp://x']\n", "http:// or https://"),
        ("[images.registries.'q.io']\ninsecure = 'yes'\n", "must be true or false"),
        ("log = 3\n", "'log' must be a table"),
        ("[images]\npinned = ['Bad Ref']\n", "'images.pinned' has an invalid image reference"),
        ("root = [\n", "not valid TOML"),
    ],
)
def test_bad_config_names_file_key_and_expectation(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "config.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(f)
    assert str(f) in str(e.value)
    assert message in str(e.value)


def test_error_names_the_dropin_that_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("")
    d = tmp_path / "config.d"
    d.mkdir()
    (d / "50-bad.toml").write_text("[runtime]\ncgroup_driver = 'systemd'\n")
    with pytest.raises(ConfigError, match=r"50-bad\.toml: 'runtime\.cgroup_driver' must be one of"):
        config.load(tmp_path / "config.toml")


def test_the_readme_config_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "config.toml").write_text(block)
    cfg = config.load(tmp_path / "config.toml", explicit=True)
    assert cfg.images.registries["docker.io"].mirrors == ["http://127.0.0.1:5000"]
    assert cfg.runtimes["runsc"].args == [
        "--platform=ptrace",
        "--network=host",
        "--oci-seccomp",
        "--net-raw",
    ]
