import pytest
import torch
from torch import nn

from napari_unet.model import UNet, border, valid_input_size, valid_output_size


@pytest.mark.parametrize("dims", [2, 3])
def test_same_padding_keeps_size(dims):
    net = UNet(spatial_dims=dims, in_channels=2, num_classes=4, depth=2, width=4)
    shape = (1, 2) + (16,) * dims
    out = net(torch.randn(shape))
    assert out.shape == (1, 4) + (16,) * dims


@pytest.mark.parametrize("dims", [2, 3])
def test_valid_padding_loses_constant_border(dims):
    net = UNet(spatial_dims=dims, depth=2, width=2, padding="valid")
    b = border(net.config)
    for size in (valid_input_size(44, 2), valid_input_size(60, 2)):
        out = net(torch.randn((1, 1) + (size,) * dims))
        assert out.shape[2:] == (size - 2 * b,) * dims


def test_paper_sizes():
    # the paper's network: 572 x 572 in, 388 x 388 out
    assert valid_output_size(572, 4) == 388
    assert valid_output_size(573, 4) is None
    net = UNet(depth=4, width=64, padding="valid")
    assert border(net.config) == 92


def test_paper_network_has_23_conv_layers():
    net = UNet(depth=4, width=64)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert len(convs) == 23
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in convs) == 4


def test_batch_norm_switch():
    with_bn = UNet(depth=2, width=4, batch_norm=True)
    without = UNet(depth=2, width=4, batch_norm=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 0}, "depth must be in"),
        ({"width": 0}, "width must be in"),
        ({"padding": "full"}, "padding must be one of same, valid, got 'full'"),
        ({"spatial_dims": 4}, "spatial_dims must be in [2, 3], got 4"),
        ({"num_classes": 1}, "num_classes must be in"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        UNet(**kwargs)


def test_wrong_input_size_is_explained():
    net = UNet(depth=3, width=2)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth = 8"):
        net(torch.randn(1, 1, 20, 16))
    with pytest.raises(ValueError, match="expects 1 input channels, got 3"):
        net(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("dims", [2, 3])
def test_fused_network_predicts_the_same_and_leaves_the_original_alone(dims):
    from napari_unet.model import fused_for_inference

    torch.manual_seed(0)
    net = UNet(spatial_dims=dims, in_channels=1, num_classes=3, depth=2, width=4)
    net.train()
    x = torch.randn(2, 1, *(16,) * dims)
    net(x)  # moves the batch-norm running statistics away from their start
    net(x * 3 + 1)
    fused = fused_for_inference(net)
    assert net.training  # the original keeps its mode
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    with torch.no_grad():
        expected = net.eval()(x)
        got = fused(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_a_fused_network_is_fused_once_and_predicts_the_same():
    import numpy as np

    import napari_unet as nu
    from napari_unet.config import LabelsConfig, ModelConfig, ModelSpec
    from napari_unet.inference import for_many_images
    from napari_unet.model import UNet, fused_for_inference
    from napari_unet.store import Model

    torch.manual_seed(0)
    classes = len(LabelsConfig().class_names)
    net = UNet.from_config(ModelConfig(width=4, depth=2, num_classes=classes))
    fused = fused_for_inference(net)
    assert fused is not net and fused_for_inference(fused) is fused  # no second copy
    assert net.training and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    model = Model(network=net, config=ModelSpec(model=net.config))
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    once = for_many_images(model)
    assert once.network is not net and once.config == model.config
    np.testing.assert_allclose(
        nu.predict_proba(once, image, device="cpu"),
        nu.predict_proba(model, image, device="cpu"),
        atol=1e-5,
    )
