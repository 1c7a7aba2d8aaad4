"""The parity harness (hw1.parity): same parameters, both pipelines, on real files."""

from __future__ import annotations

from conftest import photo

from hw1.benchmarks.parity import compare, make_jpegs, measure, table
from hw1.parity import main
from hw1.transforms.decode import load_rgb
from hw1.transforms.fast_pipeline import Draw, FastTrainPreset
from hw1.transforms.presets import eval_spec


def _files(tmp_path, sizes):
    paths = []
    for i, (w, h) in enumerate(sizes):
        paths.append(tmp_path / f"p{i}.jpg")
        photo(w, h, seed=i).save(paths[-1], quality=90)
    return paths


def test_same_parameters_give_close_outputs(tmp_path):
    """With the report's augmentation, JPEGs reduced (draft mode) and enlarged: the fast
    pipeline stays within 3 grey levels of the reference, its colour part within 1."""
    rows = measure(_files(tmp_path, [(160, 120), (40, 30)]), 48, draws=3, seed=0)
    assert {r.enlarged for r in rows} == {True, False}
    assert all(r.full[0] < 3 and r.device[0] < 1 for r in rows), rows


def test_a_deliberately_different_pipeline_fails_the_bound(tmp_path, monkeypatch):
    """A fast pipeline whose hue turns the other way lands far outside the bound the
    real one meets: the harness tells them apart."""
    import hw1.transforms.colour_jitter as cj

    path = _files(tmp_path, [(160, 120)])[0]
    preset = FastTrainPreset(eval_spec(48), rotation=0, translate=(0, 0))
    draw = Draw((0, 0, 160, 120), False, 0.0, (0, 0), (3,), (1, 1, 1, 0.1))
    good = compare(path, preset, draw)
    step = cj._step
    monkeypatch.setattr(cj, "_step", lambda op, x, f: step(op, x, -f if op == 3 else f))
    bad = compare(path, preset, draw)
    assert good.full[0] < 2 and bad.full[0] > 5 * good.full[0], (good, bad)


def test_table_splits_by_every_group(tmp_path):
    rows = measure(_files(tmp_path, [(40, 30)]), 32, draws=2, seed=1)
    lines = table(rows)
    assert lines[0].startswith("| group | n |")
    for group in ("set", "crop scale", "zoom", "decode", "rotation", "image size"):
        assert any(line.startswith(f"| {group}: ") for line in lines), group


def test_jpegs_rewrites_a_set_at_drawn_sizes(tmp_path):
    source = tmp_path / "src"
    (source / "train" / "a").mkdir(parents=True)
    for i in range(4):
        photo(32, 32, seed=i).save(source / "train" / "a" / f"x{i}.png")
    (source / "test_labels.csv").write_text("image_name,label\nx0,a\n")
    main(["jpegs", str(source), str(tmp_path / "out"), "--min", "20", "--max", "24"])
    out = sorted((tmp_path / "out" / "train" / "a").iterdir())
    assert [p.name for p in out] == [f"x{i}.jpg" for i in range(4)]
    assert all(20 <= max(load_rgb(p).size) <= 24 for p in out)
    assert (tmp_path / "out" / "test_labels.csv").read_text().startswith("image_name")
    assert make_jpegs(source, tmp_path / "again", (20, 24)) == tmp_path / "again"
