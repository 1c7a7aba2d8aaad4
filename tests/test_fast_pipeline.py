"""The fast pipeline (data.pipeline=fast) against the reference, torchvision's transforms."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import photo
from PIL import ExifTags, Image
from torchvision import transforms as V1
from torchvision.transforms.v2.functional import to_pil_image

from hw1.benchmarks.parity import device_steps_on, reference_apply
from hw1.data.datamodule import train_pipeline
from hw1.reporting.figures import to_uint8
from hw1.transforms.decode import load_rgb
from hw1.transforms.fast_pipeline import (
    DECODE_MARGIN,
    Deferred,
    DraftDecoder,
    Draw,
    FastTrainPreset,
    deferred_steps,
    finish,
)
from hw1.transforms.presets import eval_spec

# The mean level apart that the fast pipeline's outputs may be from the reference's, where
# its steps are the same: the old one-warp pipeline was 1.1-1.6 levels apart on photos.
MEAN_TOLERANCE = 0.05


DEMO = {"scale": (0.8, 1.0), "jitter": (0.2, 0.2, 0, 0), "rotation": 0, "translate": (0, 0)}


@pytest.mark.parametrize(
    "draw",
    [
        Draw((20, 10, 100, 80), False, 0.0, (0, 0), (), (1, 1, 1, 0)),
        Draw((20, 10, 100, 80), True, 8.0, (0, 0), (), (1, 1, 1, 0)),
        Draw((20, 10, 100, 80), True, -9.0, (3, -4), (), (1, 1, 1, 0)),
        Draw((5, 5, 30, 20), False, 5.0, (-2, 2), (), (1, 1, 1, 0)),  # enlarged
        Draw((0, 0, 160, 120), False, 0.0, (0, 0), (3, 1, 0, 2), (0.8, 1.2, 1.15, 0.05)),
        Draw((0, 0, 160, 120), False, 0.0, (0, 0), (1, 0), (1.2, 0.8, 1.0, 0.0)),
        # contrast below 1 lifts black: the fill must stay black, the mean be the crop's
        Draw((20, 10, 100, 80), True, 9.0, (5, -3), (2, 1, 0), (0.85, 0.8, 1.2, 0.0)),
    ],
)
def test_fast_steps_match_the_reference_for_the_same_parameters(draw):
    """Crop, resize, flip, the colour jitter, rotation and shift (black bands and corners
    included): the reference's own steps, but for the resize's rounding (a level at most,
    which a later step may widen)."""
    fast = FastTrainPreset(eval_spec(48)).apply(np.array(photo()), draw, (160, 120))
    reference = reference_apply(photo(), draw, 48).float()
    diff = (finish(fast).float() - reference).abs()
    assert diff.mean() < MEAN_TOLERANCE and diff.max() <= 4, (diff.mean(), diff.max())


@pytest.mark.parametrize(
    "order, factors",
    [
        ((0,), (1.2, 1, 1, 0)),
        ((1,), (1, 0.8, 1, 0)),
        ((2,), (1, 1, 1.2, 0)),
        ((3,), (1, 1, 1, 0.1)),
        ((3,), (1, 1, 1, -0.07)),
        ((3, 1, 0, 2), (1.15, 0.8, 1.2, 0.07)),
        ((2, 0, 3, 1), (0.85, 1.2, 0.8, -0.1)),
    ],
)
def test_the_deferred_jitter_takes_pils_steps(order, factors):
    """On the reference's own crop, the jitter the model applies on its device
    (Deferred.render) gives the reference's ColorJitter steps on PIL (ImageEnhance, PIL's
    HSV), in the drawn order: brightness, contrast and saturation exactly (PIL's
    fixed-point grey, its mean rounded half up), hue within PIL's rounding."""
    image = photo(seed=1)
    draw = Draw((0, 0, 160, 120), False, 0.0, (0, 0), order, factors)
    plain = reference_apply(image, replace(draw, jitter_order=()), 48)
    got = device_steps_on(plain, draw).float()
    reference = reference_apply(image, draw, 48).float()
    if factors[3] == 0:  # no hue: PIL's integer steps to the level
        assert torch.equal(got, reference)
    assert (got - reference).abs().mean() < 0.05
    assert (got - reference).abs().max() <= 4


def test_the_deferred_sample_is_the_references_crop_and_the_device_turns_it_as_pil():
    """The worker's part is the reference's RandomResizedCrop and flip (within the resize's
    rounding); the device's part, from that crop, jitters before it turns and shifts, so
    contrast below 1 does not lift the black corners and bands: they are where the
    reference's are."""
    fast = FastTrainPreset(eval_spec(48))
    draw = Draw((20, 10, 100, 80), True, 9.0, (5, -3), (2, 1, 0), (0.85, 0.8, 1.2, 0.0))
    deferred = fast.apply(np.array(photo()), draw, (160, 120))
    assert isinstance(deferred, Deferred) and deferred.image.shape == (48, 48, 3)
    crop = reference_apply(photo(), replace(draw, jitter_order=(), angle=0.0, shift=(0, 0)), 48)
    assert (deferred.image.permute(2, 0, 1).int() - crop.int()).abs().max() <= 1
    got, reference = finish(deferred), reference_apply(photo(), draw, 48)
    black = (reference == 0).all(dim=0)
    assert black[:, :5].all() and black[-3:].all() and black.float().mean() > 0.15
    assert ((got == 0).all(dim=0) != black).float().mean() < 0.01


@pytest.mark.parametrize("augment", [{}, DEMO, {"jitter": (0, 0, 0.3, 0.1), "translate": (0, 0)}])
def test_finished_here_the_steps_are_the_references_own_and_the_devices_within_a_level(augment):
    """For a CPU run the worker finishes the image (finish_here): from the same resized
    crop the reference's PIL steps to the level, parts it does not jitter skipped; the
    device's float steps within a level at a few pixels."""
    fast = FastTrainPreset(eval_spec(48), **augment)
    image = photo(seed=2)
    torch.manual_seed(0)
    for _ in range(4):
        draw = fast.draw(*image.size)
        here = fast.apply(np.array(image), draw, image.size, finish_here=True)
        deferred = fast.apply(np.array(image), draw, image.size)
        assert here.shape == (3, 48, 48) and here.dtype == torch.uint8 and here.is_contiguous()
        crop = deferred.image.permute(2, 0, 1)
        skipped = [op for op in draw.jitter_order if fast.jitter[op]]
        steps = replace(draw, box=(0, 0, 48, 48), flip=False, jitter_order=tuple(skipped))
        assert torch.equal(here, reference_apply(to_pil_image(crop), steps, 48))
        apart = (here.float() - finish(deferred).float()).abs()
        assert apart.mean() < MEAN_TOLERANCE and apart.max() <= 4, (apart.mean(), apart.max())


def test_without_steps_the_deferred_image_is_unchanged_and_a_batch_is_its_samples():
    """The identity steps leave every pixel as it is, and a collated batch of samples
    with their own jitter, angle and shift gives each sample's own result."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8, generator=g)
    identity = deferred_steps(Draw((0, 0, 8, 8), False, 0, (0, 0), (), (1, 1, 1, 0)))
    batch = Deferred(images, identity.expand(3, -1))
    assert torch.equal(batch.render(), images.permute(0, 3, 1, 2).float())
    draws = [
        Draw((0, 0, 8, 8), False, 7.5, (2, -1), (1, 0, 3, 2), (1.1, 0.85, 0.9, -0.05)),
        Draw((0, 0, 8, 8), False, -3.0, (0, 0), (2, 3, 1, 0), (0.8, 1.2, 1.1, 0.08)),
        Draw((0, 0, 8, 8), False, 0, (0, 0), (), (1, 1, 1, 0)),
    ]
    samples = [Deferred(images[i], deferred_steps(d)) for i, d in enumerate(draws)]
    collated = torch.utils.data.default_collate(samples)
    assert isinstance(collated, Deferred)
    apart = collated.render() - torch.stack([s.render() for s in samples])
    assert apart.abs().max() <= 1 and apart.abs().mean() < 0.01
    assert torch.equal(collated.render()[2], images[2].permute(2, 0, 1).float())


@pytest.mark.parametrize("augment", [{}, DEMO, {"translate": (0.1, 0.0), "hflip": 0}])
def test_one_seed_gives_both_pipelines_the_same_image_and_leaves_the_same_generator(augment):
    """The fast pipeline draws with the reference's own calls in its order: under one seed
    the outputs agree (within the resize's rounding) and the generator ends in one state,
    so a seed pairs the two pipelines' runs."""
    spec = eval_spec(48)
    fast = train_pipeline("fast", spec, **augment)
    reference = train_pipeline("reference", spec, **augment)
    image = photo(160, 120, seed=3)
    for seed in range(6):
        torch.manual_seed(seed)
        got, after_fast = fast(image).float(), torch.rand(1)
        torch.manual_seed(seed)
        expected, after_reference = to_uint8(reference(image), spec).float(), torch.rand(1)
        assert (got - expected).abs().mean() < 0.05, (seed, (got - expected).abs().mean())
        assert after_fast == after_reference


def _agree(fast: list[float], reference: list[float], mean_tol: float, std_rel: float = 0.15):
    f, r = np.asarray(fast, dtype=float), np.asarray(reference, dtype=float)
    assert abs(f.mean() - r.mean()) < mean_tol, (f.mean(), r.mean())
    assert abs(f.std() / r.std() - 1) < std_rel, (f.std(), r.std())


def test_fast_draws_the_reference_parameter_distribution():
    """400 draws of each: crop scale and aspect ratio, rotation, shift and the jitter
    factors agree with torchvision's own get_params (means within ~3 standard errors,
    spreads within 15 %)."""
    n, (width, height), size = 400, (500, 375), 224
    fast = FastTrainPreset(eval_spec(size))
    torch.manual_seed(0)
    draws = [fast.draw(width, height) for _ in range(n)]
    torch.manual_seed(1)
    image = torch.empty(3, height, width)
    rrc = [V1.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(n)]
    angles = [V1.RandomRotation.get_params([-10.0, 10.0]) for _ in range(n)]
    shifts = [
        V1.RandomAffine.get_params([0.0, 0.0], [0.1, 0.1], None, None, [size, size])[1]
        for _ in range(n)
    ]
    factor = (0.8, 1.2)
    jitters = [V1.ColorJitter.get_params(factor, factor, factor, (-0.1, 0.1)) for _ in range(n)]

    area = width * height
    _agree([d.box[2] * d.box[3] / area for d in draws], [w * h / area for _, _, h, w in rrc], 0.06)
    _agree(
        [math.log(d.box[2] / d.box[3]) for d in draws],
        [math.log(w / h) for _, _, h, w in rrc],
        0.04,
    )
    _agree([d.angle for d in draws], angles, 1.5)
    for axis in (0, 1):
        _agree([d.shift[axis] for d in draws], [s[axis] for s in shifts], 3.0)
    for k in range(4):
        _agree([d.jitter[k] for d in draws], [j[k + 1] for j in jitters], 0.03 if k < 3 else 0.015)
    for op in range(4):  # each jitter equally often in each position
        position = [j[0].tolist().index(op) for j in jitters]
        _agree([d.jitter_order.index(op) for d in draws], position, 0.25)
    assert 0.4 < np.mean([d.flip for d in draws]) < 0.6


def test_fast_colour_statistics_agree_with_the_reference():
    """Jitter only (no geometry), 200 outputs of each pipeline on a photo-like image: the
    mean colour, how far the jitter spreads it, and the contrast agree."""
    spec = eval_spec(32)
    kw = {"scale": (1.0, 1.0), "hflip": 0, "rotation": 0, "translate": (0, 0)}
    fast, reference = train_pipeline("fast", spec, **kw), train_pipeline("reference", spec, **kw)
    image = photo(128, 96, seed=2)
    torch.manual_seed(0)
    f = torch.stack([fast(image) for _ in range(200)]).float()
    r = to_uint8(torch.stack([reference(image) for _ in range(200)]), spec).float()
    for c in range(3):
        _agree(f[:, c].mean(dim=(1, 2)), r[:, c].mean(dim=(1, 2)), 3.0, 0.2)
    _agree(f.std(dim=(1, 2, 3)), r.std(dim=(1, 2, 3)), 3.0, 0.2)


def test_draft_decoding_never_gives_a_crop_smaller_than_twice_the_output(tmp_path):
    """JPEGs upright and EXIF-turned a quarter: the decoded crop box always covers twice
    the output size (or the whole box, when the box itself is smaller), and draft mode does
    reduce the decode when the crop allows it."""
    size = 48
    fast = FastTrainPreset(eval_spec(size))
    upright = tmp_path / "upright.jpg"
    photo(640, 480).save(upright, quality=90)
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored 640x480, shown 480x640
    photo(640, 480).save(turned, quality=90, exif=exif)
    reduced = 0
    torch.manual_seed(0)
    for path, full in ((upright, (640, 480)), (turned, (480, 640))):
        for _ in range(60):
            seen = {}

            def need(shown, seen=seen):
                seen["size"], seen["draw"] = shown, fast.draw(*shown)
                return fast.decode_size(seen["draw"], *shown)

            image = load_rgb(path, draft=need)
            assert seen["size"] == full
            _, _, w, h = seen["draw"].box
            kx, ky = image.width / full[0], image.height / full[1]
            assert abs(kx - ky) < 0.01  # the same scale both ways: still upright
            least = DECODE_MARGIN * size
            assert w * kx >= min(least, w) - 1e-6 and h * ky >= min(least, h) - 1e-6
            reduced += image.width < full[0]
    assert reduced > 30


def test_fast_pipeline_repeats_under_the_same_seed(tmp_path):
    path = tmp_path / "a.jpg"
    photo().save(path, quality=90)
    decode = DraftDecoder(FastTrainPreset(eval_spec(32)))
    torch.manual_seed(3)
    first = finish(decode(path))
    torch.manual_seed(3)
    assert torch.equal(finish(decode(path)), first)


def test_erasing_on_the_fast_pipeline_fills_with_the_mean_colour():
    torch.manual_seed(0)
    fast = FastTrainPreset(eval_spec(32), scale=(1, 1), jitter=(0, 0, 0, 0), rotation=0,
                           translate=(0, 0), hflip=0, erasing=1.0)  # fmt: skip
    out = fast(Image.new("RGB", (32, 32), (255, 255, 255)))
    erased = (out != 255).all(dim=0)
    assert erased.any()
    assert out[:, erased].unique(dim=1).T.tolist() == [[124, 116, 104]]  # ImageNet's mean


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF", "JPEG"])
def test_exif_turned_images_of_every_format_get_the_references_geometry(tmp_path, fmt):
    """An image stored 120 x 40 with EXIF orientation 6 is 40 x 120 upright, whatever its
    format: the fast pipeline draws its crop for that size, and its output matches the
    reference's steps on the upright image with the same parameters."""
    upright = photo(40, 120, seed=1)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # shown turned a quarter clockwise
    path = tmp_path / f"turned.{fmt.lower()}"
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what orientation 6 turns back
    options = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    stored.save(path, format=fmt, exif=exif, **options)
    assert load_rgb(path).size == (40, 120)
    fast = FastTrainPreset(eval_spec(32), jitter=(0, 0, 0, 0), rotation=0, translate=(0, 0))
    decode = DraftDecoder(fast)
    for seed in range(8):
        torch.manual_seed(seed)
        draw = fast.draw(40, 120)
        torch.manual_seed(seed)
        out = finish(decode(path)).float()
        reference = reference_apply(load_rgb(path), draw, 32).float()
        assert (out - reference).abs().mean() < 4, (seed, draw)
