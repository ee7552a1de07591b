"""Reading back the bioimage.io packages napari-unet exported: no torch, nothing unpickled.

A package (``.zip``) carries the model folder's ``config.json`` and
``weights.safetensors`` as attachments (:mod:`napari_unet.bioimageio` writes them);
:func:`package_folder` extracts those two once, into a folder named by the package's
sha256, which then loads like any model folder (read-only, as a built-in one).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

PACKAGE_FILES = ("config.json", "weights.safetensors")  # what a package is loaded back from
PACKAGES_ROOT = Path(tempfile.gettempdir()) / "napari-unet-packages"  # extracted, by sha256


def extracted_package(folder: str | Path) -> bool:
    """``folder`` is (inside) a package's extraction: read-only, like a built-in model."""
    target = Path(folder).resolve()
    return target.is_relative_to(PACKAGES_ROOT.resolve())


def is_package(path: str | Path) -> bool:
    """``path`` names a ``.zip`` file (a bioimage.io package, maybe)."""
    p = Path(path)
    return p.suffix.lower() == ".zip" and p.is_file()


def package_folder(path: str | Path) -> Path:
    """The napari-unet model folder inside a package that napari-unet exported.

    Only the attachments ``config.json`` and ``weights.safetensors`` are read (never
    the ``.pt`` weights: nothing is unpickled); they are extracted once into a
    folder named by the package's sha256 under the temporary folder.

    Raises
    ------
    ValueError
        When ``path`` is not a zip file, or a package that napari-unet did not export.
    """
    import hashlib
    import os
    import zipfile

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a zip file (a bioimage.io package is a .zip)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    folder = PACKAGES_ROOT / digest
    if all((folder / f).is_file() for f in PACKAGE_FILES):
        return folder
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        missing = [f for f in PACKAGE_FILES if f not in names]
        if missing or "rdf.yaml" not in names:
            raise ValueError(
                f"{path}: not a bioimage.io package exported by napari-unet (it has no "
                f"{' and '.join(missing or ['rdf.yaml'])}); napari-unet loads its own packages "
                "only, from their config.json and weights.safetensors"
            )
        folder.parent.mkdir(parents=True, exist_ok=True)
        part = Path(tempfile.mkdtemp(prefix=f"{digest}.", dir=folder.parent))
        for f in PACKAGE_FILES:
            (part / f).write_bytes(archive.read(f))
    try:
        os.replace(part, folder)
    except OSError:  # another process extracted it first
        shutil.rmtree(part, ignore_errors=True)
    return folder
