"""Training throughput: the full pipeline against the bare model step, side by side.

For each network and batch, three figures in patches (images) per second (four when
the bare step is compiled):

* **pipeline** - ``napari_unet.train_iter`` as users run it: patch sampling on the
  device, batched augmentation (one ``grid_sample``), the step, validation every so
  often, events; timed between step ``--warmup`` and the last step;
* **bare step** - the same network and batch on random tensors already on the
  device: forward, masked cross-entropy, backward, AdamW; autocast and
  ``channels_last`` as the pipeline uses them, ``torch.compile`` with ``--compile``
  (on by default on CUDA; on this 2-core CPU compiling takes minutes);
* **pipeline compiled** - the pipeline with ``train --compile``
  (``TrainConfig.compile``), when the bare step is compiled; its compilation falls in
  the warm-up steps, which are not timed;
* **seed recipe** - the paper's recipe through the same pipeline: SGD momentum
  0.99, batch 1, fp32.

Targets (issue 5): pipeline >= 0.9x bare step and >= 4.5x the seed recipe on the GPU.

    python benchmarks/bench_train.py                    # CPU set
    python benchmarks/bench_train.py --device cuda      # GPU set (widths 32, 64; 3D)
    python benchmarks/bench_train.py --device cuda --quick  # the issue's case only
    python benchmarks/bench_train.py --tiny             # quick check (the test suite)

The bare step's first calls (compiling, when compiled) are timed apart and printed as
"warm-up s": compile time is reported, not hidden, and not in the rate.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch


def synthetic(n: int, shape: tuple[int, ...], seed: int = 0):
    """Images with bright boxes and their instance labels (any content trains the same)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        img = rng.normal(100, 20, shape).astype(np.float32)
        lab = np.zeros(shape, np.uint16)
        for i in range(1, 30):
            c = [int(rng.integers(8, s - 8)) for s in shape]
            sl = tuple(slice(x - 5, x + 5) for x in c)
            lab[sl] = i
            img[sl] += 150
        images.append(img)
        labels.append(lab)
    return images, labels


def pipeline_rate(
    images, labels, dims, width, patch, batch, recipe, device, steps, warmup, compile_=False
):
    from napari_unet.config import TrainConfig
    from napari_unet.events import TrainStep
    from napari_unet.training import train_iter

    gen = train_iter(
        images,
        labels,
        labels_kind="instances",
        recipe=recipe,
        width=width,
        depth=4 if dims == 2 else 3,
        spatial_dims=dims,
        patch=patch,
        batch_size=batch,
        steps=warmup + steps,
        init=None,  # a new network, as every figure before the default start
        device=device,
        config=TrainConfig(compile=compile_),  # compiled: in the warm-up steps, not timed
    )
    t_start = t_end = None
    for event in gen:
        if isinstance(event, TrainStep):
            if event.step == warmup:
                t_start = time.perf_counter()
            t_end = time.perf_counter()
    assert t_start is not None and t_end is not None
    return steps * batch / (t_end - t_start)


def bare_rate(dims, width, patch, batch, device, steps, warmup, compile_):
    from napari_unet.devices import autocast_dtype
    from napari_unet.model import UNet
    from napari_unet.trainer import masked_cross_entropy

    dev = torch.device(device)
    net = UNet(spatial_dims=dims, num_classes=3, depth=4 if dims == 2 else 3, width=width).to(dev)
    channels_last = dims == 2
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    amp = autocast_dtype(dev)
    x = torch.randn(batch, 1, *(patch,) * dims, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (batch, *(patch,) * dims), device=dev)

    def step():
        if amp is not None:
            with torch.autocast(dev.type, dtype=amp):
                logits = net(x)
        else:
            logits = net(x)
        loss = masked_cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    run = torch.compile(step) if compile_ else step
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(warmup):
        run()
    sync()
    t1 = time.perf_counter()
    for _ in range(steps):
        run()
    sync()
    return steps * batch / (time.perf_counter() - t1), t1 - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None, help="timed steps per case")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--tiny", action="store_true")
    p.add_argument(
        "--quick", action="store_true", help="the first case only (2D width 32 on a GPU)"
    )
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    compile_ = cuda if args.compile is None else args.compile
    torch.set_num_threads(os.cpu_count() or 1)
    if args.tiny:
        cases = [(2, 4, 64, 2), (3, 4, 32, 1)]
    elif cuda:
        cases = [(2, 32, 256, 16), (2, 64, 512, 8), (3, 16, 96, 4)]
    else:
        cases = [(2, 8, 128, 8), (2, 32, 128, 8), (3, 8, 48, 2)]
    cases = cases[:1] if args.quick else cases
    steps = args.steps or (3 if args.tiny else 60 if cuda else 20)
    warmup = 1 if args.tiny else 10 if cuda else 3
    rows = []
    for dims, width, patch, batch in cases:
        shape = (64, 160, 160) if dims == 3 else (512, 512)
        if args.tiny:
            shape = (48, 48, 48) if dims == 3 else (96, 96)
        images, labels = synthetic(4, shape)
        pipe = pipeline_rate(
            images, labels, dims, width, patch, batch, "fast", args.device, steps, warmup
        )
        bare, warm_s = bare_rate(dims, width, patch, batch, args.device, steps, warmup, compile_)
        compiled = None
        if compile_:  # the pipeline with --compile (TrainConfig.compile)
            compiled = pipeline_rate(
                images, labels, dims, width, patch, batch, "fast", args.device, steps, warmup,
                compile_=True,
            )  # fmt: skip
        seed = pipeline_rate(
            images, labels, dims, width, patch, 1, "paper", args.device, steps, warmup
        )
        rows.append((dims, width, patch, batch, pipe, bare, seed, warm_s, compiled))
    where = torch.cuda.get_device_name() if cuda else f"{os.cpu_count()}-core CPU"
    print(
        f"# {time.strftime('%Y-%m-%d')}  {where} ({platform.machine()}), torch {torch.__version__}"
        f", {torch.get_num_threads()} threads, bare step compiled: {compile_}"
    )
    print(
        "| network | patch x batch | pipeline patches/s | pipeline compiled | bare step "
        "| bare warm-up s | seed fp32 batch 1 | pipeline / bare | pipeline / seed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for dims, width, patch, batch, pipe, bare, seed, warm_s, compiled in rows:
        print(
            f"| {dims}D width {width} | {patch}^{dims} x {batch} | {pipe:.1f} | "
            f"{'-' if compiled is None else f'{compiled:.1f}'} | {bare:.1f} | "
            f"{warm_s:.1f} | {seed:.1f} | {pipe / bare:.2f}x | {pipe / seed:.2f}x |"
        )
    print(
        "summary: pipeline / bare step "
        + ", ".join(f"{r[0]}D w{r[1]} {r[4] / r[5]:.2f}x" for r in rows)
        + "; pipeline / seed recipe "
        + ", ".join(f"{r[0]}D w{r[1]} {r[4] / r[6]:.2f}x" for r in rows)
        + "; bare warm-up (compile) "
        + ", ".join(f"{r[7]:.0f} s" for r in rows)
        + "".join(
            f"; compiled pipeline / bare {r[0]}D w{r[1]} {r[8] / r[5]:.2f}x"
            for r in rows
            if r[8] is not None
        )
    )


if __name__ == "__main__":
    main()
