"""Export a napari-unet model as a bioimage.io model package (spec 0.5) — FIRST VERSION.

Written with ``bioimageio.spec`` (no hand-written YAML).  The package holds the
weights as ``pytorch_state_dict`` (architecture: ``_bioimageio/unet.py``, which
imports only torch and ends in a softmax), ``torchscript`` (traced) and ``onnx``
(legacy exporter, opset 17); the model's percentile normalisation as the
``scale_range`` pre-processing; class probabilities as the output (channel names
= class names, a halo on the spatial axes); test tensors from ``image``; a 2:1
cover (image | predicted classes); a README with a "# Validation" section from
``training.json``; and napari-unet's ``config.json`` and ``weights.safetensors``
as attachments.

Status (issue 14, session 5): "same"-padding models (2D and 3D, any number of
channels); ``valid`` models and the widgets' Export button are not written yet.
``bioimageio.core`` is only needed to test a package (the testing extra).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

UNET_PAPER_DOI = "10.1007/978-3-319-24574-4_28"  # Ronneberger, Fischer & Brox, MICCAI 2015
DEFAULT_LICENSE = "CC-BY-4.0"
HALO_PER_LEVEL = 4
NAME_PATTERN = re.compile(r"^[\w+\- ()]{5,128}$")


def _identifier(text: str, fallback: str) -> str:
    """A bioimage.io identifier (letters, digits, underscores) made from ``text``."""
    ident = re.sub(r"\W+", "_", text).strip("_")
    return ident if ident and not ident[0].isdigit() else fallback


def export_bioimageio(
    model: Any,
    path: str | Path,
    image: np.ndarray,
    *,
    name: str | None = None,
    authors: Sequence[str] = ("napari-unet user",),
    license: str = DEFAULT_LICENSE,
    description: str | None = None,
    halo: int | None = None,
) -> Path:
    """Write ``model`` (a :class:`~napari_unet.store.Model` with a folder) to the package
    ``path`` (a new ``.zip``); ``image``: a 2D grey image for the test tensors and cover."""
    import torch
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    from ._bioimageio.unet import NapariUNet

    path = Path(path)
    if path.exists():
        raise ValueError(f"--out {path} already exists: choose a new file name")
    spec = model.config
    mcfg = spec.model
    if mcfg.padding != "same":
        raise ValueError(
            "export writes 'same'-padding models for now (the default); this model has "
            f"padding {mcfg.padding!r}"
        )
    if model.path is None:
        raise ValueError("the model has no folder: save it first (its files go into the package)")
    name = name or f"napari-unet {Path(model.path).name}"
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"name {name!r}: 5-128 letters, digits, spaces and _+-() (bioimage.io's rule)"
        )
    dims, chans = mcfg.spatial_dims, mcfg.in_channels
    image = np.asarray(image, np.float32)
    want = dims + (chans > 1)
    if image.ndim != want:
        layout = ("(c, " if chans > 1 else "(") + ("z, y, x)" if dims == 3 else "y, x)")
        raise ValueError(f"the test image must be {layout} for this model, got shape {image.shape}")
    if chans == 1:
        image = image[None]
    if image.shape[0] != chans:
        raise ValueError(f"the test image has {image.shape[0]} channels, the model {chans}")
    step = 2**mcfg.depth
    halo = halo or default_halo(mcfg)
    smallest = step * -(-(2 * halo + 1) // step)  # an input must be larger than 2 halos
    if min(image.shape[1:]) < smallest:
        raise ValueError(
            f"the test image must be at least {smallest} pixels along each axis (twice the "
            f"halo of {halo} px and a multiple of {step}), got shape {image.shape[1:]}"
        )
    crop = tuple(s // step * step for s in image.shape[1:])
    image = image[(slice(None), *(slice(0, c) for c in crop))]

    fields = {f: getattr(mcfg, f) for f in mcfg.__dataclass_fields__}
    network = NapariUNet(**fields)
    network.load_state_dict(model.network.state_dict())
    network.eval()
    norm = spec.normalization
    scaled = np.stack([_scaled(c, norm) for c in image])  # per channel, as scale_range does
    example = torch.from_numpy(scaled[None].astype(np.float32))
    with torch.no_grad():
        probs = network(example).numpy()

    work = Path(tempfile.mkdtemp(prefix="napari-unet-export-"))
    try:
        np.save(work / "test_input.npy", image[None])
        np.save(work / "test_output.npy", probs)
        torch.save(network.state_dict(), work / "weights.pt")  # the format asks for it
        traced = torch.jit.trace(network, example)
        traced.save(str(work / "weights_torchscript.pt"))
        space = "zyx"[3 - dims :]
        axes = {0: "b", **{2 + i: a for i, a in enumerate(space)}}
        with warnings.catch_warnings():  # the legacy exporter (the new one needs onnxscript)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                network,
                (example,),
                str(work / "weights.onnx"),
                opset_version=17,
                input_names=["raw"],
                output_names=["probabilities"],
                dynamic_axes={"raw": axes, "probabilities": axes},
                dynamo=False,
            )
        _check_onnx(work / "weights.onnx", scaled[None].astype(np.float32), probs)
        shutil.copy(Path(__file__).parent / "_bioimageio" / "unet.py", work / "unet.py")
        for f in ("config.json", "weights.safetensors"):
            shutil.copy(Path(model.path) / f, work / f)
        _cover(image[0], probs, work / "cover.png")
        (work / "README.md").write_text(_readme(model, name))

        class_names = [_identifier(c, f"class{i}") for i, c in enumerate(spec.labels.class_names)]
        torch_version = bio.Version(torch.__version__.split("+")[0])
        inputs = bio.InputTensorDescr(
            id=bio.TensorId("raw"),
            axes=[
                bio.BatchAxis(),
                bio.ChannelAxis(
                    channel_names=[
                        bio.Identifier("grey" if chans == 1 else f"c{i}") for i in range(chans)
                    ]
                ),
                *(
                    bio.SpaceInputAxis(
                        id=bio.AxisId(a), size=bio.ParameterizedSize(min=smallest, step=step)
                    )
                    for a in space
                ),
            ],
            test_tensor=bio.FileDescr(source=work / "test_input.npy"),
            data=bio.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[
                bio.ScaleRangeDescr(
                    kwargs=bio.ScaleRangeKwargs(
                        axes=[bio.AxisId(a) for a in space],
                        min_percentile=norm.low,
                        max_percentile=norm.high,
                    )
                )
            ],
        )
        ref = dict(tensor_id=bio.TensorId("raw"))
        outputs = bio.OutputTensorDescr(
            id=bio.TensorId("probabilities"),
            axes=[
                bio.BatchAxis(),
                bio.ChannelAxis(channel_names=[bio.Identifier(c) for c in class_names]),
                *(
                    bio.SpaceOutputAxisWithHalo(
                        id=bio.AxisId(a),
                        halo=halo,
                        size=bio.SizeReference(axis_id=bio.AxisId(a), **ref),
                    )
                    for a in space
                ),
            ],
            test_tensor=bio.FileDescr(source=work / "test_output.npy"),
            data=bio.IntervalOrRatioDataDescr(type="float32"),
        )
        descr = bio.ModelDescr(
            name=name,
            description=description
            or f"U-Net trained with napari-unet on {spec.labels.kind} labels; classes "
            f"{', '.join(spec.labels.class_names)}; outputs class probabilities",
            authors=[bio.Author(name=a) for a in authors],
            cite=[
                bio.CiteEntry(
                    text="Ronneberger, Fischer & Brox. U-Net: Convolutional Networks for "
                    "Biomedical Image Segmentation. MICCAI 2015",
                    doi=bio.Doi(UNET_PAPER_DOI),
                )
            ],
            license=bio.LicenseId(license),
            tags=["napari-unet", "unet", f"{dims}d", "segmentation", spec.labels.kind],
            documentation=bio.FileDescr(source=work / "README.md"),
            covers=[bio.FileDescr(source=work / "cover.png")],
            attachments=[
                bio.FileDescr(source=work / "config.json"),
                bio.FileDescr(source=work / "weights.safetensors"),
            ],
            inputs=[inputs],
            outputs=[outputs],
            weights=bio.WeightsDescr(
                pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
                    source=work / "weights.pt",
                    architecture=bio.ArchitectureFromFileDescr(
                        source=work / "unet.py",
                        callable=bio.Identifier("NapariUNet"),
                        kwargs=fields,
                    ),
                    pytorch_version=torch_version,
                ),
                torchscript=bio.TorchscriptWeightsDescr(
                    source=work / "weights_torchscript.pt",
                    pytorch_version=torch_version,
                    parent="pytorch_state_dict",
                ),
                onnx=bio.OnnxWeightsDescr(
                    source=work / "weights.onnx", opset_version=17, parent="pytorch_state_dict"
                ),
            ),
        )
        tmp = path.with_name(path.name + ".part")
        save_bioimageio_package(descr, output_path=tmp)
        tmp.replace(path)
        return path
    finally:
        shutil.rmtree(work, ignore_errors=True)


def default_halo(mcfg: Any) -> int:
    """Pixels of context a block's edge needs: ``HALO_PER_LEVEL`` x 2**depth (64 for the
    depth-4 default; measured on builtin:nuclei with bioimageio.core's blockwise
    prediction, docs/benchmarks.md: 16 px left 5.8 % of the probabilities more than 0.05
    off the whole-image ones, 32 px 1.6 %, 48 px 0.07 %, 64 px none, largest 0.038)."""
    return HALO_PER_LEVEL * 2**mcfg.depth


ONNX_TOLERANCE = 1e-4  # largest difference of a probability, onnxruntime against torch


def _scaled(channel: np.ndarray, norm: Any) -> np.ndarray:
    """bioimage.io's scale_range on one channel: (x - p_low) / (p_high - p_low + 1e-6)."""
    low, high = np.percentile(channel, [norm.low, norm.high])
    return (channel - low) / (high - low + 1e-6)


def _check_onnx(path: Path, example: np.ndarray, expected: np.ndarray) -> None:
    """The ONNX weights give torch's probabilities within :data:`ONNX_TOLERANCE`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: example})[0]
    worst = float(np.abs(got - expected).max())
    if worst > ONNX_TOLERANCE:
        raise ValueError(f"the ONNX export differs from torch by {worst:.2g} (> {ONNX_TOLERANCE})")


def _cover(image: np.ndarray, probs: np.ndarray, out: Path) -> None:
    """A 2:1 cover: the image | its predicted classes (grey levels); 3D: the middle plane."""
    import imageio.v3 as iio

    probs = probs[0]
    if image.ndim == 3:
        image, probs = image[image.shape[0] // 2], probs[:, probs.shape[1] // 2]

    lo, hi = np.percentile(image, [1, 99.8])
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    classes = probs.argmax(0) / max(probs.shape[0] - 1, 1)
    both = np.concatenate([grey, classes], axis=1)
    iio.imwrite(out, (both * 255).astype(np.uint8))


def _readme(model: Any, name: str) -> str:
    spec, history = model.config, model.history or {}
    sessions = [s for s in history.get("sessions", []) if isinstance(s, dict)]
    lines = [
        f"# {name}",
        "",
        f"A {spec.model.spatial_dims}D U-Net (width {spec.model.width}, depth "
        f"{spec.model.depth}) trained with napari-unet on {spec.labels.kind} labels. Output: "
        f"softmax class probabilities ({', '.join(spec.labels.class_names)}).",
        "",
    ]
    if spec.labels.instances:
        pp = spec.postprocess
        lines += [
            "Instances: background / interior / boundary probabilities. napari-unet turns them "
            f"into objects by a seeded watershed: seeds = connected regions of interior "
            f"probability above {pp.seed_threshold}, grown over the foreground (background "
            f"probability below {1 - pp.fg_threshold:.2f}), objects under "
            f"{pp.min_size_for(2)} pixels dropped. `napari-unet predict PACKAGE.zip IMAGES "
            "--instances` does it for you.",
            "",
        ]
    lines += ["# Validation", ""]
    for i, session in enumerate(sessions, 1):
        data = session.get("data") or []
        what = f"Session {i}: {len(data)} image(s) with {session.get('labels_kind')} labels"
        what += f" (content hashes in training.json), recipe {session.get('recipe')}"
        if session.get("validation"):
            what += f"; validation on {session['validation']}"
        lines.append(what + ".")
        search = session.get("postprocess_search") or {}
        if search:
            lines.append(
                f"Instance settings chosen on {search.get('images')} image(s), "
                f"{search.get('objects')} objects: {search.get('metric')} "
                f"{search.get('start_ap')} with {search.get('start')} -> "
                f"{search.get('chosen_ap')} with {search.get('chosen')} (seed, foreground, "
                "minimum size)."
            )
    vals = [v for v in history.get("validation", []) if isinstance(v, list) and len(v) >= 3]
    if vals:
        step, loss, iou = vals[-1][:3]
        lines.append(f"Last validation (step {step}): loss {loss:.4f}, mean IoU {iou:.3f}.")
    lines.append(f"Trained for {history.get('steps', 0)} steps in all.")
    built = history.get("built_with")
    if isinstance(built, dict) and built.get("command"):
        lines.append(f"Re-trained by: `{built['command']}`.")
    lines.append("")
    return "\n".join(lines)


def sample_image() -> np.ndarray:
    """A grey 2D nuclei image shipped with napari-unet (DSB2018, CC0): the default test image."""
    from .files import read_image

    return read_image(sorted((Path(__file__).parent / "_sample_data" / "images").glob("*.png"))[0])


PACKAGES_ROOT = Path(tempfile.gettempdir()) / "napari-unet-packages"  # extracted, by sha256


def extracted_package(folder: str | Path) -> bool:
    """``folder`` is (inside) a package's extraction: read-only, like a built-in model."""
    target = Path(folder).resolve()
    return target.is_relative_to(PACKAGES_ROOT.resolve())


PACKAGE_FILES = ("config.json", "weights.safetensors")  # what a package is loaded back from


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
