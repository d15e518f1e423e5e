"""agent.ota.fetch against a real HTTPS server on loopback, with a CA the tests generate."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.ota.faults import CRASH_ENV
from agent.ota.fetch import Fetcher, FetchError, Tls, file_url
from tests.ota.https_server import Pki, ReleaseServer, make_pki

ROOT = Path(__file__).resolve().parents[2]
MODEL = "model.onnx"
SIZE = 300 * 1024  # several TLS records, so a download arrives in several chunks


@pytest.fixture
def fetcher(pki: Pki) -> Iterator[Fetcher]:
    with Fetcher(Tls(ca_file=pki.ca_cert), timeout_s=20.0) as f:
        yield f


@pytest.fixture
def model(release_root: Path) -> tuple[bytes, str]:
    data = os.urandom(SIZE)
    (release_root / MODEL).write_bytes(data)
    return data, hashlib.sha256(data).hexdigest()


def part_of(dest: Path) -> Path:
    return dest.parent / (dest.name + ".part")


def test_download_writes_the_verified_file(
    fetcher: Fetcher, release_server: ReleaseServer, model: tuple[bytes, str], tmp_path: Path
) -> None:
    data, digest = model
    dest = tmp_path / "dl" / MODEL
    assert fetcher.download(release_server.url(MODEL), dest, SIZE, digest) == SIZE
    assert dest.read_bytes() == data
    assert not part_of(dest).exists()
    (request,) = release_server.requests
    assert (request.path, request.status, request.range_header, request.bytes_sent) == (MODEL, 200, None, SIZE)


def test_progress_reports_increasing_counts(
    fetcher: Fetcher, release_server: ReleaseServer, model: tuple[bytes, str], tmp_path: Path
) -> None:
    calls: list[tuple[int, int]] = []
    fetcher.download(release_server.url(MODEL), tmp_path / MODEL, SIZE, model[1], progress=lambda *a: calls.append(a))
    assert len(calls) >= 2
    held = [done for done, _ in calls]
    assert held == sorted(set(held)), "strictly increasing"
    assert {total for _, total in calls} == {SIZE}
    assert held[-1] == SIZE


def test_manifest_conditional_get(fetcher: Fetcher, release_server: ReleaseServer, release_root: Path) -> None:
    body = b'{"payload": "e30=", "signatures": []}'
    (release_root / "manifest.json").write_bytes(body)
    url = release_server.url("manifest.json")
    got, etag = fetcher.manifest(url)
    assert got == body
    assert etag == f'"{hashlib.sha256(body).hexdigest()}"'
    assert fetcher.manifest(url, etag) == (None, etag)
    release_server.replace("manifest.json", b"{}")  # a new release: the same ETag no longer matches
    assert fetcher.manifest(url, etag)[0] == b"{}"
    log = release_server.requests
    assert [(r.status, r.if_none_match) for r in log] == [(200, None), (304, etag), (200, etag)]
    assert log[1].bytes_sent == 0


def test_manifest_over_the_cap_is_refused(fetcher: Fetcher, release_server: ReleaseServer, release_root: Path) -> None:
    (release_root / "manifest.json").write_bytes(b"x" * 2049)
    with pytest.raises(FetchError) as caught:
        fetcher.manifest(release_server.url("manifest.json"), max_bytes=2048)
    assert caught.value.kind == "size"
    assert "2048" in str(caught.value)
    (release_root / "manifest.json").write_bytes(b"x" * 2048)  # at the cap is fine
    assert fetcher.manifest(release_server.url("manifest.json"), max_bytes=2048)[0] == b"x" * 2048


def test_cut_connection_resumes_with_range(
    fetcher: Fetcher, release_server: ReleaseServer, model: tuple[bytes, str], tmp_path: Path
) -> None:
    data, digest = model
    dest, held = tmp_path / MODEL, 100_000
    release_server.cut_after(MODEL, held)
    with pytest.raises(FetchError) as caught:
        fetcher.download(release_server.url(MODEL), dest, SIZE, digest)
    assert caught.value.kind == "network"
    assert part_of(dest).read_bytes() == data[:held]
    assert not dest.exists()

    release_server.clear(MODEL)
    assert fetcher.download(release_server.url(MODEL), dest, SIZE, digest) == SIZE - held
    assert dest.read_bytes() == data
    first, second = release_server.requests
    assert (first.status, first.bytes_sent) == (200, held)
    assert second.range_header == f"bytes={held}-"
    assert (second.status, second.bytes_sent) == (206, SIZE - held)


def test_server_without_ranges_restarts_from_zero(
    fetcher: Fetcher, release_server: ReleaseServer, model: tuple[bytes, str], tmp_path: Path
) -> None:
    data, digest = model
    dest = tmp_path / MODEL
    part_of(dest).write_bytes(b"\0" * 1000)  # wrong bytes: appending the rest to them would fail the hash
    release_server.ignore_range(MODEL)
    assert fetcher.download(release_server.url(MODEL), dest, SIZE, digest) == SIZE
    assert dest.read_bytes() == data
    (request,) = release_server.requests
    assert (request.range_header, request.status) == ("bytes=1000-", 200)


def test_part_longer_than_the_server_file_starts_over(
    fetcher: Fetcher, release_server: ReleaseServer, release_root: Path, tmp_path: Path
) -> None:
    (release_root / MODEL).write_bytes(b"a" * 1000)
    dest = tmp_path / MODEL
    part_of(dest).write_bytes(b"b" * 1500)
    with pytest.raises(FetchError) as caught:
        fetcher.download(release_server.url(MODEL), dest, 2000, "0" * 64)
    assert caught.value.kind == "network"  # the server's file is shorter than the manifest says
    assert part_of(dest).read_bytes() == b"a" * 1000
    assert [r.status for r in release_server.requests] == [416, 200]


def test_server_down_then_back(
    fetcher: Fetcher, release_server: ReleaseServer, model: tuple[bytes, str], tmp_path: Path
) -> None:
    (release_server.root / "manifest.json").write_bytes(b"{}")
    fetcher.manifest(release_server.url("manifest.json"))  # leaves a kept-alive connection in the pool
    port = release_server.port
    release_server.stop()
    with pytest.raises(FetchError) as caught:
        fetcher.download(release_server.url(MODEL), tmp_path / MODEL, SIZE, model[1])
    assert caught.value.kind == "network"
    assert f"localhost:{port}" in str(caught.value)

    release_server.start()
    assert release_server.port == port
    assert fetcher.download(release_server.url(MODEL), tmp_path / MODEL, SIZE, model[1]) == SIZE
    assert (tmp_path / MODEL).read_bytes() == model[0]


def test_wrong_hash_leaves_nothing(
    fetcher: Fetcher, release_server: ReleaseServer, model: tuple[bytes, str], tmp_path: Path
) -> None:
    dest = tmp_path / MODEL
    wrong = hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(FetchError) as caught:
        fetcher.download(release_server.url(MODEL), dest, SIZE, wrong)
    assert caught.value.kind == "hash"
    assert model[1] in str(caught.value)
    assert not dest.exists()
    assert not part_of(dest).exists()


def test_truncated_body_keeps_the_part(
    fetcher: Fetcher, release_server: ReleaseServer, model: tuple[bytes, str], tmp_path: Path
) -> None:
    dest = tmp_path / MODEL
    release_server.cut_after(MODEL, 5000)
    with pytest.raises(FetchError) as caught:
        fetcher.download(release_server.url(MODEL), dest, SIZE, model[1])
    assert caught.value.kind == "network"
    assert part_of(dest).stat().st_size == 5000
    assert not dest.exists()


def test_padded_body_is_refused_and_discarded(
    fetcher: Fetcher, release_server: ReleaseServer, model: tuple[bytes, str], tmp_path: Path
) -> None:
    dest = tmp_path / MODEL
    release_server.pad(MODEL, b"trailing bytes")
    with pytest.raises(FetchError) as caught:
        fetcher.download(release_server.url(MODEL), dest, SIZE, model[1])
    assert caught.value.kind == "size"
    assert not dest.exists()
    assert not part_of(dest).exists()


@pytest.mark.parametrize("status", [404, 503])
def test_http_error_status(
    fetcher: Fetcher, release_server: ReleaseServer, model: tuple[bytes, str], tmp_path: Path, status: int
) -> None:
    url = release_server.url("missing.onnx")
    if status != 404:
        url = release_server.url(MODEL)
        release_server.status(MODEL, status)
    with pytest.raises(FetchError) as caught:
        fetcher.download(url, tmp_path / MODEL, SIZE, model[1])
    assert caught.value.kind == "http"
    assert str(status) in str(caught.value)
    with pytest.raises(FetchError) as caught:
        fetcher.manifest(url)
    assert caught.value.kind == "http"


def test_plain_http_is_refused(fetcher: Fetcher, tmp_path: Path) -> None:
    for call in (
        lambda: fetcher.manifest("http://localhost/manifest.json"),
        lambda: fetcher.download("http://localhost/model.onnx", tmp_path / MODEL, 1, "0" * 64),
    ):
        with pytest.raises(FetchError, match="https://") as caught:
            call()
        assert caught.value.kind == "tls"
        assert "\n" not in str(caught.value)


def test_wrong_ca_is_refused(release_server: ReleaseServer, model: tuple[bytes, str], tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other-pki", ca_name="another CA")
    with Fetcher(Tls(ca_file=other.ca_cert)) as fetcher, pytest.raises(FetchError) as caught:
        fetcher.download(release_server.url(MODEL), tmp_path / MODEL, SIZE, model[1])
    assert caught.value.kind == "tls"
    assert "certificate verify failed" in str(caught.value)
    assert "ota.ca_file" in str(caught.value)
    assert not part_of(tmp_path / MODEL).exists()


def test_hostname_mismatch_is_refused(release_root: Path, model: tuple[bytes, str], tmp_path: Path) -> None:
    elsewhere = make_pki(tmp_path / "pki-other-name", hostnames=("other.example",))
    with (
        ReleaseServer(release_root, elsewhere) as server,
        Fetcher(Tls(ca_file=elsewhere.ca_cert)) as fetcher,
        pytest.raises(FetchError) as caught,
    ):
        fetcher.download(server.url(MODEL), tmp_path / MODEL, SIZE, model[1])
    assert caught.value.kind == "tls"
    assert "not valid for that name" in str(caught.value)
    assert "localhost" in str(caught.value)


def test_missing_ca_file_is_a_tls_error(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"ota\.ca_file") as caught:
        Fetcher(Tls(ca_file=tmp_path / "absent.pem"))
    assert caught.value.kind == "tls"


def test_mtls(release_root: Path, pki: Pki, model: tuple[bytes, str], tmp_path: Path) -> None:
    url_dest = tmp_path / MODEL
    with ReleaseServer(release_root, pki, require_client_cert=True) as server:
        with Fetcher(Tls(ca_file=pki.ca_cert)) as anonymous, pytest.raises(FetchError) as caught:
            anonymous.download(server.url(MODEL), url_dest, SIZE, model[1])
        assert caught.value.kind == "tls"
        assert "client certificate" in str(caught.value)
        assert server.requests == []
        assert len(server.tls_failures) == 1

        stranger = make_pki(tmp_path / "stranger")  # a client certificate from a CA the server does not trust
        with Fetcher(Tls(pki.ca_cert, stranger.client_cert, stranger.client_key)) as f, pytest.raises(FetchError) as c:
            f.download(server.url(MODEL), url_dest, SIZE, model[1])
        assert c.value.kind == "tls"
        assert server.requests == []

        with Fetcher(Tls(pki.ca_cert, pki.client_cert, pki.client_key)) as device:
            assert device.download(server.url(MODEL), url_dest, SIZE, model[1]) == SIZE
        assert url_dest.read_bytes() == model[0]
        assert [r.status for r in server.requests] == [200]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_is_a_space_error(
    fetcher: Fetcher, release_server: ReleaseServer, model: tuple[bytes, str], tmp_path: Path
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(FetchError) as caught:
            fetcher.download(release_server.url(MODEL), folder / MODEL, SIZE, model[1])
    finally:
        folder.chmod(0o755)
    assert caught.value.kind == "space"
    assert str(folder) in str(caught.value)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_disk_is_a_space_error(
    fetcher: Fetcher, release_server: ReleaseServer, model: tuple[bytes, str], tmp_path: Path
) -> None:
    # /dev/full fails every write with ENOSPC, as a full disk does, and works as root too.
    dest = tmp_path / MODEL
    part_of(dest).symlink_to("/dev/full")
    with pytest.raises(FetchError) as caught:
        fetcher.download(release_server.url(MODEL), dest, SIZE, model[1])
    assert caught.value.kind == "space"
    assert str(tmp_path) in str(caught.value)
    assert "free some space" in str(caught.value)
    assert not dest.exists()


def test_killed_mid_download_resumes(
    pki: Pki, release_server: ReleaseServer, model: tuple[bytes, str], tmp_path: Path
) -> None:
    dest = tmp_path / MODEL
    script = (
        "import sys; from pathlib import Path; from agent.ota.fetch import Fetcher, Tls\n"
        "ca, url, dest, size, digest = sys.argv[1:]\n"
        "Fetcher(Tls(ca_file=Path(ca))).download(url, Path(dest), int(size), digest)"
    )
    args = [str(pki.ca_cert), release_server.url(MODEL), str(dest), str(SIZE), model[1]]
    env = {**os.environ, CRASH_ENV: "download"}
    done = subprocess.run(
        [sys.executable, "-c", script, *args], check=False, cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == -9, done.stderr.decode()
    held = part_of(dest).stat().st_size
    assert 0 < held < SIZE
    assert not dest.exists()

    with Fetcher(Tls(ca_file=pki.ca_cert)) as fetcher:
        assert fetcher.download(release_server.url(MODEL), dest, SIZE, model[1]) == SIZE - held
    assert dest.read_bytes() == model[0]
    assert release_server.requests[-1].range_header == f"bytes={held}-"


def test_file_url_is_beside_the_manifest() -> None:
    assert file_url("https://h.example/rel/v3/manifest.json", "model.onnx") == "https://h.example/rel/v3/model.onnx"
    assert file_url("https://h.example/rel/", "labels.txt") == "https://h.example/rel/labels.txt"
