"""napari-unet: train U-Nets on your own microscopy labels, in napari or headless.

Importing this package is light (no torch, no Qt); the public functions import
the engine on first use::

    import napari_unet as nu
    model = nu.train(images, labels, labels_kind="instances", time_budget=60)
    labels = nu.predict(model, image)
    model = nu.load_model("MODEL_DIR")       # or "builtin:nuclei"
    model = nu.train(images, labels, labels_kind="sparse", init="builtin:nuclei")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "load_model",
    "save_model",
    "predict",
    "predict_proba",
    "train",
    "train_iter",
]

if TYPE_CHECKING:  # pragma: no cover
    from .store import Model


def load_model(path: Any, device: Any = "cpu") -> Model:
    """Load a model folder (safetensors + JSON; never unpickles anything), or a built-in
    model by name: ``load_model("builtin:nuclei")``."""
    from .store import load_model as _load

    return _load(path, device=device)


def save_model(model: Model, path: Any, **kwargs: Any) -> Any:
    """Write ``model`` to a model folder, atomically file by file; ``weights_dtype="float16"``
    halves the file (see :func:`napari_unet.store.save_model`)."""
    from .store import save_model as _save

    return _save(model, path, **kwargs)


def predict(model: Model, image: Any, **kwargs: Any) -> Any:
    """Segment an image; see :func:`napari_unet.inference.predict`."""
    from .inference import predict as _predict

    return _predict(model, image, **kwargs)


def predict_proba(model: Model, image: Any, **kwargs: Any) -> Any:
    """Class probabilities; see :func:`napari_unet.inference.predict_proba`."""
    from .inference import predict_proba as _proba

    return _proba(model, image, **kwargs)


def train(images: Any, labels: Any, **kwargs: Any) -> Model:
    """Train a U-Net (blocking); see :func:`napari_unet.training.train_iter`."""
    from .training import train as _train

    return _train(images, labels, **kwargs)


def train_iter(images: Any, labels: Any, **kwargs: Any) -> Any:
    """Training as a generator of progress events; returns the model at the end."""
    from .training import train_iter as _train_iter

    return _train_iter(images, labels, **kwargs)
