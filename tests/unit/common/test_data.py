"""utils_cv.common.data against a real HTTP server on 127.0.0.1 serving zips built here."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import ssl
import stat
import struct
import subprocess
import threading
import time
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import utils_cv
from utils_cv.common import data
from utils_cv.common.data import (
    ArchiveLimitError,
    DownloadError,
    DownloadLimitError,
    LimitError,
    data_path,
    download,
    extract_zip,
    file_name_from_url,
    get_files_in_directory,
    unzip_url,
    unzip_urls,
)

# Files of the well-formed test archive: member name -> content.
GOOD_MEMBERS = {
    "pets/cat/1.txt": b"a cat",
    "pets/dog/2.txt": b"a dog " * 1000,
    "pets/README": b"read me",
}


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip archive holding ``members`` (name -> content), names kept exactly as given."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(zipfile.ZipInfo(name), content)
    return buffer.getvalue()


MiB = 1 << 20
TRICKLE_INTERVAL = 0.5  # seconds between the bytes of a trickling server


def deflated_zeros(mib: int) -> tuple[bytes, int]:
    """Raw deflate data that inflates to ``mib`` MiB of zeros, and the CRC-32 of those zeros.

    One MiB is compressed with a full flush (which makes its output independent of what came
    before) and repeated, so 200 MiB take milliseconds instead of seconds.
    """
    block = bytes(MiB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    once = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(block, crc)
    return once * mib + compressor.flush(), crc


def raw_zip(name: str, deflated: bytes, crc: int, size: int) -> bytes:
    """A one-member zip archive whose member ``name`` holds already ``deflated`` data and
    declares ``size`` unpacked bytes (in the local and the central header): the truth or a lie."""
    encoded = name.encode()
    sizes = (crc, len(deflated), size, len(encoded))
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 33, *sizes, 0) + encoded
    central = (
        struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 33, *sizes, 0, 0, 0, 0, 0, 0)
        + encoded
    )
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(deflated), 0
    )
    return local + deflated + central + end


def with_end_record(archive: bytes, count: int, zip64: bool = False) -> bytes:
    """``archive`` with its end record stating ``count`` entries; with ``zip64`` the counts and
    directory size move to a ZIP64 end record, as in archives of more than 65535 entries."""
    at = archive.rindex(b"PK\x05\x06")
    fields = list(struct.unpack("<4s4H2LH", archive[at : at + 22]))
    cd_size, cd_offset = fields[5], fields[6]
    if not zip64:
        fields[3] = fields[4] = count
        return archive[:at] + struct.pack("<4s4H2LH", *fields)
    record = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_offset
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return archive[:at] + record + locator + end


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.routes``: path -> (body, mode); mode picks how the body is sent."""

    def do_GET(self):
        route = self.server.routes.get(self.path)
        self.server.requests.append(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        body, mode = route
        try:
            if mode in RAW_MODES:
                RAW_MODES[mode](self, body)
                return
            if mode == "slow" and self.server.closing.wait(2):
                return
            if mode == "redirect":  # to itself, for ever
                self.send_response(302)
                self.send_header("Location", self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if mode == "gzip":
                body = gzip.compress(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            if mode == "gzip":  # sent although the client asked for identity
                self.send_header("Content-Encoding", "gzip")
            if mode == "truncated":  # promise more bytes than are sent, then hang up
                self.send_header("Content-Length", str(len(body) * 2))
            elif mode != "no_length":  # without a length the body ends when the connection closes
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if mode == "observe":  # record the download folder half way through the body
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.server.seen.append(sorted(os.listdir(self.server.watch_dir)))
                body = body[len(body) // 2 :]
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout and limit tests)

    def trickle(self, data: bytes) -> None:
        """Send ``data`` one byte per TRICKLE_INTERVAL until done or the server closes."""
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            if self.server.closing.wait(TRICKLE_INTERVAL):
                return

    def send_trickling_body(self, body: bytes) -> None:
        self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        self.trickle(body)

    def send_trickling_headers(self, body: bytes) -> None:
        self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Padding: ")
        self.trickle(b"x" * 60)

    def send_broken_chunks(self, body: bytes) -> None:
        """Chunked encoding (no Content-Length): announce one chunk, send half of it, hang up."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.wfile.write(b"%x\r\n" % len(body) + body[: len(body) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


RAW_MODES = {
    "raw": lambda handler, response: handler.wfile.write(response),
    "trickle": Handler.send_trickling_body,
    "trickle_headers": Handler.send_trickling_headers,
    "broken_chunks": Handler.send_broken_chunks,
}


@contextlib.contextmanager
def serve(tls: ssl.SSLContext | None = None):
    """A threaded HTTP/1.0 server on an ephemeral port of 127.0.0.1, shut down on exit; add
    routes to ``server.routes``. With ``tls`` it speaks HTTPS."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    httpd.daemon_threads = True
    httpd.routes = {"/pets.zip": (zip_bytes(GOOD_MEMBERS), "normal")}
    httpd.requests = []
    httpd.seen = []
    httpd.closing = threading.Event()  # ends slow and trickling responses
    scheme = "https" if tls else "http"
    httpd.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.closing.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server():
    with serve() as httpd:
        yield httpd


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Path:
    """A self-signed certificate and key for 127.0.0.1, in one PEM file (needs ``openssl``)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    pem = tmp_path_factory.mktemp("tls") / "localhost.pem"
    key = pem.with_name("key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-keyout", str(key), "-out", str(pem), "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    pem.write_bytes(pem.read_bytes() + key.read_bytes())
    return pem


@pytest.fixture
def tls_server(certificate, monkeypatch):
    """Like ``server`` but HTTPS, with its certificate trusted through REQUESTS_CA_BUNDLE."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate))
    with serve(context) as httpd:
        yield httpd


@pytest.fixture
def dirs(tmp_path):
    """Separate download and extraction folders inside a sandbox folder."""
    sandbox = tmp_path / "sandbox"
    return sandbox / "downloads", sandbox / "extracted"


def all_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``: relative POSIX path -> content."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


# ---------------------------------------------------------------- data_path


def test_data_path_from_env_is_created(tmp_path, monkeypatch):
    wanted = tmp_path / "a" / "b"
    monkeypatch.setenv("UTILS_CV_DATA_DIR", str(wanted))
    assert data_path() == wanted
    assert wanted.is_dir()


def test_data_path_defaults_to_repo_data(monkeypatch):
    monkeypatch.delenv("UTILS_CV_DATA_DIR", raising=False)
    repo_root = Path(utils_cv.__file__).resolve().parents[1]
    assert data_path() == repo_root / "data"
    assert (repo_root / "data").is_dir()


# ---------------------------------------------------------------- unzip_url


def test_unzip_url_downloads_and_extracts(server, dirs, capsys):
    downloads, extracted = dirs
    zip_path = downloads / "pets.zip"
    folder = unzip_url(f"{server.url}/pets.zip", fpath=zip_path, dest=extracted)

    assert folder == extracted / "pets"
    assert all_files(folder) == {k.removeprefix("pets/"): v for k, v in GOOD_MEMBERS.items()}
    assert zip_path.read_bytes() == server.routes["/pets.zip"][0]
    assert sorted(p.name for p in downloads.iterdir()) == ["pets.zip"]  # no temp file left
    assert sorted(p.name for p in extracted.iterdir()) == ["pets"]
    assert "pets.zip" in capsys.readouterr().err  # progress bar was drawn


def test_unzip_url_defaults_to_data_path(server, tmp_path, monkeypatch):
    monkeypatch.setenv("UTILS_CV_DATA_DIR", str(tmp_path / "data"))
    folder = unzip_url(f"{server.url}/pets.zip")
    assert folder == tmp_path / "data" / "pets"
    assert (tmp_path / "data" / "pets.zip").is_file()
    assert (folder / "cat" / "1.txt").read_bytes() == b"a cat"


def test_unzip_url_without_content_length(server, dirs):
    downloads, extracted = dirs
    server.routes["/pets.zip"] = (server.routes["/pets.zip"][0], "no_length")
    folder = unzip_url(f"{server.url}/pets.zip", fpath=downloads / "pets.zip", dest=extracted)
    assert (folder / "dog" / "2.txt").read_bytes() == GOOD_MEMBERS["pets/dog/2.txt"]


def test_unzip_url_puts_loose_members_in_a_folder(server, dirs):
    downloads, extracted = dirs
    server.routes["/loose.zip"] = (zip_bytes({"a.txt": b"A", "sub/b.txt": b"B"}), "normal")
    folder = unzip_url(f"{server.url}/loose.zip", fpath=downloads / "loose.zip", dest=extracted)
    assert folder == extracted / "loose"
    assert all_files(extracted) == {"loose/a.txt": b"A", "loose/sub/b.txt": b"B"}


def test_unzip_url_exist_ok_false_raises(server, dirs):
    downloads, extracted = dirs
    url = f"{server.url}/pets.zip"
    unzip_url(url, fpath=downloads / "pets.zip", dest=extracted)
    with pytest.raises(FileExistsError, match="exist_ok=True"):
        unzip_url(url, fpath=downloads / "pets.zip", dest=extracted)


def test_unzip_url_exist_ok_true_skips_download(server, dirs):
    downloads, extracted = dirs
    (extracted / "pets").mkdir(parents=True)
    (extracted / "pets" / "mine.txt").write_text("kept")
    folder = unzip_url(
        f"{server.url}/pets.zip", fpath=downloads / "pets.zip", dest=extracted, exist_ok=True
    )
    assert folder == extracted / "pets"
    assert server.requests == []
    assert not downloads.exists()
    assert all_files(folder) == {"mine.txt": b"kept"}


def test_unzip_url_reuses_finished_download(server, dirs):
    downloads, extracted = dirs
    downloads.mkdir(parents=True)
    (downloads / "pets.zip").write_bytes(zip_bytes({"pets/x.txt": b"local"}))
    folder = unzip_url(f"{server.url}/pets.zip", fpath=downloads / "pets.zip", dest=extracted)
    assert server.requests == []
    assert all_files(folder) == {"x.txt": b"local"}


@pytest.mark.parametrize(
    "evil_name",
    [
        "../evil.txt",
        "pets/../../evil.txt",
        "/tmp/evil.txt",
        "C:/evil.txt",
        "pets\\..\\..\\evil.txt",
    ],
)
def test_unzip_url_refuses_unsafe_members(server, dirs, evil_name):
    downloads, extracted = dirs
    members = {"pets/ok.txt": b"fine", evil_name: b"pwned"}
    server.routes["/pets.zip"] = (zip_bytes(members), "normal")
    with pytest.raises(ValueError, match="unsafe path") as err:
        unzip_url(f"{server.url}/pets.zip", fpath=downloads / "pets.zip", dest=extracted)
    assert repr(evil_name) in str(err.value)
    sandbox = downloads.parent
    assert sorted(p.relative_to(sandbox).as_posix() for p in sandbox.rglob("*")) == [
        "downloads",
        "downloads/pets.zip",
    ]
    assert not Path("/tmp/evil.txt").exists()


def test_unzip_url_404_is_clear_and_leaves_nothing(server, dirs):
    downloads, extracted = dirs
    url = f"{server.url}/missing.zip"
    with pytest.raises(DownloadError, match="404") as err:
        unzip_url(url, fpath=downloads / "missing.zip", dest=extracted)
    assert url in str(err.value)
    assert list(downloads.iterdir()) == []
    assert not extracted.exists()


def test_unzip_url_truncated_body_leaves_no_partial_file(server, dirs):
    downloads, extracted = dirs
    server.routes["/pets.zip"] = (server.routes["/pets.zip"][0], "truncated")
    url = f"{server.url}/pets.zip"
    with pytest.raises(DownloadError, match=url):
        unzip_url(url, fpath=downloads / "pets.zip", dest=extracted)
    assert list(downloads.iterdir()) == []
    assert not extracted.exists()


def test_unzip_url_timeout_is_clear(server, dirs):
    downloads, extracted = dirs
    server.routes["/slow.zip"] = (b"late", "slow")
    url = f"{server.url}/slow.zip"
    with pytest.raises(DownloadError, match="timed out") as err:
        unzip_url(url, fpath=downloads / "slow.zip", dest=extracted, timeout=0.3)
    assert url in str(err.value)
    assert list(downloads.iterdir()) == []


def test_unzip_url_needs_a_file_name():
    with pytest.raises(ValueError, match="file name"):
        unzip_url("http://127.0.0.1/")


def test_unzip_urls_returns_each_folder(server, tmp_path, monkeypatch):
    monkeypatch.setenv("UTILS_CV_DATA_DIR", str(tmp_path / "data"))
    server.routes["/birds.zip"] = (zip_bytes({"birds/owl.txt": b"hoo"}), "normal")
    dest = tmp_path / "out"
    folders = unzip_urls([f"{server.url}/pets.zip", f"{server.url}/birds.zip"], dest)
    assert folders == [dest / "pets", dest / "birds"]
    assert (dest / "birds" / "owl.txt").read_bytes() == b"hoo"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["birds.zip", "pets.zip"]


def test_unsafe_member_reason():
    assert data.unsafe_member_reason("a/b/c.jpg") is None
    assert data.unsafe_member_reason("a/..b/c.jpg") is None
    assert data.unsafe_member_reason("/etc/passwd") == "absolute path"
    assert data.unsafe_member_reason("D:\\x") == "drive letter"
    assert data.unsafe_member_reason("a/../../x") == "'..' component"


# ---------------------------------------------------------------- file names from URLs


@pytest.mark.parametrize(
    "segment, name",
    [
        ("pets.zip", "pets.zip"),
        ("my%20pets.zip", "my pets.zip"),
        ("..%2F..%2Fevil.zip", "evil.zip"),
        ("a%2F..%2F..%2Fevil.zip", "evil.zip"),
        ("%2Ftmp%2Fevil.zip", "evil.zip"),
        ("..%5C..%5Cevil.zip", "evil.zip"),
        ("%2e%2e%2fevil.zip", "evil.zip"),
    ],
)
def test_file_name_from_url_keeps_a_safe_base_name(segment, name):
    assert file_name_from_url(f"http://127.0.0.1/data/{segment}?x=1#y") == name


@pytest.mark.parametrize(
    "segment",
    ["", "..%2F", "%2E%2E", "%2E", "evil%00.zip", "evil%0A.zip", "a%3Ab.zip", "NUL.zip", "x."]
    + ["a" * 251 + ".zip"],
)
def test_file_name_from_url_refuses_unsafe_names(segment):
    url = f"http://127.0.0.1/data/{segment}"
    with pytest.raises(ValueError, match="safe file name") as err:
        file_name_from_url(url)
    assert repr(url) in str(err.value)


def only_under(root: Path, folder: Path) -> list[str]:
    """Everything under ``root`` that is not inside ``folder`` (``folder``'s parents aside)."""
    return [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p != folder and p not in folder.parents and folder not in p.parents
    ]


@pytest.mark.parametrize(
    "segment", ["..%2F..%2Fevil.zip", "a%2F..%2F..%2Fevil.zip", "..%5C..%5Cevil.zip"]
)
def test_unzip_url_encoded_name_stays_in_data_folder(server, tmp_path, monkeypatch, segment):
    data_dir = tmp_path / "outer" / "inner" / "data"
    monkeypatch.setenv("UTILS_CV_DATA_DIR", str(data_dir))
    server.routes[f"/{segment}"] = (zip_bytes({"evil/x.txt": b"x"}), "normal")
    folder = unzip_url(f"{server.url}/{segment}")
    assert folder == data_dir / "evil"
    assert sorted(p.name for p in data_dir.iterdir()) == ["evil", "evil.zip"]
    assert only_under(tmp_path, data_dir) == []


@pytest.mark.parametrize("segment", ["..%2F", "%2E%2E", "evil%00.zip", "a%3Ab.zip"])
def test_unzip_url_refuses_unsafe_names_before_downloading(server, tmp_path, monkeypatch, segment):
    monkeypatch.setenv("UTILS_CV_DATA_DIR", str(tmp_path / "data"))
    url = f"{server.url}/{segment}"
    with pytest.raises(ValueError, match="pass fpath") as err:
        unzip_url(url)
    assert url in str(err.value)
    assert server.requests == []
    assert list(tmp_path.rglob("*")) == [tmp_path / "data"]


def test_unzip_url_refuses_an_archive_named_like_its_folder(tmp_path):
    with pytest.raises(ValueError, match="'.zip' suffix"):
        unzip_url("http://127.0.0.1/download", fpath=tmp_path / "pets", dest=tmp_path)


# ---------------------------------------------------------------- partial downloads


def test_download_is_written_to_part_file_then_moved(server, dirs):
    downloads, _ = dirs
    body = server.routes["/pets.zip"][0]
    server.routes["/pets.zip"] = (body, "observe")
    server.watch_dir = downloads
    download(f"{server.url}/pets.zip", downloads / "pets.zip")
    assert server.seen == [["pets.zip.part"]]
    assert sorted(os.listdir(downloads)) == ["pets.zip"]
    assert (downloads / "pets.zip").read_bytes() == body


def test_download_replaces_a_stale_part_file(server, dirs):
    downloads, _ = dirs
    downloads.mkdir(parents=True)
    (downloads / "pets.zip.part").write_bytes(b"left by a killed process")
    download(f"{server.url}/pets.zip", downloads / "pets.zip")
    assert sorted(os.listdir(downloads)) == ["pets.zip"]
    assert (downloads / "pets.zip").read_bytes() == server.routes["/pets.zip"][0]


def test_unzip_url_cut_short_without_length_is_downloaded_again(server, dirs):
    """No Content-Length, connection closed half way: the client cannot tell from HTTP, but the
    archive is not a zip; it is removed, and the next call downloads it again."""
    downloads, extracted = dirs
    body = server.routes["/pets.zip"][0]
    server.routes["/pets.zip"] = (body[: len(body) // 2], "no_length")
    url = f"{server.url}/pets.zip"
    with pytest.raises(DownloadError, match="not a valid zip archive") as err:
        unzip_url(url, fpath=downloads / "pets.zip", dest=extracted)
    assert url in str(err.value)
    assert list(downloads.iterdir()) == []
    assert not extracted.exists()

    server.routes["/pets.zip"] = (body, "no_length")
    folder = unzip_url(url, fpath=downloads / "pets.zip", dest=extracted)
    assert server.requests == ["/pets.zip", "/pets.zip"]
    assert all_files(folder) == {k.removeprefix("pets/"): v for k, v in GOOD_MEMBERS.items()}


def test_unzip_url_broken_chunked_stream_leaves_nothing(server, dirs):
    downloads, extracted = dirs
    body = server.routes["/pets.zip"][0]
    server.routes["/pets.zip"] = (body, "broken_chunks")
    url = f"{server.url}/pets.zip"
    with pytest.raises(DownloadError, match=url):
        unzip_url(url, fpath=downloads / "pets.zip", dest=extracted)
    assert list(downloads.iterdir()) == []
    server.routes["/pets.zip"] = (body, "normal")
    unzip_url(url, fpath=downloads / "pets.zip", dest=extracted)
    assert server.requests == ["/pets.zip", "/pets.zip"]


def test_download_with_content_encoding_checks_length_on_the_wire(server, dirs):
    downloads, _ = dirs
    body = server.routes["/pets.zip"][0]
    server.routes["/pets.zip"] = (body, "gzip")
    download(f"{server.url}/pets.zip", downloads / "pets.zip")
    assert (downloads / "pets.zip").read_bytes() == body


def test_unzip_url_checks_sha256(server, dirs):
    downloads, extracted = dirs
    body = server.routes["/pets.zip"][0]
    url = f"{server.url}/pets.zip"
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DownloadError, match="SHA-256") as err:
        unzip_url(url, fpath=downloads / "pets.zip", dest=extracted, sha256=wrong)
    assert url in str(err.value)
    assert list(downloads.iterdir()) == []
    right = hashlib.sha256(body).hexdigest().upper()
    folder = unzip_url(url, fpath=downloads / "pets.zip", dest=extracted, sha256=right)
    assert (folder / "cat" / "1.txt").read_bytes() == b"a cat"


def test_unzip_url_downloads_again_when_kept_archive_has_other_sha256(server, dirs):
    downloads, extracted = dirs
    body = server.routes["/pets.zip"][0]
    downloads.mkdir(parents=True)
    (downloads / "pets.zip").write_bytes(zip_bytes({"pets/x.txt": b"stale"}))
    folder = unzip_url(
        f"{server.url}/pets.zip",
        fpath=downloads / "pets.zip",
        dest=extracted,
        sha256=hashlib.sha256(body).hexdigest(),
    )
    assert server.requests == ["/pets.zip"]
    assert (downloads / "pets.zip").read_bytes() == body
    assert (folder / "cat" / "1.txt").read_bytes() == b"a cat"


@pytest.mark.parametrize("sha256", ["abc", "g" * 64, 123])
def test_unzip_url_refuses_a_malformed_sha256(sha256, tmp_path):
    with pytest.raises(ValueError, match="sha256 must be 64 hexadecimal digits"):
        unzip_url("http://127.0.0.1/pets.zip", dest=tmp_path, sha256=sha256)


def test_redirects_are_bounded(server, dirs):
    downloads, _ = dirs
    server.routes["/loop.zip"] = (b"", "redirect")
    with pytest.raises(DownloadError, match="redirects"):
        download(f"{server.url}/loop.zip", downloads / "loop.zip")
    assert len(server.requests) == data.MAX_REDIRECTS + 1
    assert list(downloads.iterdir()) == []


@pytest.mark.parametrize(
    "response, error",
    [
        (b"HTTP/1.0 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\nhi", "max_bytes"),
        (b"HTTP/1.0 302 Found\r\nLocation: http://[::1\r\nContent-Length: 0\r\n\r\n", "IPv6"),
        (b"HTTP/1.0 302 Found\r\nLocation: file:///etc/passwd\r\n\r\n", "adapters"),
        (b"HTTP/1.0 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\nhi", "headers"),
        (b"HTTZ/9 nope\r\n\r\nhi", "BadStatusLine"),
    ],
    ids=["5000-digit length", "bad redirect", "redirect to file", "200 headers", "bad status"],
)
def test_download_malformed_responses_are_download_errors(server, dirs, response, error):
    downloads, _ = dirs
    server.routes["/odd.zip"] = (response, "raw")
    with pytest.raises(DownloadError, match=error):
        download(f"{server.url}/odd.zip", downloads / "odd.zip")
    assert list(downloads.iterdir()) == []


# ---------------------------------------------------------------- limits


def test_default_limits():
    assert data.MAX_BYTES == 10 * 2**30
    assert data.MAX_SECONDS == 3600
    assert data.MAX_MEMBERS == 100_000
    assert data.MAX_UNPACKED_BYTES == 20 * 2**30
    assert issubclass(DownloadLimitError, DownloadError)
    assert issubclass(DownloadLimitError, LimitError) and issubclass(ArchiveLimitError, LimitError)
    assert issubclass(LimitError, ValueError)


@pytest.mark.parametrize(
    "name, value",
    [
        ("max_bytes", 0),
        ("max_bytes", 1.5),
        ("max_members", -1),
        ("max_unpacked_bytes", True),
        ("max_seconds", float("nan")),
        ("max_seconds", float("inf")),
        ("timeout", 0),
    ],
)
def test_limits_must_be_positive(name, value, tmp_path):
    with pytest.raises(ValueError, match=f"{name} must be a positive"):
        unzip_url("http://127.0.0.1/pets.zip", dest=tmp_path, **{name: value})


@pytest.mark.parametrize("mode", ["normal", "no_length", "gzip"])
def test_download_larger_than_max_bytes_is_refused(server, dirs, mode):
    """Refused from the Content-Length, or counted while streaming (also a gzip bomb sent
    with Content-Encoding: 16 KiB on the wire, 16 MiB decoded)."""
    downloads, _ = dirs
    server.routes["/big.zip"] = (bytes(16 * MiB if mode == "gzip" else 2 * MiB), mode)
    url = f"{server.url}/big.zip"
    with pytest.raises(DownloadLimitError, match="max_bytes=1048576") as err:
        download(url, downloads / "big.zip", max_bytes=MiB)
    assert url in str(err.value) and "pass a larger max_bytes" in str(err.value)
    if mode == "normal":
        assert "Content-Length is 2097152" in str(err.value)
    assert list(downloads.iterdir()) == []


@pytest.mark.parametrize("mode", ["trickle", "trickle_headers"])
def test_trickling_server_is_stopped_by_max_seconds(server, dirs, mode):
    """One byte every 0.5 s keeps each read within its timeout; max_seconds still ends it."""
    downloads, _ = dirs
    server.routes["/slow.zip"] = (b"x" * 100, mode)
    url = f"{server.url}/slow.zip"
    start = time.monotonic()
    with pytest.raises(DownloadLimitError, match=r"max_seconds=1 s") as err:
        download(url, downloads / "slow.zip", timeout=5, max_seconds=1)
    assert time.monotonic() - start < 5  # generous: without the limit it takes far longer
    assert url in str(err.value) and "pass a larger max_seconds" in str(err.value)
    assert list(downloads.iterdir()) == []


def test_trickling_https_server_is_stopped_by_max_seconds(tls_server, dirs):
    """Over TLS the socket a read blocks on is the TLS one; the deadline must still end it."""
    downloads, _ = dirs
    download(f"{tls_server.url}/pets.zip", downloads / "pets.zip")  # the setup works
    assert (downloads / "pets.zip").read_bytes() == tls_server.routes["/pets.zip"][0]
    tls_server.routes["/slow.zip"] = (b"x" * 100, "trickle")
    start = time.monotonic()
    with pytest.raises(DownloadLimitError, match=r"max_seconds=1 s"):
        download(f"{tls_server.url}/slow.zip", downloads / "slow.zip", timeout=5, max_seconds=1)
    assert time.monotonic() - start < 5  # generous: without the limit it takes far longer
    assert sorted(os.listdir(downloads)) == ["pets.zip"]


@pytest.fixture(scope="module")
def zeros_200() -> tuple[bytes, int]:
    """``deflated_zeros(200)``: about 200 KiB that inflate to 200 MiB."""
    return deflated_zeros(200)


@pytest.fixture(scope="module")
def bomb(zeros_200) -> bytes:
    """A 200 KiB zip archive whose one member unpacks to 200 MiB of zeros (honestly declared)."""
    return raw_zip("bomb/zeros.bin", *zeros_200, 200 * MiB)


def test_bomb_is_a_real_zip(bomb):
    assert len(bomb) < 210 * 1024
    with zipfile.ZipFile(io.BytesIO(bomb)) as zf:
        assert zf.infolist()[0].file_size == 200 * MiB
        with zf.open("bomb/zeros.bin") as member:
            assert member.read(MiB) == bytes(MiB)


def test_unzip_url_refuses_a_bomb_fast(server, dirs, bomb):
    downloads, extracted = dirs
    server.routes["/bomb.zip"] = (bomb, "normal")
    url = f"{server.url}/bomb.zip"
    start = time.monotonic()
    with pytest.raises(ArchiveLimitError, match="max_unpacked_bytes=10485760") as err:
        unzip_url(url, fpath=downloads / "bomb.zip", dest=extracted, max_unpacked_bytes=10 * MiB)
    assert time.monotonic() - start < 5  # generous; what matters is that nothing is written
    assert "209715200 bytes (200.0 MiB)" in str(err.value)
    assert "pass a larger max_unpacked_bytes" in str(err.value)
    assert not extracted.exists()  # refused before anything was unpacked


def test_extract_zip_bomb_lying_about_its_size_writes_little(tmp_path, zeros_200):
    """The headers say 1000 bytes: zipfile stops there and the CRC check fails; nothing stays.
    (Were a reader to go on past a declared size, ``copy_at_most`` would stop it: next test.)"""
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(raw_zip("bomb/zeros.bin", *zeros_200, 1000))
    out = tmp_path / "out"
    out.mkdir()
    start = time.monotonic()
    with pytest.raises(zipfile.BadZipFile, match="Bad CRC-32"):
        extract_zip(archive, out, max_unpacked_bytes=10 * MiB)
    assert time.monotonic() - start < 5  # generous; zipfile stops at the declared size
    assert list(out.iterdir()) == []


def test_copy_at_most_counts_the_bytes_it_copies():
    """What stops a member that unpacks to more than it declares (the budget left)."""
    out = io.BytesIO()
    assert data.copy_at_most(io.BytesIO(bytes(3 * MiB)), out, budget=MiB) is None
    assert out.tell() <= MiB
    out = io.BytesIO()
    assert data.copy_at_most(io.BytesIO(b"abc"), out, budget=3) == 3
    assert out.getvalue() == b"abc"


def test_extract_zip_counts_bytes_across_members(tmp_path):
    members = {f"pets/{i}.bin": bytes(400_000) for i in range(3)}  # 1.2 MB declared
    (tmp_path / "pets.zip").write_bytes(zip_bytes(members))
    with pytest.raises(ArchiveLimitError, match="max_unpacked_bytes=1000000"):
        extract_zip(tmp_path / "pets.zip", tmp_path / "out", max_unpacked_bytes=1_000_000)
    folder = extract_zip(tmp_path / "pets.zip", tmp_path / "out", max_unpacked_bytes=1_200_000)
    assert len(all_files(folder)) == 3


@pytest.mark.parametrize("stated", [None, 1, "zip64"])
def test_extract_zip_refuses_too_many_members(tmp_path, stated):
    """Refused whatever count the end record states (the real one, a lie, or a ZIP64 record)."""
    archive = zip_bytes({f"pets/{i}.txt": b"x" for i in range(12)})
    if stated == 1:
        archive = with_end_record(archive, 1)
    elif stated == "zip64":
        archive = with_end_record(archive, 12, zip64=True)
    (tmp_path / "pets.zip").write_bytes(archive)
    out = tmp_path / "out"
    with pytest.raises(ArchiveLimitError, match="more than max_members=10 entries") as err:
        extract_zip(tmp_path / "pets.zip", out, max_members=10)
    assert "pass a larger max_members" in str(err.value)
    assert not out.exists()
    assert len(all_files(extract_zip(tmp_path / "pets.zip", out, max_members=12))) == 12


def test_count_zip_entries_walks_the_directory(tmp_path):
    archive = zip_bytes({f"{i}.txt": b"x" for i in range(30)})
    for stated, zip64 in [(30, False), (1, False), (30, True)]:
        path = tmp_path / f"{stated}{zip64}.zip"
        path.write_bytes(with_end_record(archive, stated, zip64))
        assert data.count_zip_entries(path, stop_after=100) == 30
        assert data.count_zip_entries(path, stop_after=5) == 6
        with zipfile.ZipFile(path) as zf:  # the forged records are valid
            assert len(zf.infolist()) == 30
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert data.count_zip_entries(tmp_path / "junk.zip", stop_after=5) is None


@pytest.mark.parametrize(
    "mode, reason",
    [
        (stat.S_IFLNK | 0o777, "a symbolic link"),
        (stat.S_IFIFO | 0o644, "a special file"),
        (stat.S_IFCHR | 0o644, "a special file"),
    ],
)
def test_extract_zip_refuses_links_and_special_files(tmp_path, mode, reason):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pets/ok.txt", b"fine")
        link = zipfile.ZipInfo("pets/passwd")
        link.external_attr = mode << 16
        zf.writestr(link, b"/etc/passwd")
    (tmp_path / "pets.zip").write_bytes(buffer.getvalue())
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=f"'pets/passwd' is {reason}"):
        extract_zip(tmp_path / "pets.zip", out)
    assert list(out.iterdir()) == []


def test_extract_zip_refuses_a_file_and_folder_of_one_name(tmp_path):
    (tmp_path / "pets.zip").write_bytes(zip_bytes({"pets/a": b"file", "pets/a/b": b"in folder"}))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match="'pets/a/b' clashes with another member"):
        extract_zip(tmp_path / "pets.zip", out)
    assert list(out.iterdir()) == []


def test_extract_zip_keeps_folders_and_odd_but_safe_names(tmp_path):
    members = {"pets/": b"", "pets/a/./b.txt": b"B", "pets/..b.txt": b"dots", "pets/c\\d.txt": b"D"}
    (tmp_path / "pets.zip").write_bytes(zip_bytes(members))
    folder = extract_zip(tmp_path / "pets.zip", tmp_path / "out")
    assert all_files(folder) == {"a/b.txt": b"B", "..b.txt": b"dots", "c/d.txt": b"D"}


# ---------------------------------------------------------------- get_files_in_directory


def test_get_files_in_directory(tmp_path):
    for name in ["b.JPG", "a.jpg", "c.png", "d.txt", "noext"]:
        (tmp_path / name).write_text(name)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.jpg").write_text("e")

    names = lambda paths: [p.name for p in paths]  # noqa: E731
    assert names(get_files_in_directory(tmp_path)) == ["a.jpg", "b.JPG", "c.png", "d.txt", "noext"]
    assert names(get_files_in_directory(tmp_path, [".jpg"])) == ["a.jpg", "b.JPG"]
    assert names(get_files_in_directory(tmp_path, ["PNG", ".Jpg"])) == ["a.jpg", "b.JPG", "c.png"]
    assert names(get_files_in_directory(str(tmp_path), ".txt")) == ["d.txt"]
    assert get_files_in_directory(tmp_path, []) == []
    assert all(p.parent == tmp_path for p in get_files_in_directory(tmp_path))


def test_get_files_in_directory_missing_folder(tmp_path):
    with pytest.raises(NotADirectoryError):
        get_files_in_directory(tmp_path / "nope")
