"""utils_cv.common.data against a real HTTP server on 127.0.0.1 serving zips built here."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import utils_cv
from utils_cv.common import data
from utils_cv.common.data import (
    DownloadError,
    data_path,
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


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.routes``: path -> (body, mode); mode picks how the body is sent."""

    def do_GET(self):
        route = self.server.routes.get(self.path)
        self.server.requests.append(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        body, mode = route
        if mode == "slow":
            time.sleep(2)
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        if mode == "truncated":  # promise more bytes than are sent, then hang up
            self.send_header("Content-Length", str(len(body) * 2))
        elif mode != "no_length":  # without a length the body ends when the connection closes
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A threaded HTTP/1.0 server on an ephemeral port; add routes to ``server.routes``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.routes = {"/pets.zip": (zip_bytes(GOOD_MEMBERS), "normal")}
    httpd.requests = []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


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
