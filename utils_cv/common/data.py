"""Where datasets live, downloading and unpacking zip archives, listing files."""

from __future__ import annotations

import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import requests
from tqdm.auto import tqdm

DATA_DIR_ENV = "UTILS_CV_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]
CHUNK_SIZE = 1 << 16  # bytes read from the network at a time


class DownloadError(OSError):
    """A download failed: HTTP error status, timeout, lost connection or truncated body."""


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
    """Last component of the URL's path, e.g. ``fridgeObjects.zip``; ValueError if none."""
    name = unquote(PurePosixPath(urlparse(url).path).name)
    if not name:
        raise ValueError(f"Cannot tell a file name from URL {url!r}; pass fpath.")
    return name


def download(url: str, fpath: str | Path, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``fpath`` with a progress bar, all or nothing.

    The bytes go to a temporary file next to ``fpath`` that is renamed only once the whole body
    has arrived, so an error or interruption leaves no partial ``fpath`` behind.

    Parameters
    ----------
    url : str
        HTTP(S) address.
    fpath : str or Path
        Destination file; its folder is created if missing, an existing file is replaced.
    timeout : float
        Seconds to wait for the connection and for each read.

    Returns
    -------
    Path
        ``fpath``.

    Raises
    ------
    DownloadError
        On an HTTP error status, timeout, connection error or truncated body, naming the URL.
    """
    fpath = Path(fpath)
    fpath.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = part_path(fpath)
    try:
        with open(tmp_path, "xb") as f:
            write_response(url, f, timeout)
        os.replace(tmp_path, fpath)
    finally:
        tmp_path.unlink(missing_ok=True)
    return fpath


def part_path(path: Path) -> Path:
    """A unique hidden sibling of ``path`` to build it in, e.g. ``.x.zip.1a2b3c4d.part``."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")


def write_response(url: str, f, timeout: float) -> int:
    """Stream the body of ``GET url`` into the open binary file ``f``; return bytes written."""
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            if not response.ok:
                raise DownloadError(
                    f"Download of {url} failed: HTTP {response.status_code} {response.reason}"
                )
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            written = 0
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=file_name_from_url(url),
            ) as bar:
                for chunk in response.iter_content(chunk_size=CHUNK_SIZE):
                    f.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
    except requests.Timeout as err:
        raise DownloadError(f"Download of {url} timed out after {timeout} s") from err
    except requests.RequestException as err:
        raise DownloadError(f"Download of {url} failed: {err}") from err
    if total is not None and written != total:
        raise DownloadError(f"Download of {url} is incomplete: got {written} of {total} bytes")
    return written


def unsafe_member_reason(name: str) -> str | None:
    """Why the zip member ``name`` could write outside the extraction folder, or None if safe."""
    if name.startswith(("/", "\\")):
        return "absolute path"
    if re.match(r"^[A-Za-z]:", name):
        return "drive letter"
    if ".." in re.split(r"[/\\]", name):
        return "'..' component"
    return None


def check_zip_members(zf: zipfile.ZipFile) -> None:
    """Raise ValueError naming the first member of ``zf`` that would land outside its folder."""
    for name in zf.namelist():
        reason = unsafe_member_reason(name)
        if reason:
            raise ValueError(
                f"Refusing to extract {zf.filename}: member {name!r} has an unsafe path ({reason})"
            )


def extract_zip(zip_path: str | Path, dest: str | Path) -> Path:
    """Extract ``zip_path`` into ``dest`` and return the folder ``dest/<zip stem>``.

    Every member is checked before anything is written (absolute paths, drive letters and ``..``
    are refused with ValueError). Members that are not all under a top-level ``<zip stem>/``
    folder are put into one. The archive is unpacked into a temporary folder inside ``dest`` and
    moved into place at the end, so an interrupted extraction leaves no half-filled folder.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    target = dest / zip_path.stem
    if target.exists():
        raise FileExistsError(f"{target} already exists; not extracting {zip_path} over it")
    with zipfile.ZipFile(zip_path) as zf:
        check_zip_members(zf)
        names = zf.namelist()
        has_top_folder = bool(names) and all(
            n.replace("\\", "/").startswith(f"{zip_path.stem}/") for n in names
        )
        tmp_dir = part_path(target)
        tmp_dir.mkdir(parents=True)
        try:
            zf.extractall(tmp_dir)
            os.replace(tmp_dir / zip_path.stem if has_top_folder else tmp_dir, target)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def unzip_url(
    url: str,
    fpath: str | Path | None = None,
    dest: str | Path | None = None,
    exist_ok: bool = False,
    timeout: float = 30.0,
) -> Path:
    """Download the zip archive at ``url`` and extract it; return the extracted folder.

    Parameters
    ----------
    url : str
        HTTP(S) address of a ``.zip`` file.
    fpath : str or Path, optional
        Where to save the archive; default ``data_path() / <file name from url>``. An archive
        already there (a finished earlier download) is reused.
    dest : str or Path, optional
        Folder to extract into; default ``data_path()``.
    exist_ok : bool
        If ``dest/<zip stem>`` already exists: return it without downloading when True, raise
        FileExistsError when False.
    timeout : float
        Seconds to wait for the connection and for each read.

    Returns
    -------
    Path
        ``dest/<zip stem>``, e.g. ``data/fridgeObjects``.

    Raises
    ------
    FileExistsError
        The target folder exists and ``exist_ok`` is False.
    DownloadError
        HTTP error status, timeout or broken connection (no partial file is left).
    ValueError
        An archive member has an absolute path, a drive letter or ``..`` (nothing is extracted).
    """
    fpath = Path(fpath) if fpath is not None else data_path() / file_name_from_url(url)
    dest = Path(dest) if dest is not None else data_path()
    target = dest / fpath.stem
    if target.exists():
        if exist_ok:
            return target
        raise FileExistsError(
            f"{target} already exists; pass exist_ok=True to use it as it is, "
            f"or delete it to download {url} again."
        )
    if not fpath.is_file():
        download(url, fpath, timeout=timeout)
    return extract_zip(fpath, dest)


def unzip_urls(
    urls: Iterable[str], dest: str | Path | None = None, exist_ok: bool = False
) -> list[Path]:
    """Download and extract several zip archives into ``dest`` (see ``unzip_url``).

    Returns
    -------
    list of Path
        The extracted folders, in the order of ``urls``.
    """
    return [unzip_url(url, dest=dest, exist_ok=exist_ok) for url in urls]


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
