"""Weights from elsewhere: foreign state dicts, the CIFAR teacher zoo, ImageNet-pretrained backbones.

The teacher-zoo models below are small re-implementations written for this test with the zoo's
parameter names and forward passes (mdistiller/CRD `models/cifar`), so a zoo checkpoint is
produced here, never downloaded, and its logits are the reference our models must reproduce.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sddcompress.engine.checkpoint import atomic_save, base_record, load_checkpoint, model_record
from sddcompress.engine.checkpoint_eval import model_from_checkpoint
from sddcompress.models import build_model

from helpers import assert_one_line_error

torch.manual_seed(0)


# --- the teacher zoo's CIFAR models, re-implemented with its names ----------------------------

class ZooBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ZooResNet(nn.Module):
    def __init__(self, depth, filters, num_classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        inplanes = filters[0]
        for i, planes in enumerate(filters[1:]):
            blocks = []
            for j in range(n):
                blocks.append(ZooBasicBlock(inplanes, planes, 2 if (i and not j) else 1))
                inplanes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(filters[3], num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(F.avg_pool2d(x, 8).flatten(1))


class ZooWideBlock(nn.Module):
    def __init__(self, inp, out, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inp)
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.equal = inp == out
        self.convShortcut = None if self.equal else nn.Conv2d(inp, out, 1, stride, 0, bias=False)

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.equal else self.convShortcut(act))


class ZooStage(nn.Module):
    def __init__(self, n, inp, out, stride):
        super().__init__()
        self.layer = nn.Sequential(*[ZooWideBlock(inp if i == 0 else out, out, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class ZooWRN(nn.Module):
    def __init__(self, depth, widen, num_classes):
        super().__init__()
        ch, n = [16, 16 * widen, 32 * widen, 64 * widen], (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1, self.block2, self.block3 = ZooStage(n, ch[0], ch[1], 1), ZooStage(n, ch[1], ch[2], 2), \
            ZooStage(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.block3(self.block2(self.block1(self.conv1(x))))))
        return self.fc(F.avg_pool2d(x, 8).flatten(1))


class ZooVGG(nn.Module):
    """Per-stage Sequentials (conv, bn, relu, ..., last relu dropped); max-pools after stages 0-2."""

    def __init__(self, cfg, num_classes):
        super().__init__()
        inp = 3
        for s, stage in enumerate(cfg):
            layers = []
            for width in stage:
                layers += [nn.Conv2d(inp, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                inp = width
            setattr(self, f"block{s}", nn.Sequential(*layers[:-1]))
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        for s in range(5):
            x = F.relu(getattr(self, f"block{s}")(x))
            if s < 3:
                x = F.max_pool2d(x, 2)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


ZOO_BUILDERS = {
    "resnet8x4": lambda k: ZooResNet(8, [32, 64, 128, 256], k),
    "resnet20": lambda k: ZooResNet(20, [16, 16, 32, 64], k),
    "wrn_16_2": lambda k: ZooWRN(16, 2, k),
    "wrn_40_1": lambda k: ZooWRN(40, 1, k),
    "vgg8": lambda k: ZooVGG([[64], [128], [256], [512], [512]], k),
    "vgg13": lambda k: ZooVGG([[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]], k),
}


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine terms, so a misplaced BN tensor changes the logits."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def zoo_model(name: str, classes: int = 100) -> nn.Module:
    torch.manual_seed(0)
    return randomise_batchnorm(ZOO_BUILDERS[name](classes))


def images(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def assert_same_logits(a: torch.Tensor, b: torch.Tensor) -> None:
    # same function, possibly another summation order for the global pool: float32 rounding only
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --- layouts --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ZOO_BUILDERS))
def test_teacher_zoo_checkpoint_gives_the_original_logits(name, tmp_path):
    zoo = zoo_model(name)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": zoo.state_dict(), "epoch": 240, "best_acc": torch.tensor(79.42)}, path)
    net, ckpt = model_from_checkpoint(str(path), name)
    assert ckpt["layout"] == "teacher-zoo" and ckpt["facts"]["epoch"] == 240
    assert ckpt["model"]["num_classes"] == 100  # read from the classifier
    x = images()
    assert_same_logits(logits(net, x), logits(zoo, x))


@pytest.mark.parametrize("layout", ["plain.pth", "nested_module.pt", "weights.safetensors", "ours.pt"])
def test_each_state_dict_layout_loads(layout, tmp_path):
    model = randomise_batchnorm(build_model("resnet20", 10))
    state = model.state_dict()
    path = tmp_path / layout
    if layout == "plain.pth":
        torch.save(state, path)
    elif layout == "nested_module.pt":  # DataParallel prefixes under a state_dict key, with extra facts
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3, "arch": "resnet20"}, path)
    elif layout == "weights.safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        atomic_save(base_record(model=model_record("resnet20", model, 10, 32)), path)
    net, _ = model_from_checkpoint(str(path), "resnet20")
    x = images()
    assert torch.equal(logits(net, x), logits(model, x))


def test_bn_counters_missing_from_old_files_are_tolerated(tmp_path):
    zoo = zoo_model("resnet20")
    state = {k: v for k, v in zoo.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"model": state}, tmp_path / "old.pth")
    net, _ = model_from_checkpoint(str(tmp_path / "old.pth"), "resnet20")
    assert_same_logits(logits(net, images()), logits(zoo, images()))


def test_cifar_resnet50_zoo_names(tmp_path):
    """The zoo's ResNet50 (resnetv2.py) is torchvision's Bottleneck ResNet with a 3x3 stem under other
    names: `shortcut` for `downsample`, `linear` for `fc`."""
    ours = randomise_batchnorm(build_model("resnet50", 100, 32))
    zoo_state = {}
    for key, value in ours.state_dict().items():
        key = "linear." + key[3:] if key.startswith("fc.") else key.replace(".downsample.", ".shortcut.")
        zoo_state[key] = value
    assert "layer1.0.shortcut.0.weight" in zoo_state and "linear.weight" in zoo_state
    torch.save({"model": zoo_state, "epoch": 240}, tmp_path / "r50.pth")
    net, ckpt = model_from_checkpoint(str(tmp_path / "r50.pth"), "resnet50", input_size=32)
    assert ckpt["layout"] == "teacher-zoo"
    assert torch.equal(logits(net, images()), logits(ours, images()))


# the paper variants use the zoo's names; these shapes are what the zoo's definitions produce
PAPER_SHAPES = {
    "mobile_half": {"conv1.0.weight": (16, 3, 3, 3), "blocks.0.0.conv.0.weight": (16, 16, 1, 1),
                    "blocks.0.0.conv.6.weight": (8, 16, 1, 1), "blocks.6.0.conv.7.weight": (160,),
                    "conv2.0.weight": (1280, 160, 1, 1), "classifier.0.weight": (100, 1280)},
    "shufflev1_paper": {"conv1.weight": (24, 3, 1, 1), "layer1.0.conv1.weight": (54, 24, 1, 1),
                        "layer1.0.conv3.weight": (216, 18, 1, 1), "layer2.0.conv1.weight": (60, 80, 1, 1),
                        "layer3.3.bn3.weight": (960,), "linear.weight": (100, 960)},
    "shufflev2_paper": {"conv1.weight": (24, 3, 1, 1), "layer1.0.conv1.weight": (24, 1, 3, 3),
                        "layer1.0.conv5.weight": (58, 58, 1, 1), "layer2.7.conv3.weight": (116, 116, 1, 1),
                        "conv2.weight": (1024, 464, 1, 1), "linear.weight": (100, 1024)},
}
PAPER_PARAMS = {"mobile_half": 0.81e6, "shufflev1_paper": 0.95e6, "shufflev2_paper": 1.36e6}  # papers' tables


@pytest.mark.parametrize("name", sorted(PAPER_SHAPES))
def test_paper_variants_have_the_zoo_layout(name, tmp_path):
    model = build_model(name, 100, 32)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in PAPER_SHAPES[name].items():
        assert shapes[key] == shape, key
    assert abs(sum(p.numel() for p in model.parameters()) - PAPER_PARAMS[name]) < 0.01e6
    randomise_batchnorm(model)
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "best_acc": 70.0},
               tmp_path / "s.pth")
    net, _ = model_from_checkpoint(str(tmp_path / "s.pth"), name)
    assert torch.equal(logits(net, images()), logits(model, images()))


def test_shipped_configs_use_the_paper_students():
    from sddcompress.engine.config import read_config_file, shipped_configs

    students = {read_config_file(n)["model"] for n in shipped_configs()}
    assert {"mobile_half", "shufflev1_paper", "shufflev2_paper"} <= students
    assert not students & {"mobilenetv2", "shufflenetv1", "shufflenetv2"}


# --- mismatches: one line naming the first offending tensor ---------------------------------------

def zoo_file(tmp_path, name="resnet20", classes=100) -> str:
    path = tmp_path / f"{name}.pth"
    torch.save({"model": zoo_model(name, classes).state_dict(), "epoch": 240, "best_acc": 70.0}, path)
    return str(path)


def test_wrong_architecture_names_the_first_missing_tensor(cli, tmp_path):
    result = cli("eval", "--ckpt", zoo_file(tmp_path, "resnet8x4"), "--model", "resnet20", "--data", "digits")
    assert_one_line_error(result, "does not fit 'resnet20'", "first: tensor 'conv1.weight' is (32, 3, 3, 3)",
                          "--model")
    deeper = cli("eval", "--ckpt", zoo_file(tmp_path, "resnet20"), "--model", "resnet32", "--data", "digits")
    assert_one_line_error(deeper, "missing tensor 'layer1.3.conv1.weight'")


def test_wrong_class_count_says_the_file_s(cli, tmp_path):
    result = cli("eval", "--ckpt", zoo_file(tmp_path), "--model", "resnet20", "--num-classes", "10", "--data", "digits")
    assert_one_line_error(result, "has 100 classes, not 10", "fc.weight")


def test_class_count_against_the_data(cli, tmp_path):
    assert_one_line_error(cli("eval", "--ckpt", zoo_file(tmp_path), "--model", "resnet20", "--data", "digits"),
                          "100 classes but digits has 10")


def test_foreign_file_without_model_asks_for_it(cli, tmp_path):
    assert_one_line_error(cli("eval", "--ckpt", zoo_file(tmp_path), "--data", "digits"), "pass --model NAME")
    assert_one_line_error(cli("eval", "--ckpt", zoo_file(tmp_path), "--model", "resnet18", "--data", "digits"),
                          "pass --input-size")


def test_extra_tensors_are_named(tmp_path):
    from sddcompress.errors import UserError

    state = zoo_model("resnet20").state_dict()
    state["projector.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(UserError, match="unexpected tensor 'projector.weight'"):
        model_from_checkpoint(str(tmp_path / "extra.pt"), "resnet20")


def test_non_finite_weights_are_refused(tmp_path):
    from sddcompress.errors import UserError

    state = zoo_model("resnet20").state_dict()
    state["fc.bias"][3] = float("nan")
    torch.save({"model": state}, tmp_path / "nan.pth")
    with pytest.raises(UserError, match="non-finite values in 'fc.bias'"):
        model_from_checkpoint(str(tmp_path / "nan.pth"), "resnet20")


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused_in_one_line(cli, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": Payload()}, path)
    assert_one_line_error(cli("eval", "--ckpt", str(path), "--model", "resnet20", "--data", "digits"),
                          "refused", "would run code", "system", "safetensors")
    raw = tmp_path / "evil_raw.pth"  # a bare protocol-4 pickle: never unpickled either
    with open(raw, "wb") as f:
        pickle.dump({"model": Payload()}, f)
    code, _, err = cli("eval", "--ckpt", str(raw), "--model", "resnet20", "--data", "digits")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "evil_raw.pth" in err


def test_teacher_zoo_file_as_distill_teacher(cli, tmp_path):
    """--teacher-ckpt reads zoo files through the same mapping (checked here up to the class count)."""
    from conftest import tiny_args

    result = cli("distill", "--teacher", "resnet20", "--teacher-ckpt", zoo_file(tmp_path), "--student", "resnet20",
                 "--method", "kd", "--out", str(tmp_path / "run"), *tiny_args())
    assert_one_line_error(result, "has 100 classes, not 10", "fc.weight")


# --- export of a foreign checkpoint --------------------------------------------------------------

def test_export_foreign_checkpoint_matches_the_original_model(cli, tmp_path):
    from sddcompress_export.onnxruntime_runner import OrtClassifier
    from sddcompress_export.tensor_file import save_tensor_file

    zoo = zoo_model("resnet8x4")
    ckpt = tmp_path / "resnet8x4_vanilla" / "ckpt_epoch_240.pth"
    ckpt.parent.mkdir()
    torch.save({"model": zoo.state_dict(), "epoch": 240, "best_acc": 79.42}, ckpt)
    x = images(24).numpy()
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    tensors = save_tensor_file(tmp_path / "cifar.npz", x[:8], x[8:], np.arange(16) % 100,
                               [f"c{i}" for i in range(100)], mean, std)
    code, out, err = cli("export", "--ckpt", str(ckpt), "--model", "resnet8x4", "--num-classes", "100",
                         "--input-size", "32", "--calib-file", str(tensors), "--out", str(tmp_path / "onnx"))
    assert code == 0, err
    onnx_logits = OrtClassifier(tmp_path / "onnx" / "model.onnx")(x[8:])
    np.testing.assert_allclose(onnx_logits, logits(zoo, torch.from_numpy(x[8:])).numpy(), rtol=1e-4, atol=1e-4)
    from sddcompress_export.metadata import read_metadata

    meta = read_metadata(tmp_path / "onnx" / "model.onnx")
    assert (meta.model_name, meta.input_size, meta.class_names[1]) == ("resnet8x4", 32, "c1")
    assert meta.mean == pytest.approx(list(mean)) and meta.std == pytest.approx(list(std))
    assert not math.isnan(meta.mean[0])


@pytest.mark.parametrize("name", ["cifar100_resnet50_mobilenetv2", "cifar100_resnet32x4_shufflenetv1",
                                  "cifar100_resnet32x4_shufflenetv2", "cifar100_vgg13_mobilenetv2"])
def test_paper_student_configs_split_at_their_scales(name):
    from sddcompress.engine.config import build_config, read_config_file
    from sddcompress.models import LocalLogits

    cfg = build_config(read_config_file(name), {}, set())
    scales = tuple(int(s) for s in cfg.scales.split(","))
    LocalLogits(build_model(cfg.model, 100, 32), 32, scales, cfg.model)  # raises if the last map is too small


# --- ImageNet-pretrained backbones through the torch hub cache -----------------------------------

def fake_imagenet_weights(hub_home, name="mobilenet_v3_small") -> tuple[dict, "object"]:
    """A state dict in the layout of torchvision's `name` weights, written where torch hub caches them."""
    from sddcompress.torchvision_compat import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    torch.manual_seed(3)
    state = randomise_batchnorm(torchvision.models.get_model(name, weights=None)).state_dict()
    folder = hub_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / weights.url.rsplit("/", 1)[-1])
    return state, weights


def test_pretrained_loads_every_backbone_tensor_and_a_fresh_head(tmp_path, monkeypatch):
    from sddcompress.models.foreign_checkpoints import head_keys
    from sddcompress.models.pretrained import build_pretrained

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state, _ = fake_imagenet_weights(tmp_path)
    model, result = build_pretrained("mobilenet_v3_small", 3, 224)
    head = head_keys(model)
    assert head == ["classifier.3.weight", "classifier.3.bias"]
    own = model.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own if k not in head)
    assert own["classifier.3.weight"].shape == (3, 1024) and state["classifier.3.weight"].shape == (1000, 1024)
    assert (result.head, result.loaded_tensors) == ("replaced", len(state) - 2)
    assert result.source == "torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    prep = result.preprocessing
    assert (prep.resize, prep.crop, prep.mean) == (256, 224, (0.485, 0.456, 0.406))


def test_pretrained_offline_without_the_file_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from conftest import tiny_args

    result = cli("train", "--model", "mobilenet_v3_small", "--pretrained", "--out", str(tmp_path / "run"),
                 *tiny_args())
    assert_one_line_error(result, "mobilenet_v3_small-047dcff4.pth", str(tmp_path / "empty" / "hub" / "checkpoints"))


def test_pretrained_downloads_into_the_hub_cache_when_online(tmp_path, monkeypatch):
    """Online, torch hub fetches the file once into its cache (the transfer itself is faked here)."""
    from urllib.error import URLError

    from sddcompress.errors import UserError
    from sddcompress.models.pretrained import build_pretrained

    source = tmp_path / "server"
    state, weights = fake_imagenet_weights(source)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    fetched = []

    def download(url, dst, hash_prefix=None, progress=True):
        fetched.append(url)
        (tmp_path / "home" / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
        os.link(source / "hub" / "checkpoints" / url.rsplit("/", 1)[-1], dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    build_pretrained("mobilenet_v3_small", 3, 224)
    build_pretrained("mobilenet_v3_small", 3, 224)
    assert fetched == [weights.url]  # the second build reads the cache

    def unreachable(url, dst, hash_prefix=None, progress=True):
        raise URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "other"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    with pytest.raises(UserError, match="could not be downloaded \\(Name or service not known\\): put "
                                        "mobilenet_v3_small-047dcff4.pth"):
        build_pretrained("mobilenet_v3_small", 3, 224)


def test_pretrained_is_refused_for_models_without_imagenet_weights():
    from sddcompress.errors import UserError
    from sddcompress.models.pretrained import build_pretrained

    with pytest.raises(UserError, match="'resnet8x4' has no ImageNet weights.*teacher-zoo"):
        build_pretrained("resnet8x4", 3, 32)


def test_pretrained_keeps_the_imagenet_stem_at_small_inputs(tmp_path, monkeypatch):
    """At 32 px the small-input stem would be re-initialised, so the published stem stays; SDD then
    says the last map is too small instead of training on a silently replaced stem."""
    from sddcompress.errors import UserError
    from sddcompress.models import LocalLogits
    from sddcompress.models.pretrained import build_pretrained

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state, _ = fake_imagenet_weights(tmp_path, "resnet18")
    model, _ = build_pretrained("resnet18", 3, 32)
    assert torch.equal(model.conv1.weight, state["conv1.weight"]) and model.conv1.kernel_size == (7, 7)
    assert build_model("resnet18", 3, 32).conv1.kernel_size == (3, 3)  # the from-scratch variant differs
    with pytest.raises(UserError, match="1x1 at 32 px"):
        LocalLogits(model, 32, (1, 2, 4), "resnet18")


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is an optional extra (sddcompress[timm])")
def test_timm_pretrained_offline_is_one_line_and_says_its_preprocessing(cli, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from sddcompress.models.pretrained import expected_preprocessing

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache, whatever this host has

    prep = expected_preprocessing("timm/resnet18")  # from timm's pretrained_cfg, no download
    assert (prep.crop, prep.resize, prep.interpolation) == (224, round(224 / 0.95), "bicubic")
    from conftest import tiny_args

    result = cli("train", "--model", "timm/resnet18", "--pretrained", "--out", str(tmp_path / "run"), *tiny_args())
    assert_one_line_error(result, "timm weights for 'timm/resnet18'", "model.safetensors", "Hugging Face cache",
                          str(tmp_path / "hf" / "models--timm--resnet18"), "hf download timm/resnet18")


def test_train_pretrained_end_to_end_records_weights_and_their_preprocessing(cli, tmp_path, monkeypatch):
    """train --pretrained: ImageNet statistics replace the data's own, the checkpoint says where the
    weights came from and rebuilds the published architecture for eval."""
    from conftest import tiny_args

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    fake_imagenet_weights(tmp_path)
    out = tmp_path / "run"
    code, stdout, err = cli("train", "--model", "mobilenet_v3_small", "--pretrained", "--out", str(out),
                            *tiny_args(max_train_batches=1))
    assert code == 0, err
    assert "classifier replaced for 10 classes" in stdout and "mean (0.485, 0.456, 0.406)" in stdout
    ckpt = load_checkpoint(out / "checkpoints" / "latest.pt")
    assert ckpt["pretrained"] == "torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert ckpt["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    # main's one preprocessing record (what eval, export, the ONNX metadata and deploy classify read): the
    # weights' statistics with the small-image geometry of a 16-px run
    assert ckpt["preprocessing"] == {"resize": 16, "crop": 16, "interpolation": "bilinear",
                                     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert ckpt["model"]["imagenet_stem"] is True
    net, _ = model_from_checkpoint(str(out / "checkpoints" / "latest.pt"))
    assert net.features[0][0].stride == (2, 2)  # the published stem, not the small-input variant
    from sddcompress.engine.checkpoint_eval import dataset_for_checkpoint

    assert dataset_for_checkpoint(ckpt, "digits", None, 16).mean == (0.485, 0.456, 0.406)  # eval/export see the same


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is an optional extra (sddcompress[timm])")
def test_timm_pretrained_from_a_hugging_face_cache_loads_every_backbone_tensor(tmp_path, monkeypatch):
    """`timm/NAME` weights placed in a temporary Hugging Face cache (the layout `hf download` writes) are read
    offline: every tensor but the classifier is the file's, the classifier is fresh for 3 classes."""
    import safetensors.torch
    from huggingface_hub import constants

    import sddcompress.torchvision_compat  # noqa: F401  (before timm imports torchvision)
    import timm
    from sddcompress.models.foreign_checkpoints import head_keys
    from sddcompress.models.pretrained import build_pretrained

    tag = "mobilenetv3_small_050.lamb_in1k"
    torch.manual_seed(5)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in timm.create_model(tag, pretrained=False).state_dict().items()}
    repo = tmp_path / "hub" / f"models--timm--{tag}"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    safetensors.torch.save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    model, result = build_pretrained("timm/mobilenetv3_small_050", 3, 224)
    head = head_keys(model)
    own = model.state_dict()
    assert head == ["classifier.weight", "classifier.bias"] and own["classifier.weight"].shape[0] == 3
    assert all(torch.equal(own[k], state[k]) for k in own if k not in head)
    assert (result.source, result.head, result.loaded_tensors) == (f"timm:{tag}", "replaced", len(state) - 2)
    prep = result.preprocessing  # timm's pretrained_cfg, as main's one preprocessing record
    assert (prep.resize, prep.crop, prep.interpolation, prep.mean) == (256, 224, "bicubic", (0.485, 0.456, 0.406))

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    from sddcompress.errors import UserError

    with pytest.raises(UserError, match=f"model.safetensors of timm/{tag}.*put {tmp_path / 'empty'}/models--timm--"):
        build_pretrained("timm/mobilenetv3_small_050", 3, 224)
