"""Where datasets live, downloading and unpacking zip archives, listing files.

Downloads and archives are treated as hostile input. A file name taken from a URL is reduced to a
safe base name; a download is written to ``<name>.part`` and moved into place only when it is
complete (Content-Length and, when given, SHA-256 verified); archive members cannot land outside
their folder. Four limits, each a parameter with the default below, stop a download or an archive
that would take unbounded disk or time; exceeding one raises a ``LimitError`` that names the
parameter to raise it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import numbers
import os
import re
import shutil
import socket
import stat
import struct
import threading
import time
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from http.client import HTTPException
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError

DATA_DIR_ENV = "UTILS_CV_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]
CHUNK_SIZE = 1 << 16  # bytes read from the network or an archive member at a time
GiB = 1 << 30

# Default limits (each is a parameter of download / extract_zip / unzip_url).
MAX_BYTES = 10 * GiB  # bytes one download may write
MAX_SECONDS = 3600.0  # seconds one download may take, from connecting to the last byte
MAX_MEMBERS = 100_000  # entries (files and folders) in one archive
MAX_UNPACKED_BYTES = 20 * GiB  # bytes one archive may unpack to
MAX_REDIRECTS = 10  # HTTP redirects followed per download
MAX_NAME_BYTES = 250  # UTF-8 bytes of a file name taken from a URL (255 less ".part")

WINDOWS_DEVICE_NAMES = {"CON", "PRN", "AUX", "NUL"} | {
    f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)
}


class DownloadError(OSError):
    """A download failed: HTTP error status, timeout, lost connection or truncated body."""


class LimitError(ValueError):
    """A download or an archive exceeds a limit; the message names the parameter to raise it."""


class DownloadLimitError(DownloadError, LimitError):
    """A download is larger than ``max_bytes`` or takes longer than ``max_seconds``."""


class ArchiveLimitError(LimitError):
    """An archive has more than ``max_members`` entries or unpacks to more than
    ``max_unpacked_bytes``."""


def data_path() -> Path:
    """Folder where downloaded datasets go, created if missing.

    Returns
    -------
    Path
        ``$UTILS_CV_DATA_DIR`` when that environment variable is set, else ``<repo root>/data``.
    """
    env = os.environ.get(DATA_DIR_ENV)
    path = Path(env).expanduser() if env else REPO_ROOT / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_name_from_url(url: str) -> str:
    """A safe file name from the last segment of the URL's path, e.g. ``fridgeObjects.zip``.

    The segment is percent-decoded and only what follows its last ``/`` or ``\\`` is kept, so
    ``..%2F..%2Fx.zip`` gives ``x.zip``. ValueError, naming the URL, when what is left is empty,
    ``.`` or ``..``, has control or reserved characters (``<>:"|?*``), ends in a dot or space, is a
    Windows device name or is longer than 250 bytes: pass ``fpath`` then.
    """
    segment = urlparse(url).path.rsplit("/", 1)[-1]
    name = re.split(r"[/\\]", unquote(segment))[-1]
    reason = unsafe_name_reason(name)
    if reason:
        raise ValueError(f"Cannot tell a safe file name from URL {url!r} ({reason}); pass fpath.")
    return name


def unsafe_name_reason(name: str) -> str | None:
    """Why ``name`` is not a safe name for a single file in a folder, or None if it is."""
    if name in ("", ".", ".."):
        return f"name {name!r} is empty or a folder reference"
    if re.search(r'[\x00-\x1f\x7f<>:"|?*]', name):
        return f"name {name!r} has a control or reserved character"
    if name.endswith((".", " ")):
        return f"name {name!r} ends with a dot or space"
    if name.split(".")[0].upper() in WINDOWS_DEVICE_NAMES:
        return f"name {name!r} is a device name on Windows"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"name is longer than {MAX_NAME_BYTES} bytes"
    return None


def check_positive(name: str, value, integer: bool = True) -> None:
    """ValueError naming the parameter unless ``value`` is a positive (finite) int or number."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not 0 < value < math.inf:
        wanted = "a positive integer" if integer else "a positive finite number of seconds"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")


def check_sha256(sha256: str | None) -> str | None:
    """``sha256`` in lower case; ValueError unless None or 64 hexadecimal digits."""
    if sha256 is None:
        return None
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return sha256.lower()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of the file at ``path`` as 64 lower-case hexadecimal digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def size_text(n: float) -> str:
    """``n`` bytes for people, e.g. ``200.0 MiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def download(
    url: str,
    fpath: str | Path,
    timeout: float = 30.0,
    *,
    sha256: str | None = None,
    max_bytes: int = MAX_BYTES,
    max_seconds: float = MAX_SECONDS,
) -> Path:
    """Download ``url`` to ``fpath`` with a progress bar, all or nothing.

    The bytes go to ``<fpath>.part``, which is renamed to ``fpath`` only once the whole body has
    arrived and checked out: as many bytes as the Content-Length header said (when sent) and the
    SHA-256 given (when given). Any error or interruption removes the ``.part`` file and leaves
    ``fpath`` as it was, so a later call never takes a partial file for a finished one. A
    ``.part`` file left by a killed process is replaced; do not download to the same ``fpath``
    from two processes at once (the loser of such a race gets a DownloadError).

    Parameters
    ----------
    url : str
        HTTP(S) address.
    fpath : str or Path
        Destination file; its folder is created if missing, an existing file is replaced.
    timeout : float
        Seconds to wait for the connection and for each read.
    sha256 : str, optional
        Expected SHA-256 of the file, 64 hexadecimal digits.
    max_bytes : int
        Most bytes the file may have (default 10 GiB); a larger Content-Length is refused before
        the body is read, and the body is cut off once it passes the limit.
    max_seconds : float
        Most seconds the whole download may take (default 1 hour), however slowly the server
        sends: a read blocked past this time is ended.

    Returns
    -------
    Path
        ``fpath``.

    Raises
    ------
    DownloadError
        On an HTTP error status, timeout, connection error, truncated body or checksum mismatch,
        naming the URL. ``DownloadLimitError`` (also a ``LimitError``) past ``max_bytes`` or
        ``max_seconds``.
    """
    check_positive("timeout", timeout, integer=False)
    check_positive("max_bytes", max_bytes)
    check_positive("max_seconds", max_seconds, integer=False)
    sha256 = check_sha256(sha256)
    fpath = Path(fpath)
    fpath.parent.mkdir(parents=True, exist_ok=True)
    part = fpath.with_name(fpath.name + ".part")
    part.unlink(missing_ok=True)  # left by a process that was killed
    ours = None
    try:
        try:
            f = open(part, "xb")
        except FileExistsError as err:
            raise DownloadError(
                f"{part} appeared while starting; is {url} downloading twice?"
            ) from err
        with f:
            ours = os.fstat(f.fileno())
            digest = fetch(url, f, timeout, max_bytes, max_seconds, desc=fpath.name)
            f.flush()
            os.fsync(f.fileno())
        if sha256 is not None and digest != sha256:
            raise DownloadError(
                f"Download of {url} has SHA-256 {digest}, not the expected {sha256}"
            )
        if not os.path.samestat(ours, os.stat(part)):
            raise DownloadError(f"{part} was replaced while {url} downloaded; download it again")
        os.replace(part, fpath)
    finally:
        try:
            if ours is not None and os.path.samestat(ours, os.stat(part)):
                part.unlink()
        except FileNotFoundError:
            pass
    return fpath


def fetch(url: str, f, timeout: float, max_bytes: int, max_seconds: float, desc: str) -> str:
    """Stream the body of ``GET url`` into the open binary file ``f``; return its SHA-256.

    Raises DownloadError (see ``download``) and DownloadLimitError past ``max_bytes`` bytes or
    ``max_seconds`` seconds.
    """
    digest = hashlib.sha256()
    written = 0
    total = None
    watchdog = Watchdog(max_seconds)
    too_slow = DownloadLimitError(
        f"Download of {url} did not finish within max_seconds={max_seconds:g} s; "
        "pass a larger max_seconds to allow more time."
    )
    try:
        with (
            watched_session(watchdog) as session,
            session.get(
                url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"}
            ) as response,
        ):
            if not response.ok:
                raise DownloadError(
                    f"Download of {url} failed: HTTP {response.status_code} {response.reason}"
                )
            length = response.headers.get("Content-Length", "")
            if length.isascii() and length.isdigit():  # else: none, or malformed (ignored)
                if len(length) > 30 or int(length) > max_bytes:
                    raise too_big(url, f"Content-Length is {length[:40]}", max_bytes)
                total = int(length)
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc) as bar:
                for chunk in response.iter_content(chunk_size=CHUNK_SIZE):
                    if watchdog.expired():
                        raise too_slow
                    written += len(chunk)
                    if written > max_bytes:
                        raise too_big(url, f"more than {max_bytes} bytes arrived", max_bytes)
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            received = response.raw.tell()  # bytes on the wire, before any Content-Encoding
    except DownloadError:
        raise
    except (requests.RequestException, HTTPError, HTTPException, ValueError) as err:
        # ValueError: e.g. a redirect to a malformed URL, which requests does not wrap
        if watchdog.expired():
            raise too_slow from err
        if isinstance(err, requests.Timeout):
            raise DownloadError(f"Download of {url} timed out after {timeout} s") from err
        raise DownloadError(f"Download of {url} failed: {err}") from err
    finally:
        watchdog.close()
    if watchdog.fired:  # a shut-down socket can look like a body that ended normally
        raise too_slow
    if total is not None and received != total:
        raise DownloadError(f"Download of {url} is incomplete: got {received} of {total} bytes")
    return digest.hexdigest()


def too_big(url: str, detail: str, max_bytes: int) -> DownloadLimitError:
    """The error for a download larger than ``max_bytes``; ``detail`` says how that was seen."""
    return DownloadLimitError(
        f"Download of {url} is larger than max_bytes={max_bytes} ({size_text(max_bytes)}): "
        f"{detail}; pass a larger max_bytes to allow it."
    )


class Watchdog:
    """Ends the network reads of one download once ``seconds`` have passed.

    Sockets given to ``watch`` are shut down when the time is up, which makes a read blocked on
    them return at once: a server that trickles its headers or body a byte at a time cannot hold
    a download past its time (a per-read timeout alone cannot stop that). A duplicate of each
    socket is kept because TLS takes over the original's file descriptor.
    """

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.fired = False  # True once the sockets have been shut down
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(min(seconds, threading.TIMEOUT_MAX), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.deadline

    def watch(self, sock: socket.socket) -> None:
        duplicate = sock.dup()
        with self._lock:
            self._sockets.append(duplicate)
            fired = self.fired
        if fired:
            shut_down(duplicate)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            shut_down(sock)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


def shut_down(sock: socket.socket) -> None:
    """Shut ``sock`` down both ways (ending reads blocked on it), ignoring a closed socket."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# Connections, pools and an adapter that hand every socket they open to the Watchdog of the
# download running in this thread (requests opens connections in the calling thread).
_current = threading.local()


class _WatchedConnection:
    def _new_conn(self):
        sock = super()._new_conn()
        watchdog = getattr(_current, "watchdog", None)
        if watchdog is not None:
            watchdog.watch(sock)
        return sock


class _WatchedHTTPConnection(_WatchedConnection, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


WATCHED_POOLS = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = WATCHED_POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS: only checked between reads
            manager.pool_classes_by_scheme = WATCHED_POOLS
        return manager


@contextlib.contextmanager
def watched_session(watchdog: Watchdog) -> Iterator[requests.Session]:
    """A requests Session whose sockets ``watchdog`` watches, following at most 10 redirects."""
    adapter = _WatchedAdapter()
    with requests.Session() as session:
        session.max_redirects = MAX_REDIRECTS
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        _current.watchdog = watchdog
        try:
            yield session
        finally:
            _current.watchdog = None


def part_path(path: Path) -> Path:
    """A unique hidden sibling of ``path`` to build it in, e.g. ``.x.1a2b3c4d.part``."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")


def unsafe_member_reason(name: str) -> str | None:
    """Why the zip member ``name`` could write outside the extraction folder, or None if safe."""
    if name.startswith(("/", "\\")):
        return "absolute path"
    if re.match(r"^[A-Za-z]:", name):
        return "drive letter"
    if ".." in re.split(r"[/\\]", name):
        return "'..' component"
    return None


def member_type_reason(info: zipfile.ZipInfo) -> str | None:
    """Why the zip member ``info`` is not extracted as a plain file or folder, or None."""
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return "a symbolic link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "a special file (device, pipe or socket)"
    return None


def check_zip_members(zf: zipfile.ZipFile) -> None:
    """Raise ValueError naming the first member of ``zf`` that would land outside its folder or
    is not a plain file or folder (links, devices)."""
    for info in zf.infolist():
        reason = unsafe_member_reason(info.filename)
        if reason:
            raise ValueError(
                f"Refusing to extract {zf.filename}: member {info.filename!r} has an unsafe path "
                f"({reason})"
            )
        reason = member_type_reason(info)
        if reason:
            raise ValueError(
                f"Refusing to extract {zf.filename}: member {info.filename!r} is {reason}"
            )


def count_zip_entries(zip_path: Path, stop_after: int) -> int | None:
    """Entries in the central directory of ``zip_path``, counting no further than
    ``stop_after + 1``; None when no end record is found (``zipfile`` will then complain).

    Walks the directory's fixed-size headers without keeping them, so an archive with millions
    of entries is refused before ``zipfile`` builds an object for each; the entry count that the
    end record states is not trusted.
    """
    with open(zip_path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        tail_start = max(0, size - 22 - 0xFFFF)
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        fields = struct.unpack("<4s4H2LH", tail[at : at + 22])
        cd_size, end_at = fields[5], tail_start + at
        if fields[4] == 0xFFFF or cd_size == 0xFFFFFFFF:  # ZIP64: sizes in the ZIP64 end record
            if end_at < 20 + 56:
                return None
            f.seek(end_at - 20 - 56)
            record = f.read(56)
            if record[:4] != b"PK\x06\x06":
                return None
            cd_size, end_at = struct.unpack("<Q", record[40:48])[0], end_at - 20 - 56
        cd_start = end_at - cd_size
        if cd_start < 0:
            return None
        f.seek(cd_start)
        count = position = 0
        while position < cd_size and count <= stop_after:
            header = f.read(46)
            if len(header) < 46 or header[:4] != b"PK\x01\x02":
                break
            extra = sum(struct.unpack("<3H", header[28:34]))
            f.seek(extra, os.SEEK_CUR)
            position += 46 + extra
            count += 1
    return count


def copy_at_most(src, dst, budget: int) -> int | None:
    """Copy the binary stream ``src`` into ``dst`` in chunks; return the bytes copied, or None
    (having copied at most ``budget`` bytes) as soon as ``src`` turns out to hold more."""
    copied = 0
    while chunk := src.read(CHUNK_SIZE):
        copied += len(chunk)
        if copied > budget:
            return None
        dst.write(chunk)
    return copied


def extract_zip(
    zip_path: str | Path,
    dest: str | Path,
    *,
    max_members: int = MAX_MEMBERS,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
) -> Path:
    """Extract ``zip_path`` into ``dest`` and return the folder ``dest/<zip stem>``.

    Every member is checked before anything is written: absolute paths, drive letters, ``..``,
    symbolic links and special files are refused with ValueError. Members that are not all under
    a top-level ``<zip stem>/`` folder are put into one. The archive is unpacked into a temporary
    folder inside ``dest`` and moved into place at the end, so an interrupted or refused
    extraction leaves no half-filled folder.

    Parameters
    ----------
    zip_path : str or Path
        The archive.
    dest : str or Path
        Folder to extract into.
    max_members : int
        Most entries (files and folders) the archive may have; default 100,000.
    max_unpacked_bytes : int
        Most bytes its files may unpack to; default 20 GiB. Checked against the sizes the
        archive declares before anything is written, and again while unpacking, counting the
        bytes actually written.

    Raises
    ------
    FileExistsError
        ``dest/<zip stem>`` exists.
    ValueError
        A member with an unsafe path or type (nothing is extracted).
    ArchiveLimitError
        Past ``max_members`` or ``max_unpacked_bytes`` (a ValueError; nothing is left behind).
    zipfile.BadZipFile
        The archive is damaged (nothing is left behind).
    """
    check_positive("max_members", max_members)
    check_positive("max_unpacked_bytes", max_unpacked_bytes)
    zip_path, dest = Path(zip_path), Path(dest)
    target = dest / zip_path.stem
    if target.exists():
        raise FileExistsError(f"{target} already exists; not extracting {zip_path} over it")
    too_many = ArchiveLimitError(
        f"Refusing to extract {zip_path}: it has more than max_members={max_members} entries; "
        "pass a larger max_members to allow it."
    )
    entries = count_zip_entries(zip_path, stop_after=max_members)
    if entries is not None and entries > max_members:
        raise too_many
    with zipfile.ZipFile(zip_path) as zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise too_many
        check_zip_members(zf)
        declared = sum(info.file_size for info in infos)
        if declared > max_unpacked_bytes:
            raise ArchiveLimitError(
                f"Refusing to extract {zip_path}: its members unpack to {declared} bytes "
                f"({size_text(declared)}), more than max_unpacked_bytes={max_unpacked_bytes} "
                f"({size_text(max_unpacked_bytes)}); pass a larger max_unpacked_bytes to allow it."
            )
        names = [info.filename.replace("\\", "/") for info in infos]
        has_top_folder = bool(names) and all(n.startswith(f"{zip_path.stem}/") for n in names)
        tmp_dir = part_path(target)
        tmp_dir.mkdir(parents=True)
        try:
            budget = max_unpacked_bytes
            for info, name in zip(infos, names):
                written = extract_member(zf, info, name, tmp_dir, budget)
                if written is None:
                    raise ArchiveLimitError(
                        f"Refusing to extract {zip_path}: its members unpack to more than "
                        f"max_unpacked_bytes={max_unpacked_bytes} "
                        f"({size_text(max_unpacked_bytes)}), more than they declare; "
                        "pass a larger max_unpacked_bytes to allow it."
                    )
                budget -= written
            os.replace(tmp_dir / zip_path.stem if has_top_folder else tmp_dir, target)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def extract_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, root: Path, budget: int
) -> int | None:
    """Write the checked member ``info`` of ``zf``, named ``name`` with ``/`` separators, under
    ``root``; return the bytes written, or None as soon as it holds more than ``budget``."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    path = root.joinpath(*parts)
    # Last line of defence (lexical: nothing extracted is a link), e.g. for "a/C:b" on Windows.
    if ".." in parts or not path.is_relative_to(root):
        raise ValueError(f"Refusing to extract {zf.filename}: member {info.filename!r} escapes")
    try:
        if info.is_dir() or not parts:
            path.mkdir(parents=True, exist_ok=True)
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(path, "wb") as dst:
            return copy_at_most(src, dst, budget)
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as err:
        raise ValueError(
            f"Refusing to extract {zf.filename}: member {info.filename!r} clashes with another "
            "member (a file and a folder of the same name)"
        ) from err


def unzip_url(
    url: str,
    fpath: str | Path | None = None,
    dest: str | Path | None = None,
    exist_ok: bool = False,
    timeout: float = 30.0,
    *,
    sha256: str | None = None,
    max_bytes: int = MAX_BYTES,
    max_seconds: float = MAX_SECONDS,
    max_members: int = MAX_MEMBERS,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
) -> Path:
    """Download the zip archive at ``url`` and extract it; return the extracted folder.

    Parameters
    ----------
    url : str
        HTTP(S) address of a ``.zip`` file.
    fpath : str or Path, optional
        Where to save the archive; default ``data_path() / <file name from url>`` (a safe base
        name, see ``file_name_from_url``). An archive already there (a finished earlier download)
        is reused, if it has the ``sha256`` given; otherwise it is downloaded again.
    dest : str or Path, optional
        Folder to extract into; default ``data_path()``.
    exist_ok : bool
        If ``dest/<zip stem>`` already exists: return it without downloading when True, raise
        FileExistsError when False.
    timeout : float
        Seconds to wait for the connection and for each read.
    sha256 : str, optional
        Expected SHA-256 of the archive, 64 hexadecimal digits.
    max_bytes, max_seconds : int, float
        Limits of the download (default 10 GiB, 1 hour); see ``download``.
    max_members, max_unpacked_bytes : int
        Limits of the archive (default 100,000 entries, 20 GiB); see ``extract_zip``.

    Returns
    -------
    Path
        ``dest/<zip stem>``, e.g. ``data/fridgeObjects``.

    Raises
    ------
    FileExistsError
        The target folder exists and ``exist_ok`` is False.
    DownloadError
        HTTP error status, timeout, broken connection, checksum mismatch, or a downloaded file
        that is not a valid zip archive (it is removed, so the next call downloads it again).
    LimitError
        A limit above is exceeded (``DownloadLimitError`` or ``ArchiveLimitError``); the
        message names the parameter to raise.
    ValueError
        No safe file name in ``url``, or an archive member has an unsafe path or type (nothing
        is extracted).
    """
    check_positive("timeout", timeout, integer=False)
    check_positive("max_bytes", max_bytes)
    check_positive("max_seconds", max_seconds, integer=False)
    check_positive("max_members", max_members)
    check_positive("max_unpacked_bytes", max_unpacked_bytes)
    sha256 = check_sha256(sha256)
    fpath = Path(fpath) if fpath is not None else data_path() / file_name_from_url(url)
    dest = Path(dest) if dest is not None else data_path()
    target = dest / fpath.stem
    if os.path.abspath(target) == os.path.abspath(fpath):
        raise ValueError(
            f"The archive {fpath} and the folder it unpacks to are the same path; "
            "pass fpath with a '.zip' suffix."
        )
    if target.exists():
        if exist_ok:
            return target
        raise FileExistsError(
            f"{target} already exists; pass exist_ok=True to use it as it is, "
            f"or delete it to download {url} again."
        )
    downloaded = not fpath.is_file() or (sha256 is not None and file_sha256(fpath) != sha256)
    if downloaded:
        download(url, fpath, timeout, sha256=sha256, max_bytes=max_bytes, max_seconds=max_seconds)
    try:
        return extract_zip(
            fpath, dest, max_members=max_members, max_unpacked_bytes=max_unpacked_bytes
        )
    except zipfile.BadZipFile as err:
        if not downloaded:
            raise zipfile.BadZipFile(
                f"{fpath}, kept from an earlier download of {url}, is not a valid zip archive "
                f"({err}); delete it to download it again."
            ) from err
        fpath.unlink(missing_ok=True)
        raise DownloadError(
            f"Download of {url} is not a valid zip archive ({err}): cut short, or not a zip "
            f"file. Removed {fpath}, so the next call downloads it again."
        ) from err


def unzip_urls(
    urls: Iterable[str],
    dest: str | Path | None = None,
    exist_ok: bool = False,
    *,
    timeout: float = 30.0,
    max_bytes: int = MAX_BYTES,
    max_seconds: float = MAX_SECONDS,
    max_members: int = MAX_MEMBERS,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
) -> list[Path]:
    """Download and extract several zip archives into ``dest`` (see ``unzip_url``; the limits
    apply to each archive).

    Returns
    -------
    list of Path
        The extracted folders, in the order of ``urls``.
    """
    limits = dict(
        max_bytes=max_bytes,
        max_seconds=max_seconds,
        max_members=max_members,
        max_unpacked_bytes=max_unpacked_bytes,
    )
    return [unzip_url(url, dest=dest, exist_ok=exist_ok, timeout=timeout, **limits) for url in urls]


def get_files_in_directory(
    directory: str | Path, suffixes: str | Iterable[str] | None = None
) -> list[Path]:
    """Files directly inside ``directory`` (not in subfolders), sorted by name.

    Parameters
    ----------
    directory : str or Path
        Folder to list.
    suffixes : str or iterable of str, optional
        Keep only files with one of these suffixes, any case, with or without the dot
        (``".jpg"``, ``"PNG"``). Default: all files.

    Returns
    -------
    list of Path
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a folder")
    files = sorted(p for p in directory.iterdir() if p.is_file())
    if suffixes is None:
        return files
    if isinstance(suffixes, str):
        suffixes = [suffixes]
    wanted = {s.lower() if s.startswith(".") else f".{s.lower()}" for s in suffixes}
    return [p for p in files if p.suffix.lower() in wanted]
