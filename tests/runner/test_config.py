"""Config files (runner/config.py) for ``indexd`` and ``peerd``: where they are looked for, how
their settings become defaults, and that a flag on the command line beats the file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from indexd.__main__ import build_parser as indexd_parser
from peerd.__main__ import NOT_IN_CONFIG
from peerd.__main__ import build_parser as peerd_parser
from runner import UsageError
from runner.config import (
    apply_config,
    default_config_path,
    find_config,
    parse_with_config,
    read_config,
    setting_name,
)

PEERD_TOML = """\
# a peer that starts with `peerd` alone
hostname = "peer1"
index-server-name = "192.168.1.10:7000"
peer_server_port = 7101
username = "alice"
file-directory = "files"
certificate = "pki/peer1.crt"
private-key = "pki/peer1.key"
ca = "/etc/p2pshare/ca.crt"
no-watch = true
rescan-interval = 60
verbose = 1
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def peerd_args(argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
    return parse_with_config(
        peerd_parser(), argv, "peerd", environ=environ, forbidden=NOT_IN_CONFIG
    )


def test_the_default_file_is_under_xdg_config_home(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "HOME": "/home/u"}
    assert default_config_path("peerd", env) == tmp_path / "cfg" / "p2pshare" / "peerd.toml"


def test_without_xdg_config_home_it_is_under_dot_config() -> None:
    assert default_config_path("indexd", {"HOME": "/home/u"}) == Path(
        "/home/u/.config/p2pshare/indexd.toml"
    )


def test_a_relative_xdg_config_home_is_ignored_as_the_spec_says() -> None:
    env = {"XDG_CONFIG_HOME": "relative/cfg", "HOME": "/home/u"}
    assert default_config_path("peerd", env) == Path("/home/u/.config/p2pshare/peerd.toml")


def test_peerd_alone_starts_from_the_default_file(tmp_path: Path) -> None:
    write(tmp_path / "p2pshare" / "peerd.toml", PEERD_TOML)
    args = peerd_args([], {"XDG_CONFIG_HOME": str(tmp_path)})
    assert args.hostname == "peer1" and args.username == "alice"
    assert args.index_server_name == "192.168.1.10:7000"
    assert args.peer_server_port == 7101
    assert args.no_watch is True and args.rescan_interval == 60.0 and args.verbose == 1
    assert args.config == tmp_path / "p2pshare" / "peerd.toml"


def test_relative_paths_are_taken_from_the_files_folder(tmp_path: Path) -> None:
    write(tmp_path / "p2pshare" / "peerd.toml", PEERD_TOML)
    args = peerd_args([], {"XDG_CONFIG_HOME": str(tmp_path)})
    assert args.file_directory == tmp_path / "p2pshare" / "files"
    assert args.certificate == tmp_path / "p2pshare" / "pki" / "peer1.crt"
    assert args.ca == Path("/etc/p2pshare/ca.crt")


def test_a_flag_on_the_command_line_beats_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "peer.toml", PEERD_TOML)
    args = peerd_args(
        ["--config", str(config), "-peer_server_port", "7200", "--username", "bob", "-vv"],
        {"HOME": str(tmp_path)},
    )
    assert (args.peer_server_port, args.username, args.verbose) == (7200, "bob", 2)
    assert args.hostname == "peer1"  # not given: the file's


def test_a_flag_beats_the_file_for_indexd_too(tmp_path: Path) -> None:
    config = write(
        tmp_path / "indexd.toml",
        'port = 7300\nhost = "0.0.0.0"\ncert = "i.crt"\nkey = "i.key"\nca = "ca.crt"\n'
        "bcrypt-cost = 10\n",
    )
    args = parse_with_config(
        indexd_parser(), ["--config", str(config), "--port", "7400"], "indexd", environ={}
    )
    assert (args.port, args.host, args.bcrypt_cost) == (7400, "0.0.0.0", 10)
    assert args.cert == tmp_path / "i.crt"


def test_without_a_file_the_required_flags_are_still_required(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        peerd_args([], {"XDG_CONFIG_HOME": str(tmp_path)})
    assert exc.value.code == 2


def test_a_missing_file_named_by_config_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        peerd_args(["--config", str(tmp_path / "nope.toml")], {})


def test_invalid_toml_is_a_usage_error_naming_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "bad.toml", "port = = 3\n")
    with pytest.raises(UsageError, match=r"bad\.toml: not valid TOML"):
        peerd_args(["--config", str(config)], {})


def test_an_unknown_setting_is_a_usage_error(tmp_path: Path) -> None:
    config = write(tmp_path / "p.toml", 'hostnme = "peer1"\n')
    with pytest.raises(UsageError, match="unknown setting 'hostnme'"):
        peerd_args(["--config", str(config)], {})


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('peer-server-port = "http"', "not a TCP port"),
        ("peer-server-port = 70000", "not a TCP port"),
        ('no-watch = "yes"', "expected true or false"),
        ("rescan-interval = -5", "must be positive"),
        ("hostname = [1, 2]", "expected a string or a number"),
    ],
)
def test_a_value_the_flag_would_refuse_is_a_usage_error(
    tmp_path: Path, line: str, reason: str
) -> None:
    config = write(tmp_path / "p.toml", line + "\n")
    with pytest.raises(UsageError, match=reason):
        peerd_args(["--config", str(config)], {})


def test_the_password_is_not_allowed_in_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "p.toml", 'password = "hunter22"\n')
    with pytest.raises(UsageError, match="P2P_PASSWORD"):
        peerd_args(["--config", str(config)], {})


def test_a_setting_spelled_twice_is_a_usage_error(tmp_path: Path) -> None:
    config = write(tmp_path / "p.toml", 'file-directory = "a"\nfile_directory = "b"\n')
    with pytest.raises(UsageError, match="set twice"):
        read_config(config)


def test_no_default_file_means_no_config(tmp_path: Path) -> None:
    assert find_config([], "peerd", {"XDG_CONFIG_HOME": str(tmp_path)}) is None


def test_setting_names_fold_underscores_and_case() -> None:
    assert setting_name("Index_Server_Name") == "index-server-name"


def test_applying_a_config_keeps_help_and_config_out_of_settings(tmp_path: Path) -> None:
    parser = indexd_parser()
    config = write(tmp_path / "i.toml", 'config = "other.toml"\n')
    with pytest.raises(UsageError, match="unknown setting 'config'"):
        apply_config(parser, read_config(config))
