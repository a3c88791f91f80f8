"""Student networks: shapes for both architectures, odd sizes, gradient flow, errors, pretrained loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from monai.networks.nets import BasicUNet
from torch import nn

from semisam.config.schema import StudentConfig
from semisam.student.unet import TimmUNet, build_student

SMALL = [4, 8, 16, 32, 64]
ARCHS = [
    ("basic_unet", "resnet18"),
    ("res_unet", "resnet18"),
    ("timm_unet", "resnet18"),
    ("timm_unet", "efficientnet_b0"),
]


def _cfg(arch: str, encoder: str = "resnet18", **kw) -> StudentConfig:
    return StudentConfig(arch=arch, encoder=encoder, features=list(SMALL), **kw)


@pytest.mark.parametrize(("arch", "encoder"), ARCHS)
@pytest.mark.parametrize("in_channels", [1, 3, 5])
def test_output_shape_any_size(arch, encoder, in_channels):
    torch.manual_seed(0)
    net = build_student(_cfg(arch, encoder), in_channels, 4).eval()
    with torch.no_grad():
        for h, w in [(64, 64), (37, 53), (16, 16)]:
            y = net(torch.randn(2, in_channels, h, w))
            assert y.shape == (2, 4, h, w)
            assert y.dtype == torch.float32
            assert torch.isfinite(y).all()


@pytest.mark.parametrize(("arch", "encoder"), ARCHS)
def test_gradients_reach_every_parameter(arch, encoder):
    torch.manual_seed(0)
    net = build_student(_cfg(arch, encoder), 3, 3).train()
    # timm zero-initialises the last norm weight of each residual block (zero_init_last), which makes the
    # gradients of the rest of the block exactly 0 at step 0; give every norm a nonzero scale first.
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
    y = net(torch.randn(2, 3, 37, 53))
    (y * torch.randn_like(y)).sum().backward()
    params = dict(net.named_parameters())
    assert params
    missing = [n for n, p in params.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reached {missing}"
    assert all(torch.isfinite(p.grad).all() for p in params.values())


def test_timm_unet_odd_size_keeps_the_last_row_and_column():
    # Odd sizes are zero-padded to a multiple of 32 and cropped back: the output keeps the input's size and
    # the last pixel of the input is seen (changing it changes the logits there).
    torch.manual_seed(0)
    net = build_student(_cfg("timm_unet"), 1, 2).eval()
    x = torch.randn(1, 1, 37, 53)
    with torch.no_grad():
        a = net(x)
        x2 = x.clone()
        x2[..., 36, 52] += 5.0
        b = net(x2)
    assert a.shape == (1, 2, 37, 53)
    assert not torch.equal(a[..., 36, 52], b[..., 36, 52])


def test_basic_unet_is_monai_with_ssl4mis_widths_and_batch_norm():
    net = build_student(_cfg("basic_unet", dropout=0.3), 2, 3)
    assert isinstance(net, BasicUNet)
    assert net.conv_0.conv_0.conv.in_channels == 2
    assert [net.conv_0.conv_1.conv.out_channels] + [
        getattr(net, f"down_{i}").convs.conv_1.conv.out_channels for i in range(1, 5)
    ] == SMALL
    assert net.upcat_1.convs.conv_1.conv.out_channels == SMALL[0]  # the 6th width = features[0]
    assert net.final_conv.out_channels == 3
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    drops = [m.p for m in net.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(p == 0.3 for p in drops)


@pytest.mark.parametrize(("norm", "layer"), [("batch", nn.BatchNorm2d), ("instance", nn.InstanceNorm2d)])
def test_res_unet_is_monai_unet_with_residual_units_and_the_chosen_norm(norm, layer):
    from monai.networks.blocks import ResidualUnit
    from monai.networks.nets import UNet

    from semisam.student.unet import ResUNet

    net = build_student(_cfg("res_unet", norm=norm, res_units=2), 3, 2)
    assert isinstance(net, ResUNet) and isinstance(net.net, UNet) and net.stride == 16
    assert any(isinstance(m, layer) for m in net.modules())
    other = nn.InstanceNorm2d if layer is nn.BatchNorm2d else nn.BatchNorm2d
    assert not any(isinstance(m, other) for m in net.modules())
    assert sum(isinstance(m, ResidualUnit) for m in net.modules()) > 0
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 3 and sorted({c.out_channels for c in convs})[-1] == SMALL[-1]


def test_instance_norm_makes_a_prediction_independent_of_its_batch():
    """No running statistics: an image's logits do not depend on which images share its batch, in train or eval
    mode (the batch-norm variance shift and the mixed-batch problem cannot arise)."""
    torch.manual_seed(0)
    net = build_student(_cfg("res_unet", norm="instance"), 1, 2)
    x = torch.randn(4, 1, 32, 32)
    for mode in (net.train, net.eval):
        mode()
        with torch.no_grad():
            alone = net(x[:1])
            together = net(torch.cat([x[:1], 5 * x[1:] + 3]))[:1]
        torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-4)


def test_timm_unet_decoder_widths_follow_features():
    net = build_student(_cfg("timm_unet", "resnet18"), 3, 2)
    assert isinstance(net, TimmUNet)
    assert net.encoder.feature_info.reduction() == [2, 4, 8, 16, 32]
    # decoder stage outputs at reductions 16, 8, 4, 2 -> features[4], [3], [2], [1]; full resolution -> [0]
    widths = [stage.convs.conv_1.conv.out_channels for stage in net.decoder]
    assert widths == [64, 32, 16, 8]
    assert net.head[-1].in_channels == 4 and net.head[-1].out_channels == 2


def test_timm_unet_four_level_encoder():
    # ConvNeXt's first feature is at reduction 4: the final stage upsamples 4x.
    net = build_student(_cfg("timm_unet", "convnext_atto"), 1, 2).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 37, 53)).shape == (1, 2, 37, 53)


def test_unknown_encoder_names_it_and_hints():
    with pytest.raises(ValueError, match=r"resnet181.*timm\.list_models") as info:
        build_student(_cfg("timm_unet", "resnet181"), 1, 2)
    assert "resnet18" in str(info.value).split("did you mean", 1)[1]


def test_bad_arch_and_features():
    with pytest.raises(ValueError, match=r"student\.arch"):
        build_student(_cfg("vnet"), 1, 2)
    with pytest.raises(ValueError, match="5 widths"):
        build_student(StudentConfig(arch="basic_unet", features=[4, 8, 16]), 1, 2)
    with pytest.raises(ValueError, match="positive"):
        build_student(StudentConfig(arch="timm_unet", features=[4, 0, 16, 32, 64]), 1, 2)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, with the Hub in offline mode (no network is tried)."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    return tmp_path


def test_pretrained_offline_fails_with_instructions(hf_cache):
    with pytest.raises(RuntimeError, match=r"resnet18.*pretrained=false") as info:
        build_student(StudentConfig(arch="timm_unet", encoder="resnet18", pretrained=True), 1, 2)
    assert "HF_HUB_OFFLINE" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)  # timm / huggingface_hub's own error is kept


def test_pretrained_loads_from_local_hub_cache(hf_cache):
    # The instructions in the error above work: weights placed in the Hub cache load offline.
    from safetensors.torch import save_file

    name = "resnet10t"
    repo_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False)
    commit = "0" * 40
    repo = hf_cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, snapshot / "model.safetensors")

    torch.manual_seed(1)  # a different random init, so equality below proves the weights were loaded
    net = build_student(StudentConfig(arch="timm_unet", encoder=name, pretrained=True, features=SMALL), 1, 2)
    assert torch.equal(net.encoder.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)
    # timm adapts the RGB stem to 1 channel by summing over the input channels
    assert torch.allclose(net.encoder.conv1[0].weight, reference.conv1[0].weight.sum(1, keepdim=True))


def test_dropout_before_batch_norm_warns(caplog):
    with caplog.at_level("WARNING", logger="semisam"):
        build_student(_cfg("basic_unet", dropout=0.0), 1, 2)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="semisam"):
        build_student(_cfg("basic_unet", dropout=0.1), 1, 2)
    assert "variance shift" in caplog.text and "student.dropout=0.1" in caplog.text


@pytest.mark.parametrize("protocol", ["acdc/3_mean_teacher.yaml", "kvasir/10_semisam.yaml"])
def test_shipped_student_has_no_dropout(protocol):
    # Dropout before batch norm collapsed the mean teacher's eval Dice on ACDC-3 (configs/student/unet.yaml).
    from semisam.config.loader import load_config

    cfg = load_config([Path(__file__).parents[1] / "configs" / protocol])
    net = build_student(cfg.student, 1, cfg.data.num_classes)
    assert cfg.student.dropout == 0
    assert not [m for m in net.modules() if isinstance(m, nn.Dropout) and m.p > 0]
