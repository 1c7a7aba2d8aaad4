from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hw1.data.device_batches import LoaderDataModule
from hw1.models.backbone import Backbone, make_head
from hw1.models.classifier import Classifier
from hw1.training.schedules import cosine_then_flat
from hw1.transforms.presets import eval_spec
from hw1.utils.errors import UserValueError

REPORT_HEADS = {
    "v0": [nn.Dropout, nn.Linear],
    "v1": [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear],
    "v2": [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear],
    "v3": [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear],
    "v4": [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout] * 3 + [nn.Linear],
}
REPORT_WIDTHS = {"v0": [], "v1": [500], "v2": [500, 250], "v3": [500, 250], "v4": [1024, 512, 256]}


def cfg(target: str, **kw):
    return {"_target_": target, **kw}


def classifier(arch="resnet18", head="v1", classes=10, **model_kw) -> Classifier:
    return Classifier(
        model=cfg("hw1.models.backbone.Backbone", arch=arch, weights=None, **model_kw),
        head=cfg("hw1.models.backbone.make_head", name=head, dropout=0.5),
        optim=cfg("torch.optim.AdamW", _partial_=True, lr=1e-3),
        sched=cfg("hw1.training.schedules.cosine_then_flat", _partial_=True, T_max=10),
        class_names=[str(i) for i in range(classes)],
    )


@pytest.mark.parametrize("name", REPORT_HEADS)
def test_heads_have_the_reports_layers_and_shape(name):
    head = make_head(
        name, in_features=64, num_classes=7, dropout=0.3 if name != "v4" else [0.5, 0.4, 0.3]
    )
    assert [type(m) for m in head] == REPORT_HEADS[name]
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == REPORT_WIDTHS[name] + [7]
    assert linears[0].in_features == 64
    dropouts = [m.p for m in head if isinstance(m, nn.Dropout)]
    assert dropouts == ([0.5, 0.4, 0.3] if name == "v4" else [0.3])
    head.eval()
    assert head(torch.randn(3, 64)).shape == (3, 7)


def test_unknown_head_is_a_clear_error():
    with pytest.raises(ValueError, match="v0, v1, v2, v3, v4"):
        make_head("v9", 8, 2)


def test_resnext101_v1_has_the_reports_parameter_count():
    with torch.device("meta"):  # the count, without allocating 88 M parameters
        model = classifier("resnext101_32x8d", "v1", classes=100)
    assert sum(p.numel() for p in model.parameters()) == 87_816_936


@pytest.mark.parametrize("n", [0, 1, 2, 4])
def test_trainable_stages_freeze_the_early_stages_and_their_batchnorm(n):
    model = classifier(trainable_stages=n)
    frozen = {"conv1", "bn1", *["layer1", "layer2", "layer3", "layer4"][: 4 - n]}
    model.train()
    checked_bn = 0
    for name, module in model.backbone.net.named_children():
        if name in ("avgpool", "fc", "relu", "maxpool"):
            continue
        grads = {p.requires_grad for p in module.parameters()}
        assert grads == {name not in frozen}, name
        bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(bn.training == (name not in frozen) for bn in bns), name
        checked_bn += len(bns)
    assert checked_bn == 20  # resnet18: bn1 + 2 per block x 8 blocks + 3 downsample
    assert all(p.requires_grad for p in model.head.parameters())


def test_frozen_batchnorm_keeps_its_running_statistics_while_training():
    model = classifier(trainable_stages=1)
    model.train()
    before = model.backbone.net.layer1[0].bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32) * 5 + 3)
    assert torch.equal(model.backbone.net.layer1[0].bn1.running_mean, before)
    assert not torch.equal(model.backbone.net.layer4[0].bn1.running_mean, torch.zeros(512))


def test_all_stages_trainable_by_default():
    model = classifier()
    assert all(p.requires_grad for p in model.parameters())


def test_bad_trainable_stages_is_a_clear_error():
    with pytest.raises(ValueError, match="trainable_stages=5"):
        Backbone("resnet18", trainable_stages=5)


def test_cosine_then_flat_follows_cosine_then_holds_eta_min():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = cosine_then_flat(opt, T_max=8, eta_min=1e-5)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1e-5 + (1e-4 - 1e-5) * (1 + math.cos(math.pi * e / 8)) / 2 for e in range(9)]
    assert lrs[:9] == pytest.approx(expected)
    assert lrs[8:] == pytest.approx([1e-5] * 4)  # torch's CosineAnnealingLR would climb here


def test_warmup_rises_linearly_then_the_cosine_runs_to_t_max():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = cosine_then_flat(opt, T_max=8, eta_min=1e-5, warmup_epochs=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == pytest.approx([1e-4 / 3, 2e-4 / 3])
    cosine = [1e-5 + 9e-5 * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(7)]
    assert lrs[2:9] == pytest.approx(cosine) and lrs[9] == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="sched.warmup_epochs=8"):
        cosine_then_flat(opt, T_max=8, warmup_epochs=8)


def test_backbone_learning_rate_is_a_fraction_of_the_heads():
    model = classifier()
    model.hparams.backbone_lr_factor = 0.1
    opt = model.configure_optimizers()
    head, backbone = opt["optimizer"].param_groups
    assert (head["lr"], backbone["lr"]) == (pytest.approx(1e-3), pytest.approx(1e-4))
    assert {id(p) for p in head["params"]} == {id(p) for p in model.head.parameters()}
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    for _ in range(5):
        opt["optimizer"].step()
        opt["lr_scheduler"]["scheduler"].step()
    assert backbone["lr"] == pytest.approx(0.1 * head["lr"])  # both follow one curve


def test_with_every_option_off_the_optimizer_is_the_reports():
    model = classifier()
    (group,) = model.configure_optimizers()["optimizer"].param_groups
    assert group["lr"] == 1e-3 and len(group["params"]) == len(list(model.parameters()))
    assert isinstance(model.criterion, nn.CrossEntropyLoss) and model.criterion.label_smoothing == 0


def test_label_smoothing_changes_the_training_loss_not_val_loss():
    smooth = cfg("torch.nn.CrossEntropyLoss", label_smoothing=0.2)
    model = Classifier(**{**classifier().hparams, "loss": smooth}).eval()
    assert model.criterion.label_smoothing == 0.2
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits = model(x)
    plain = nn.functional.cross_entropy(logits, y)
    assert not torch.isclose(model.criterion(logits, y), plain)
    logged = {}
    model.log = lambda name, value, **_: logged.__setitem__(name, value)
    with torch.no_grad():
        model.validation_step((x, y), 0)
    assert torch.isclose(logged["val/loss"], plain)


def test_freeze_backbone_leaves_it_unchanged_for_its_epochs_then_trains_it():
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from hw1.training.callbacks import FreezeBackbone

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(16, 3, 32, 32), torch.arange(16) % 10), 8)
    model = classifier()
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def fit(epochs: int) -> dict[str, torch.Tensor]:
        trainer = L.Trainer(
            max_epochs=epochs, callbacks=[FreezeBackbone(epochs=1)], logger=False,
            enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
        )  # fmt: skip
        trainer.fit(model, data)
        return model.state_dict()

    after_one = fit(1)
    backbone = [k for k in start if k.startswith("backbone.")]
    assert all(torch.equal(after_one[k], start[k]) for k in backbone)  # BN statistics too
    assert not torch.equal(after_one["head.0.weight"], start["head.0.weight"])
    model = classifier()
    model.load_state_dict(start)
    after_two = fit(2)
    assert not all(torch.equal(after_two[k], start[k]) for k in backbone)
    # While frozen, the backbone is in the optimizer all the same (one group, as without),
    # its parameters require gradients (DDP registers only those that do) and its
    # BatchNorm layers are in eval mode, whatever train() says.
    model.backbone.hold(True)
    model.train()
    assert all(p.requires_grad for p in model.backbone.parameters())
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    (group,) = model.configure_optimizers()["optimizer"].param_groups
    assert len(group["params"]) == len(list(model.parameters()))


def _uint8_batches(n: int = 2, batch: int = 4, size: int = 32):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n * batch, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n * batch,), generator=g)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=batch
    )


@pytest.mark.parametrize(
    ("precision", "channels_last"), [("bf16-mixed", False), ("32-true", True), ("bf16-mixed", True)]
)
def test_bf16_and_channels_last_training_steps_run_on_the_cpu(precision, channels_last):
    import lightning as L

    model = classifier(channels_last=channels_last)
    before = model.head[0].weight.detach().clone()
    trainer = L.Trainer(
        accelerator="cpu", precision=precision, fast_dev_run=True, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=LoaderDataModule(eval_spec(32), _uint8_batches()))
    assert not torch.equal(model.head[0].weight, before)  # an optimizer step happened
    if channels_last:
        assert model.backbone.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        probs = model.eval().predict_probs(torch.randn(2, 3, 32, 32))
    assert probs.shape == (2, 10) and torch.allclose(probs.sum(1), torch.ones(2))


def test_16_true_with_adamws_default_eps_is_refused_before_any_step():
    """AdamW's eps of 1e-8 is 0 in float16: the first step would divide by it."""
    import lightning as L

    model = classifier()
    before = model.head[0].weight.detach().clone()
    trainer = L.Trainer(
        accelerator="cpu", precision="16-true", fast_dev_run=True, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with pytest.raises(UserValueError, match=r"optim\.eps=1e-08 is 0 in torch\.float16.*16-mixed"):
        trainer.fit(model, datamodule=LoaderDataModule(eval_spec(32), _uint8_batches()))
    weight = model.head[0].weight
    assert torch.equal(weight, before.to(weight.dtype))  # converted, never stepped


def test_compile_wires_through_and_keeps_the_state_dict_keys(monkeypatch):
    """The flag compiles the network in place with the configured backend, so checkpoints
    keep their keys (tests/test_compile.py compiles for real)."""
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **k: compiled.append((self, k)))
    model = classifier(compile=True, compile_backend="aot_eager")
    assert compiled == [(model.backbone.net, {"backend": "aot_eager"})]
    assert set(model.state_dict()) == set(classifier().state_dict())


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixup_and_cutmix_train_on_soft_targets(mixup, cutmix):
    mix = cfg("hw1.transforms.mix.BatchMix", mixup_alpha=mixup, cutmix_alpha=cutmix, prob=1.0)
    model = Classifier(**{**classifier().hparams, "mix": mix})
    seen = {}
    # returns None: the loss stays the criterion's (a hook's return value would replace it)
    model.criterion.register_forward_hook(lambda m, args, out: seen.update(y=args[1]))
    model.log = lambda *a, **k: None
    # Seeded: Beta(0.2, 0.2) draws a weight that rounds to 1 (no mixing) 1 time in 15.
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    model.training_step((x, y), 0)
    soft = seen["y"]
    assert soft.shape == (4, 10) and torch.allclose(soft.sum(dim=1), torch.ones(4))
    assert (soft.max(dim=1).values < 1).any()  # mixed: no longer one-hot


def test_without_mixing_the_targets_stay_class_indices():
    model = classifier()
    assert model.mix is None
    off = Classifier(**{**classifier().hparams, "mix": cfg("hw1.transforms.mix.BatchMix")})
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    assert off.mix(x, y)[1] is y
