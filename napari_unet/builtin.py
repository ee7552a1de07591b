"""Built-in models: ordinary model folders shipped inside the package, named ``builtin:NAME``.

Wherever a model folder is accepted (:func:`~napari_unet.store.load_model`,
:func:`~napari_unet.safety.check_model_folder`, ``napari-unet predict MODEL``,
``train --init MODEL``, the widgets), ``builtin:NAME`` names the folder
``napari_unet/_builtin/NAME/``.  The folders are read-only package data: every
napari-unet writer (:func:`~napari_unet.store.save_model`, checkpoints,
:func:`~napari_unet.store.save_postprocess`, training's ``out``, the atomic writes
underneath) refuses a path inside them (:func:`refuse_write`).

``resources/train_builtin.py`` in the repository (re)creates a built-in model.
No torch here: the command line resolves names before it imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

PREFIX = "builtin:"
BUILTIN_ROOT = Path(__file__).resolve().parent / "_builtin"

BUILTIN_MODELS: dict[str, str] = {
    "nuclei": "2D grey fluorescence nuclei, instances (trained on the DSB2018 nuclei)",
}
"""Name -> one-line description of every built-in model."""


class UnknownBuiltinError(ValueError):
    """A ``builtin:`` name that is not one of :data:`BUILTIN_MODELS`."""


def available() -> str:
    """The built-in model references, comma separated (for messages)."""
    return ", ".join(PREFIX + name for name in BUILTIN_MODELS)


def is_builtin(ref: object) -> bool:
    """Whether ``ref`` (a string or path) is a ``builtin:NAME`` reference.

    Parameters
    ----------
    ref
        Anything a model may be given as.

    Returns
    -------
    bool
        True for strings (and paths) that start with ``builtin:``, known name or not.
    """
    if not isinstance(ref, str | os.PathLike):
        return False
    text = os.fspath(ref)
    return isinstance(text, str) and text.startswith(PREFIX)


def builtin_name(ref: str | os.PathLike[str]) -> str:
    """The NAME of a ``builtin:NAME`` reference, checked against :data:`BUILTIN_MODELS`.

    Raises
    ------
    UnknownBuiltinError
        For a name that is not a built-in model; the message lists the available ones.
    """
    text = os.fspath(ref)
    name = text[len(PREFIX) :] if text.startswith(PREFIX) else text
    if name not in BUILTIN_MODELS:
        raise UnknownBuiltinError(
            f"unknown built-in model {PREFIX}{name!s}; available: {available()}"
        )
    return name


def builtin_path(name: str) -> Path:
    """The folder of the built-in model ``name`` (``"nuclei"`` or ``"builtin:nuclei"``).

    Parameters
    ----------
    name
        A built-in model's name, with or without the ``builtin:`` prefix.

    Returns
    -------
    Path
        ``napari_unet/_builtin/NAME`` inside the installed package.

    Raises
    ------
    UnknownBuiltinError
        For an unknown name (the message lists the available ones).
    ValueError
        When the package was installed without the model's files.
    """
    name = builtin_name(name)
    folder = BUILTIN_ROOT / name
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"the built-in model {PREFIX}{name} is missing from this installation "
            f"({folder} holds no config.json); reinstall napari-unet"
        )
    return folder


def resolve_model_ref(ref: str | os.PathLike[str]) -> Path:
    """A model folder from what the user gave: ``builtin:NAME`` or a folder path."""
    return builtin_path(os.fspath(ref)) if is_builtin(ref) else Path(ref)


def builtin_containing(path: str | os.PathLike[str]) -> str | None:
    """``builtin:NAME`` when ``path`` is (inside) a built-in model's folder, else None.

    ``builtin:NAME`` references themselves count; paths are compared with every
    symbolic link resolved, so a link to the package data is caught too.  A path
    inside the built-in root but outside any model folder gives ``"builtin:"``.
    """
    if is_builtin(path):
        return os.fspath(path)
    target = Path(os.path.realpath(path))
    if target != BUILTIN_ROOT and not target.is_relative_to(BUILTIN_ROOT):
        return None
    parts = target.relative_to(BUILTIN_ROOT).parts
    return PREFIX + (parts[0] if parts else "")


class ReadOnlyModelError(ValueError):
    """A write into a built-in model's folder (read-only package data)."""


def refuse_write(path: str | os.PathLike[str], what: str = "write to") -> None:
    """Raise :class:`ReadOnlyModelError` when ``path`` lies in a built-in model's folder.

    Parameters
    ----------
    path
        Where something is about to be written (a model folder or a file in one).
    what
        What was about to happen, for the message: ``"save a model to"``, ...

    Raises
    ------
    ReadOnlyModelError
        Naming the built-in model and the path, and saying to choose another folder.
    """
    ref = builtin_containing(path)
    if ref is None:
        return
    where = "" if is_builtin(path) else f" ({path})"
    name = ref if ref != PREFIX else "the built-in models' folder"
    init = ref if ref != PREFIX else "builtin:NAME"
    raise ReadOnlyModelError(
        f"cannot {what} {name}{where}: built-in models are read-only package data; "
        f"choose another output folder (to fine-tune it: train --init {init} --out NEW_FOLDER)"
    )
