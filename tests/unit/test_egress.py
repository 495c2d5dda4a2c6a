"""egress: proxy selection from HTTPS_PROXY / HTTP_PROXY / NO_PROXY.

The contract is Go's ``net/http.ProxyFromEnvironment`` (the rules of the
kubelet and containerd): each case is asked of a small Go program built from the
machine's Go toolchain, and the webhook must agree with it, except for the
differences the module documents, which are tested as such.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from io import StringIO
from pathlib import Path

import pytest
from yarl import URL

from tests.support import unavailable
from webhook.__main__ import EXIT_USAGE, main
from webhook.config import ConfigError
from webhook.egress import Egress, NoProxy

ORACLE = """
package main

import (
	"bufio"
	"fmt"
	"net/http"
	"net/url"
	"os"
)

func main() {
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		u, err := url.Parse(lines.Text())
		if err != nil {
			fmt.Println("error")
			continue
		}
		proxy, err := http.ProxyFromEnvironment(&http.Request{URL: u})
		if err != nil || proxy == nil {
			fmt.Println("direct")
		} else {
			fmt.Println(proxy.String())
		}
	}
}
"""

PROXY = "http://proxy.corp.example:3128"

NO_PROXY_LISTS = [
    ".svc,cluster.local,10.0.0.0/8,fd00::/8,[fd01::1]:443,registry.corp:5000,*.example.com,"
    "1.2.3.4,1.2.3.5:8443",
    "*",
    "quay.io,*",
    " example.com , .other.org ,EXAMPLE.net,,",
    "",
    "host:,:80,foo.com:abc,bar.com:",
]
URLS = [
    "https://a.svc/v2/",
    "https://a.b.svc/v2/",
    "https://svc/v2/",
    "https://cluster.local/v2/",
    "https://x.cluster.local:5000/v2/",
    "https://10.1.2.3/v2/",
    "https://11.0.0.1/v2/",
    "https://[fd00::5]/v2/",
    "https://[fd01::1]/v2/",
    "https://[fd01::1]:444/v2/",
    "https://registry.corp:5000/v2/",
    "https://registry.corp/v2/",
    "http://registry.corp:5000/v2/",
    "https://a.example.com/v2/",
    "https://example.com/v2/",
    "https://1.2.3.4:9/v2/",
    "https://1.2.3.5:8443/v2/",
    "https://1.2.3.5/v2/",
    "https://quay.io/v2/",
    "https://other.org/v2/",
    "https://x.other.org/v2/",
    "https://www.example.net/v2/",
    "https://host/v2/",
    "https://foo.com/v2/",
    "https://bar.com:8443/v2/",
    "http://plain.example.org/v2/",
]


@pytest.fixture(scope="module")
def go_oracle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        message = "the Go toolchain is not installed: apt-get install -y golang-go"
        unavailable(message)
    directory = tmp_path_factory.mktemp("go-oracle")
    (directory / "main.go").write_text(ORACLE)
    subprocess.run(
        [go, "build", "-o", "oracle", "main.go"],
        cwd=directory,
        check=True,
        env=os.environ | {"GOFLAGS": "-mod=mod", "GO111MODULE": "off"},
    )
    return directory / "oracle"


def go_answers(oracle: Path, environ: dict[str, str], urls: list[str]) -> list[str | None]:
    """What Go's ProxyFromEnvironment picks for each URL: the proxy URL, or None."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    done = subprocess.run(
        [str(oracle)],
        input="\n".join(urls) + "\n",
        capture_output=True,
        text=True,
        check=True,
        env=env | environ,
    )
    return [None if line == "direct" else line for line in done.stdout.splitlines()]


def ours(egress: Egress, url: str) -> str | None:
    proxy = egress.proxy_for(URL(url))
    return None if proxy is None else str(proxy.url)


@pytest.mark.parametrize("no_proxy", NO_PROXY_LISTS)
def test_no_proxy_agrees_with_go(go_oracle: Path, no_proxy: str) -> None:
    environ = {"HTTPS_PROXY": PROXY, "HTTP_PROXY": PROXY, "NO_PROXY": no_proxy}
    expected = go_answers(go_oracle, environ, URLS)
    egress = Egress.from_environ(environ)
    assert [ours(egress, url) for url in URLS] == expected
    assert any(answer is None for answer in expected) or no_proxy == ""


def test_scheme_picks_the_variable_without_fallback(go_oracle: Path) -> None:
    urls = ["https://quay.io/v2/", "http://plain.example.org/v2/"]
    for environ in (
        {"HTTPS_PROXY": PROXY},
        {"HTTP_PROXY": PROXY},
        {"https_proxy": "proxy.corp.example:3128"},  # no scheme: http://
        {"HTTPS_PROXY": "https://secure-proxy.example:8443"},
    ):
        egress = Egress.from_environ(environ)
        assert [ours(egress, url) for url in urls] == go_answers(go_oracle, environ, urls), environ


def test_documented_differences_from_go(go_oracle: Path) -> None:
    urls = ["https://localhost:5000/v2/", "https://127.0.0.5/v2/", "https://[::1]/v2/"]
    environ = {"HTTPS_PROXY": PROXY}
    # Go never proxies loopback; here the guard decides about loopback, NO_PROXY the route
    assert go_answers(go_oracle, environ, urls) == [None, None, None]
    assert [ours(Egress.from_environ(environ), url) for url in urls] == [PROXY] * 3
    # both spellings set: Go takes the upper-case one, curl and Python (and this) the lower
    both = {"HTTPS_PROXY": PROXY, "https_proxy": "http://lower.example:8080"}
    assert go_answers(go_oracle, both, ["https://quay.io/"]) == [PROXY]
    assert ours(Egress.from_environ(both), "https://quay.io/") == "http://lower.example:8080"
    # a trailing dot and a bracketed IPv6 entry without a port match here, not in Go
    dotted = {"HTTPS_PROXY": PROXY, "NO_PROXY": "example.com.,[fd01::1]"}
    lenient = ["https://www.example.com/v2/", "https://[fd01::1]/v2/"]
    assert go_answers(go_oracle, dotted, lenient) == [PROXY, PROXY]
    assert [ours(Egress.from_environ(dotted), url) for url in lenient] == [None, None]


def test_empty_values_count_as_unset() -> None:
    egress = Egress.from_environ({"https_proxy": " ", "HTTPS_PROXY": PROXY, "NO_PROXY": ""})
    assert ours(egress, "https://quay.io/") == PROXY
    assert Egress.from_environ({}).proxies == ()


def test_credentials_become_a_header_and_stay_out_of_reprs() -> None:
    egress = Egress.from_environ({"HTTPS_PROXY": "http://svc%40corp:p%3Ass@proxy.corp:3128"})
    proxy = egress.https_proxy
    assert proxy is not None
    assert str(proxy.url) == "http://proxy.corp:3128"
    assert proxy.endpoint == ("proxy.corp", 3128)
    assert proxy.headers == {
        "Proxy-Authorization": "Basic " + base64.b64encode(b"svc@corp:p:ss").decode()
    }
    shown = repr(egress) + egress.describe()
    assert "p:ss" not in shown and "cDpzc" not in shown and "svc" not in shown


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("socks5://proxy.corp:1080", "HTTPS_PROXY: proxy scheme 'socks5' is not supported"),
        ("http://user:secret@proxy.corp:99999", "HTTPS_PROXY: not a proxy URL"),
        ("http://", "HTTPS_PROXY: the proxy URL has no host"),
    ],
)
def test_a_bad_proxy_is_a_config_error_without_the_secret(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Egress.from_environ({"HTTPS_PROXY": value})
    assert str(caught.value).startswith(message)
    assert "secret" not in str(caught.value)


def test_from_environ_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("https_proxy", "http_proxy", "no_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", PROXY)
    monkeypatch.setenv("NO_PROXY", ".svc")
    egress = Egress.from_environ()
    assert ours(egress, "https://quay.io/") == PROXY
    assert ours(egress, "https://registry.team.svc/") is None
    assert egress.http_proxy is None


def test_no_proxy_matches_ignore_case() -> None:
    assert NoProxy.parse("Registry.Corp").matches("REGISTRY.corp", 443)
    assert not NoProxy().matches("quay.io", 443)


def test_the_cli_refuses_a_bad_proxy_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("appSlug: my-app\nlicenseID: test-license\n")
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "socks5://user:secret@proxy.corp:1080")
    out, err = StringIO(), StringIO()
    assert main(["probe", "--config", str(config), "quay.io/x/y:1"], out, err) == EXIT_USAGE
    assert err.getvalue() == (
        "error: HTTPS_PROXY: proxy scheme 'socks5' is not supported (use http:// or https://)\n"
    )
    assert out.getvalue() == ""
