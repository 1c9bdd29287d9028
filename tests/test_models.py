"""Model zoo and the multi-scale local-logit head."""

import pytest
import torch
from torch import nn

from sddcompress.errors import UserError
from sddcompress.models import LocalLogits, build_model, list_models, region_pool
from sddcompress.models.local_logits import pool_regions
from sddcompress.models.registry import REGISTRY

torch.manual_seed(0)


def _check_global_and_local(name, input_size, scales=(1, 2, 4)):
    model = build_model(name, 10, input_size).eval()
    wrapped = LocalLogits(model, input_size, scales, name=name)
    x = torch.randn(2, 3, input_size, input_size)
    with torch.no_grad():
        glob, local = wrapped(x)
        plain = model(x)
    assert torch.equal(glob, plain)
    assert local.shape == (2, 10, sum(s * s for s in scales))
    torch.testing.assert_close(local[:, :, 0], glob, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_named_model_at_32px(name):
    # the papers' mobile_half ends on a 2x2 map at 32 px: SDD's 4x4 regions do not exist there
    _check_global_and_local(name, 32, (1, 2) if name == "mobile_half" else (1, 2, 4))


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2", "shufflenetv2", "mobilenet_v3_small",
                                  "efficientnet_b0", "regnet_x_400mf", "mnasnet0_5", "resnet18"])
def test_torchvision_models_at_224px(name):
    _check_global_and_local(name, 224)


def test_cli_pair_resolves_for_both_input_sizes():
    small, large = build_model("mobilenetv2", 100, 32), build_model("mobilenetv2", 1000, 224)
    assert sum(p.numel() for p in small.parameters()) < 1.0e6  # width 0.5 CIFAR variant
    assert sum(p.numel() for p in large.parameters()) > 3.0e6  # torchvision mobilenet_v2
    assert isinstance(build_model("resnet50", 100, 32).maxpool, nn.Identity)


def test_list_models_names_paper_zoo_and_torchvision():
    names = {e.name for e in list_models()}
    assert {"resnet8x4", "resnet32x4", "wrn_40_2", "vgg13", "shufflenetv1", "resnet50", "efficientnet_b0"} <= names


def test_unknown_model_suggests_a_name():
    with pytest.raises(UserError, match="unknown model 'resnet8x5'.*resnet8x4"):
        build_model("resnet8x5", 10)


class QuadrantModel(nn.Module):
    """Identity features, global pool, identity classifier: logits are pooled input values."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(3))

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def test_region_order_is_scale_then_row_major():
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0, :2, :2], x[0, 0, :2, 2:], x[0, 0, 2:, :2], x[0, 0, 2:, 2:] = 1, 2, 3, 4
    _, local = LocalLogits(QuadrantModel(), 4, (1, 2))(x)
    assert local[0, 0].tolist() == [2.5, 1.0, 2.0, 3.0, 4.0]


def test_two_layer_head_is_applied_whole():
    model = build_model("mobilenet_v3_small", 10, 224)
    assert len([m for m in model.classifier if isinstance(m, nn.Linear)]) == 2
    _check_global_and_local("mobilenet_v3_small", 224)


def test_feature_map_too_small_names_size_and_fix():
    with pytest.raises(UserError, match=r"1x1 at 32 px.*--input-size"):
        LocalLogits(build_model("efficientnet_b0", 10, 32), 32, name="efficientnet_b0")


class ExtraOpModel(QuadrantModel):
    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1) * 2.0)


def test_model_with_ops_between_features_and_head_is_refused():
    with pytest.raises(UserError, match="does not reproduce"):
        LocalLogits(ExtraOpModel(), 8, (1, 2))


class DropoutHeadModel(QuadrantModel):
    """A trained-looking head behind dropout, as torchvision's MobileNetV2 and EfficientNet have."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(3, 3))
        with torch.no_grad():
            self.fc[1].weight.copy_(10.0 * torch.eye(3))


def test_a_head_with_dropout_splits_while_the_model_is_in_training_mode():
    """The split check compares the head with the model's logits in eval mode; in training mode the dropout
    would make them differ whenever the weights give logits far from 0 (a resumed or pretrained student)."""
    model = DropoutHeadModel().train()
    net = LocalLogits(model, 8, (1, 2))
    assert model.training and all(m.training for m in model.modules())
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    logits, local = net(x)
    assert torch.allclose(local[:, :, 0], logits, atol=1e-5)


def test_densenet_functional_tail_still_splits_exactly():
    _check_global_and_local("densenet121", 128)


def test_bad_scales_are_refused():
    with pytest.raises(UserError, match="positive integers"):
        LocalLogits(build_model("resnet8x4", 10), 32, (0, 2))


def test_local_logits_carry_gradients_to_the_head():
    model = build_model("resnet8x4", 10).train()
    _, local = LocalLogits(model, 32)(torch.randn(2, 3, 32, 32))
    local.sum().backward()
    assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0


def test_training_global_logits_are_region_zero_of_the_local_ones():
    """In training (scale 1 first) the global logits are the local logits' region 0, so the head is
    differentiated once; they equal the model's own logits to rounding. In eval they are the model's."""
    model = build_model("resnet8x4", 10).train()
    wrapped = LocalLogits(model, 32)
    x = torch.randn(2, 3, 32, 32)
    glob, local = wrapped(x)
    assert torch.equal(glob, local[:, :, 0])
    with torch.no_grad():
        torch.testing.assert_close(glob, model.train()(x), rtol=1e-4, atol=1e-4)  # BN train: batch statistics
    glob.sum().backward()
    assert model.fc.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert torch.equal(wrapped(x)[0], model(x))
    # scales without 1 first: region 0 is not the global average, the model's own logits stay
    coarse = LocalLogits(build_model("resnet8x4", 10).train(), 32, (2, 1))
    with torch.no_grad():
        glob, local = coarse(x)
    assert not torch.equal(glob, local[:, :, 0])


def test_linear_head_as_one_convolution_equals_the_head_row_by_row():
    """A Linear head runs as one 1x1 convolution over the regions; values and gradients equal the head
    applied to every region's vector (the path any other head takes), in float64."""
    model = build_model("resnet8x4", 10).double().train()
    wrapped = LocalLogits(model, 32)
    feature = torch.randn(3, model.fc.in_features, 8, 8, dtype=torch.float64, requires_grad=True)
    local = wrapped.local_logits(feature)
    regions = region_pool(feature, (1, 2, 4))  # (B, C, N)
    rows = model.fc(regions.transpose(1, 2)).transpose(1, 2)  # the head on each region vector
    torch.testing.assert_close(local, rows, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(local)
    got = torch.autograd.grad(local, (feature, model.fc.weight, model.fc.bias), upstream)
    want = torch.autograd.grad(rows, (feature, model.fc.weight, model.fc.bias), upstream)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_region_pooling_gradient_passes_gradcheck():
    """The pooling's gradient is written out (the cached matrix the other way); gradcheck checks it,
    also for MSD's wider windows."""
    feature = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: region_pool(f, (1, 2, 3)), (feature,))
    assert torch.autograd.gradcheck(lambda f: pool_regions(f, (2, 3), 2.0), (feature,))


def test_local_logits_under_bf16_autocast_give_float32_gradients():
    """Under autocast the pooling product runs in bf16; the gradient reaching a float32 feature map and head
    is float32 again, and close to the float32 one."""
    model = build_model("resnet8x4", 10).train()
    wrapped = LocalLogits(model, 32)
    feature = torch.randn(2, model.fc.in_features, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        local = wrapped.local_logits(feature)
    assert local.dtype == torch.bfloat16
    (grad_bf16,) = torch.autograd.grad(local.float().sum(), feature)
    (grad_fp32,) = torch.autograd.grad(wrapped.local_logits(feature).sum(), feature)
    assert grad_bf16.dtype == torch.float32
    torch.testing.assert_close(grad_bf16, grad_fp32, rtol=0.05, atol=0.05)
