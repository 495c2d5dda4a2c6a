"""Start-up failures through the real command line: a clear message, exit 2, no
traceback, and nothing of a running server touched."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import yaml

from tests.reliability.harness import ServerProcess, config_data, http_status, run_cli
from tests.support import certificates


def test_a_config_file_that_is_not_utf8_exits_2_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(b"appSlug: caf\xe9\nlicenseID: x\n")
    code, output = run_cli(["serve", "--config", str(config)])
    assert code == 2, output
    assert output.strip() == f"error: {config}: not UTF-8 text (an undecodable byte at offset 12)"


@pytest.mark.parametrize("taken", ["port", "healthPort"])
def test_a_port_in_use_exits_2_with_a_clear_message(tmp_path: Path, taken: str) -> None:
    data = config_data(certificates(tmp_path / "tls"))
    with socket.create_server(("127.0.0.1", 0)) as holder:
        data["server"][taken] = holder.getsockname()[1]
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(data))
        code, output = run_cli(["serve", "--config", str(config)])
    assert code == 2, output
    port = data["server"][taken]
    assert output.strip().endswith(
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ), output
    assert "Traceback" not in output


def development_config(path: Path, port: int, health_port: int) -> Path:
    """A config without certFile: the server makes its own development certificate."""
    data = config_data(certificates(path.parent / "unused"))
    data["server"] = {"host": "127.0.0.1", "port": port, "healthPort": health_port}
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_second_server_never_rewrites_the_first_ones_development_ca(tmp_path: Path) -> None:
    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir()
    env = {"TMPDIR": str(shared_tmp)}
    first_data = config_data(certificates(tmp_path / "unused"))["server"]
    first_config = development_config(
        tmp_path / "first.yaml", first_data["port"], first_data["healthPort"]
    )
    first = ServerProcess(first_config, tmp_path / "first.log", env=env).start()
    try:
        tls_dir = shared_tmp / "image-proxy-webhook-tls"
        files = {name: (tls_dir / name).read_bytes() for name in ("ca.crt", "tls.crt", "tls.key")}

        # the same ports: it fails at start
        code, output = run_cli(["serve", "--config", str(first_config)], env=env)
        assert code == 2 and "cannot listen on" in output, output

        # other ports: it starts, with a development CA of its own
        other = config_data(certificates(tmp_path / "unused2"))["server"]
        second_config = development_config(
            tmp_path / "second.yaml", other["port"], other["healthPort"]
        )
        second = ServerProcess(second_config, tmp_path / "second.log", env=env).start()
        second.signal()
        assert second.wait(20) == 0
        assert f"its CA is {shared_tmp}/image-proxy-webhook-tls-" in second.log_text()

        assert {name: (tls_dir / name).read_bytes() for name in files} == files
        # and the first still serves the certificate its CA signed
        context = ssl.create_default_context(cafile=str(tls_dir / "ca.crt"))
        with (
            socket.create_connection(("127.0.0.1", first.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as secured,
        ):
            assert secured.version() in ("TLSv1.2", "TLSv1.3")
        assert http_status("127.0.0.1", first.health_port, "/readyz") == 200
    finally:
        first.kill()
