"""Export a napari-unet model as a bioimage.io model package (spec 0.5).

Written with ``bioimageio.spec`` (no hand-written YAML).  The package holds the
weights as ``pytorch_state_dict`` (architecture: ``_bioimageio/unet.py``, which
imports only torch and ends in a softmax), ``torchscript`` (scripted, so any
input size runs) and ``onnx`` (legacy exporter, opset 17, dynamic spatial axes),
both checked against the state-dict network at two sizes; the model's percentile
normalisation as the ``scale_range`` pre-processing; class probabilities as the
output (channel names = class names); test tensors from ``image``; a 2:1 cover
(image | predicted classes); a README with a "# Validation" section from
``training.json``; and napari-unet's ``config.json`` and ``weights.safetensors``
as attachments, from which :func:`napari_unet.packages.package_folder` loads the model back.

Sizes and tiling: the output has the input's size.  A ``same`` model's output
declares a halo (:func:`default_halo`, measured against whole-image prediction)
that consumers crop from each block.  A ``valid`` (unpadded) network mirrors its
input by its border first, as napari-unet's tiling does at image edges, and
declares that border as its halo: blocks then agree with the whole image.  (The
spec's other way, an output smaller than the input by a size ``offset``, passes
``bioimageio test`` but bioimageio.core 0.11's blockwise prediction refuses it:
"Block data shape does not match block meta information".)
``bioimageio.core`` is only needed to test a package (the testing extra).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .packages import PACKAGE_FILES

UNET_PAPER_DOI = "10.1007/978-3-319-24574-4_28"  # Ronneberger, Fischer & Brox, MICCAI 2015
DEFAULT_LICENSE = "CC-BY-4.0"
HALO_PER_LEVEL = 4
NAME_PATTERN = re.compile(r"^[\w+\- ()]{5,128}$")
TEST_EDGE = {2: 256, 3: 64}  # test tensors are cropped to this edge (or the smallest input)
ONNX_TOLERANCE = 1e-4  # largest difference of a probability, onnxruntime against torch
TORCHSCRIPT_TOLERANCE = 1e-5


def _identifier(text: str, fallback: str) -> str:
    """A bioimage.io identifier (letters, digits, underscores) made from ``text``."""
    ident = re.sub(r"\W+", "_", text).strip("_")
    return ident if ident and not ident[0].isdigit() else fallback


@dataclass(frozen=True)
class Sizes:
    """The input sizes a package accepts along each spatial axis, and its halo.

    Inputs are ``smallest + k * step`` pixels and the output has the input's size,
    of which a consumer tiling an image crops ``halo`` pixels on each side of a
    block (so inputs are larger than two halos).  ``mirror`` is the border a
    ``valid`` network mirrors around its input first (0 for ``same``).
    """

    space: str  # "yx" or "zyx"
    smallest: int
    step: int
    halo: int
    mirror: int

    @classmethod
    def of(cls, mcfg: Any, halo: int | None = None) -> Sizes:
        from .model import border, valid_input_size

        space = "zyx"[3 - mcfg.spatial_dims :]
        step = 2**mcfg.depth
        mirror = border(mcfg)
        # the smallest size the network takes (a valid one: its smallest output)
        base = valid_input_size(1, mcfg.depth) - 2 * mirror if mirror else step
        halo = halo or mirror or default_halo(mcfg)
        smallest = base + step * max(0, -(-(2 * halo + 1 - base) // step))
        return cls(space, smallest, step, halo, mirror)

    def largest(self, size: int) -> int:
        """The largest accepted input edge <= ``size`` (at least the smallest)."""
        return self.smallest + max(0, size - self.smallest) // self.step * self.step

    def other(self, shape: tuple[int, ...]) -> int:
        """A small accepted edge, not ``shape``'s: to check that sizes are not fixed."""
        edge = self.smallest - self.step * ((self.smallest - max(self.mirror, 1)) // self.step)
        return edge + self.step if shape == (edge,) * len(shape) else edge


def default_halo(mcfg: Any) -> int:
    """Pixels of context a block's edge needs: ``HALO_PER_LEVEL`` x 2**depth (64 for the
    depth-4 default; measured on builtin:nuclei with bioimageio.core's blockwise
    prediction, docs/benchmarks.md: 16 px left 5.8 % of the probabilities more than 0.05
    off the whole-image ones, 32 px 1.6 %, 48 px 0.07 %, 64 px none, largest 0.038)."""
    return HALO_PER_LEVEL * 2**mcfg.depth


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
    """Write ``model`` (a :class:`~napari_unet.store.Model` with a folder) to the new
    package ``path`` (a ``.zip``, written whole or not at all).

    ``image``: one image the model takes (its spatial axes, and for several channels
    a channel axis first or last), for the test tensors and the cover; it is
    centre-cropped to at most :data:`TEST_EDGE` pixels per axis.  ``halo``
    overrides the declared halo (:func:`default_halo`; a ``valid`` model's border).

    Raises
    ------
    ValueError
        Naming the value: an existing ``path``, a model without a folder, a bad
        ``name`` or ``halo``, an image of the wrong layout or too small, exported
        weights that do not reproduce the network.
    """
    import torch

    path = Path(path)
    sizes = _checked_model(model, path, halo)
    name = name or f"napari-unet {Path(model.path).name}"
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"name {name!r}: 5-128 letters, digits, spaces and _+-() (bioimage.io's rule)"
        )
    image = _test_image(image, model.config.model, sizes)
    network = _standalone(model)
    norm = model.config.normalization
    example = np.stack([_scaled(c, norm) for c in image])[None].astype(np.float32)
    with torch.no_grad():
        probs = network(torch.from_numpy(example)).numpy()

    work = Path(tempfile.mkdtemp(prefix="napari-unet-export-"))
    try:
        np.save(work / "test_input.npy", image[None])
        np.save(work / "test_output.npy", probs)
        _write_weights(work, network, example, probs, sizes)
        shutil.copy(Path(__file__).parent / "_bioimageio" / "unet.py", work / "unet.py")
        for f in PACKAGE_FILES:
            shutil.copy(Path(model.path) / f, work / f)
        _cover(image[0], probs, work / "cover.png")
        (work / "README.md").write_text(_readme(model, name, sizes))
        descr = _describe(work, model, sizes, name, authors, license, description)
        from bioimageio.spec import save_bioimageio_package

        tmp = path.with_name(path.name + ".part")
        save_bioimageio_package(descr, output_path=tmp)
        tmp.replace(path)
        return path
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _checked_model(model: Any, path: Path, halo: int | None) -> Sizes:
    """The model's :class:`Sizes`, after refusing what cannot be exported to ``path``."""
    if path.exists():
        raise ValueError(f"--out {path} already exists: choose a new file name")
    if model.path is None:
        raise ValueError("the model has no folder: save it first (its files go into the package)")
    if halo is not None and halo < 1:
        raise ValueError(f"halo {halo}: must be at least 1 pixel")
    return Sizes.of(model.config.model, halo)


def _test_image(image: Any, mcfg: Any, sizes: Sizes) -> np.ndarray:
    """``image`` as float32 (C, *spatial), centre-cropped to an accepted size."""
    dims, chans = mcfg.spatial_dims, mcfg.in_channels
    image = np.asarray(image, np.float32)
    layout = ("(c, " if chans > 1 else "(") + ", ".join(sizes.space) + ")"
    if image.ndim == dims and chans == 1:
        image = image[None]
    elif image.ndim == dims + 1 and image.shape[0] != chans and image.shape[-1] == chans:
        image = np.moveaxis(image, -1, 0)
    if image.ndim != dims + 1 or image.shape[0] != chans:
        raise ValueError(
            f"the test image must be {layout} for this model (channels first or last), got "
            f"shape {image.shape}"
        )
    if min(image.shape[1:]) < sizes.smallest:
        raise ValueError(
            f"the test image must be at least {sizes.smallest} pixels along each axis (more "
            f"than twice the halo of {sizes.halo} px, and {sizes.smallest % sizes.step} + a "
            f"multiple of {sizes.step}), got shape {image.shape[1:]}"
        )
    edge = max(TEST_EDGE[dims], sizes.smallest)
    crop = [sizes.largest(min(s, edge)) for s in image.shape[1:]]
    starts = [(s - c) // 2 for s, c in zip(image.shape[1:], crop, strict=True)]
    window = tuple(slice(a, a + c) for a, c in zip(starts, crop, strict=True))
    return np.ascontiguousarray(image[(slice(None), *window)])


def _standalone(model: Any) -> Any:
    """The package's network (``_bioimageio/unet.py``) with the model's weights, in eval."""
    from ._bioimageio.unet import NapariUNet

    mcfg = model.config.model
    network = NapariUNet(**{f: getattr(mcfg, f) for f in mcfg.__dataclass_fields__})
    network.load_state_dict(model.network.state_dict())
    return network.eval()


def _write_weights(
    work: Path, network: Any, example: np.ndarray, probs: np.ndarray, sizes: Sizes
) -> None:
    """``weights.pt`` (the format asks for it), ``weights_torchscript.pt`` (scripted) and
    ``weights.onnx``; the last two must give the network's probabilities on ``example``
    and on an input of another size (their spatial sizes are not fixed)."""
    import torch

    torch.save(network.state_dict(), work / "weights.pt")
    scripted = torch.jit.script(network)
    scripted.save(str(work / "weights_torchscript.pt"))
    axes = {0: "b", **{2 + i: a for i, a in enumerate(sizes.space)}}
    x = torch.from_numpy(example)
    with warnings.catch_warnings():  # the legacy exporter (the new one needs onnxscript)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (x,),
            str(work / "weights.onnx"),
            opset_version=17,
            input_names=["raw"],
            output_names=["probabilities"],
            dynamic_axes={"raw": axes, "probabilities": axes},
            dynamo=False,
        )
    edge = sizes.other(example.shape[2:])
    shape = (1, example.shape[1], *[edge] * len(sizes.space))
    small = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        small_probs = network(small).numpy()
        for given, expected in ((x, probs), (small, small_probs)):
            worst = float((scripted(given) - torch.from_numpy(expected)).abs().max())
            if worst > TORCHSCRIPT_TOLERANCE:
                raise ValueError(
                    f"the TorchScript export differs from torch by {worst:.2g} on an input of "
                    f"shape {tuple(given.shape)} (> {TORCHSCRIPT_TOLERANCE})"
                )
    for given, expected in ((example, probs), (small.numpy(), small_probs)):
        _check_onnx(work / "weights.onnx", given, expected)


def _describe(
    work: Path,
    model: Any,
    sizes: Sizes,
    name: str,
    authors: Sequence[str],
    license: str,
    description: str | None,
) -> Any:
    """The package's ``ModelDescr`` over the files in ``work``."""
    from bioimageio.spec.model import v0_5 as bio

    spec = model.config
    mcfg = spec.model
    return bio.ModelDescr(
        name=name,
        description=description
        or f"U-Net trained with napari-unet on {spec.labels.kind} labels; classes "
        f"{', '.join(spec.labels.class_names)}; outputs class probabilities"
        + (
            f"; inputs resized by {spec.normalization.scale:g} first (see the README)"
            if spec.normalization.scale != 1.0
            else ""
        )
        + (
            f"; volumes resized by {spec.normalization.z_scale:g} along z first (see the README)"
            if spec.normalization.z_scale != 1.0
            else ""
        ),
        authors=[bio.Author(name=a) for a in authors],
        cite=[
            bio.CiteEntry(
                text="Ronneberger, Fischer & Brox. U-Net: Convolutional Networks for "
                "Biomedical Image Segmentation. MICCAI 2015",
                doi=bio.Doi(UNET_PAPER_DOI),
            )
        ],
        license=bio.LicenseId(license),
        tags=["napari-unet", "unet", f"{mcfg.spatial_dims}d", "segmentation", spec.labels.kind],
        documentation=bio.FileDescr(source=work / "README.md"),
        covers=[bio.FileDescr(source=work / "cover.png")],
        attachments=[bio.FileDescr(source=work / f) for f in PACKAGE_FILES],
        inputs=[_input_descr(work, spec, sizes)],
        outputs=[_output_descr(work, spec, sizes)],
        weights=_weights_descr(work, mcfg),
    )


INPUT_ID = "raw"


def _input_descr(work: Path, spec: Any, sizes: Sizes) -> Any:
    """The input tensor: batch, channels, the spatial axes (any size from ``sizes.smallest``
    in steps of ``sizes.step``), and the model's percentile normalisation as scale_range."""
    from bioimageio.spec.model import v0_5 as bio

    chans, norm = spec.model.in_channels, spec.normalization
    names = [bio.Identifier("grey" if chans == 1 else f"c{i}") for i in range(chans)]
    space = [
        bio.SpaceInputAxis(
            id=bio.AxisId(a), size=bio.ParameterizedSize(min=sizes.smallest, step=sizes.step)
        )
        for a in sizes.space
    ]
    scale_range = bio.ScaleRangeKwargs(
        axes=[bio.AxisId(a) for a in sizes.space],
        min_percentile=norm.low,
        max_percentile=norm.high,
    )
    return bio.InputTensorDescr(
        id=bio.TensorId(INPUT_ID),
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=names), *space],
        test_tensor=bio.FileDescr(source=work / "test_input.npy"),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[bio.ScaleRangeDescr(kwargs=scale_range)],
    )


def _output_descr(work: Path, spec: Any, sizes: Sizes) -> Any:
    """The output tensor: one probability channel per class, the input's size, a halo."""
    from bioimageio.spec.model import v0_5 as bio

    names = [_identifier(c, f"class{i}") for i, c in enumerate(spec.labels.class_names)]
    space = [
        bio.SpaceOutputAxisWithHalo(
            id=bio.AxisId(a),
            halo=sizes.halo,
            size=bio.SizeReference(tensor_id=bio.TensorId(INPUT_ID), axis_id=bio.AxisId(a)),
        )
        for a in sizes.space
    ]
    return bio.OutputTensorDescr(
        id=bio.TensorId("probabilities"),
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[bio.Identifier(c) for c in names]),
            *space,
        ],
        test_tensor=bio.FileDescr(source=work / "test_output.npy"),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
    )


def _weights_descr(work: Path, mcfg: Any) -> Any:
    """Three weight formats: the state dict with the architecture's source (the parent),
    TorchScript and ONNX converted from it."""
    import torch
    from bioimageio.spec.model import v0_5 as bio

    torch_version = bio.Version(torch.__version__.split("+")[0])
    fields = {f: getattr(mcfg, f) for f in mcfg.__dataclass_fields__}
    return bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=work / "weights.pt",
            architecture=bio.ArchitectureFromFileDescr(
                source=work / "unet.py", callable=bio.Identifier("NapariUNet"), kwargs=fields
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
    )


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
    """A 2:1 cover: the image | its predicted classes (grey levels), each the centred
    square of the (middle plane of the) test image."""
    import imageio.v3 as iio

    probs = probs[0]
    if image.ndim == 3:
        image, probs = image[image.shape[0] // 2], probs[:, probs.shape[1] // 2]
    side = min(image.shape)
    square = tuple(slice((n - side) // 2, (n - side) // 2 + side) for n in image.shape)
    image, probs = image[square], probs[(slice(None), *square)]

    lo, hi = np.percentile(image, [1, 99.8])
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    classes = probs.argmax(0) / max(probs.shape[0] - 1, 1)
    both = np.concatenate([grey, classes], axis=1)
    iio.imwrite(out, (both * 255).astype(np.uint8))


def _readme(model: Any, name: str, sizes: Sizes) -> str:
    spec, history = model.config, model.history or {}
    lines = [
        f"# {name}",
        "",
        f"A {spec.model.spatial_dims}D U-Net (width {spec.model.width}, depth "
        f"{spec.model.depth}) trained with napari-unet on {spec.labels.kind} labels. Output: "
        f"softmax class probabilities ({', '.join(spec.labels.class_names)}).",
        "",
        f"Input sizes: {sizes.smallest} + k x {sizes.step} pixels along each spatial axis; "
        "the output has the input's size. Tiling: crop the declared halo of "
        f"{sizes.halo} pixels from each side of a block's output."
        + (
            f" This is the paper's unpadded ('valid') U-Net: it first mirrors its input by "
            f"its border of {sizes.mirror} pixels on each side (as napari-unet does at image "
            "edges), so each output pixel inside the halo saw only real image."
            if sizes.mirror
            else ""
        ),
        "",
    ]
    scale = spec.normalization.scale
    if scale != 1.0:
        lines += [
            f"Scale: the network was trained on images resized by {scale:g} (its objects "
            f"brought to about the same width): resize each input by {scale:g} before the "
            "network and its outputs back to the input's size (`napari-unet predict` does).",
            "",
        ]
    z_scale = spec.normalization.z_scale
    if z_scale != 1.0:
        lines += [
            f"Voxel size: the network was trained on volumes resized by {z_scale:g} along z, "
            "and only z (near-isotropic voxels): resize each input volume along z by "
            f"{z_scale:g} before the network and its outputs back (`napari-unet predict` does).",
            "",
        ]
    if spec.labels.instances:
        pp = spec.postprocess
        lines += [
            "Instances: background / interior / boundary probabilities. napari-unet turns them "
            f"into objects by a seeded watershed: seeds = connected regions of interior "
            f"probability above {pp.seed_threshold}"
            + (
                f", each cut at its waists where they are narrower by {pp.split:g} x its "
                "largest inscribed radius (the watershed of its distance map)"
                if pp.split
                else ""
            )
            + ", grown over the foreground (background "
            f"probability below {1 - pp.fg_threshold:.2f}), objects under "
            f"{pp.min_size_for(2)} pixels dropped. `napari-unet predict PACKAGE.zip IMAGES "
            "--instances` does it for you.",
            "",
        ]
    return "\n".join(lines + ["# Validation", "", *_validation_lines(history), ""])


def _validation_lines(history: dict) -> list[str]:
    """The package README's validation part: each session's data and instance settings,
    the last validation, the steps and how the model can be re-trained."""
    sessions = [s for s in history.get("sessions", []) if isinstance(s, dict)]
    lines: list[str] = []
    for i, session in enumerate(sessions, 1):
        data = session.get("data") or []
        what = f"Session {i}: {len(data)} image(s) with {session.get('labels_kind')} labels"
        what += f" (content hashes in training.json), recipe {session.get('recipe')}"
        if session.get("validation"):
            what += f"; validation on {session['validation']}"
        lines.append(what + ".")
        search = session.get("postprocess_search") or {}
        if search and (search.get("chosen_ap") is None or search.get("searched") is False):
            held = search.get("objects") or "no"
            lines.append(
                f"Instance settings {search.get('chosen')} (seed, foreground, minimum size): "
                "thresholds kept and minimum size from the labeled objects' sizes; "
                f"{held} held-out objects, too few to search them on."
            )
        elif search and search.get("search") == "overlap":
            lines.append(
                f"Instance settings {search.get('chosen')} (seed, foreground, minimum size): "
                f"foreground threshold chosen on how well {search.get('objects')} held-out "
                f"objects are outlined (mean best IoU {search.get('overlap')}, "
                f"{search.get('metric')} {search.get('start_ap')} -> "
                f"{search.get('chosen_ap')}); seed threshold and waist cut kept and minimum "
                "size from the labeled objects' sizes: too few objects to choose them."
            )
        elif search and search.get("search") == "background":
            lines.append(
                f"Instance settings {search.get('chosen')} (seed, foreground, minimum size): "
                "minimum size and foreground threshold chosen on the false objects on "
                f"{search.get('background_pixels')} px of held-out background and "
                f"{search.get('objects')} held-out objects ({search.get('metric')} "
                f"{search.get('start_ap')} -> {search.get('chosen_ap')}); seed threshold and "
                "waist cut kept: too few objects to choose them."
            )
        elif search:
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
    return lines


def one_image(data: Any, spec: Any, index: Sequence[int] | None = None) -> np.ndarray:
    """One image for ``export_bioimageio`` from ``data`` in any layout napari-unet predicts
    (axes guessed as :func:`napari_unet.inference.guess_axes` does): channels first, and
    of the stack axes (time, and planes for a 2D model) position ``index`` (default:
    the middle)."""
    from .inference import in_model_order

    arr, layout = in_model_order(data, spec)
    lead = arr.shape[: len(layout.stack)]
    at = tuple(index) if index is not None else tuple(n // 2 for n in lead)
    if len(at) != len(lead) or any(not 0 <= i < n for i, n in zip(at, lead, strict=True)):
        raise ValueError(f"position {at} is not in the stack axes of shape {lead}")
    return np.asarray(arr[at])


def takes_sample_image(spec: Any) -> bool:
    """Whether :func:`sample_image` (2D, grey) suits the model of ``spec``."""
    return spec.model.spatial_dims == 2 and spec.model.in_channels == 1


def sample_image() -> np.ndarray:
    """A grey 2D nuclei image shipped with napari-unet (DSB2018, CC0): the default test image."""
    from .files import read_image

    return read_image(sorted((Path(__file__).parent / "_sample_data" / "images").glob("*.png"))[0])
