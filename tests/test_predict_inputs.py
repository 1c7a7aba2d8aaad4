"""hw1.predict on any images (inputs=), from checkpoints and exported folders."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from conftest import AWKWARD_CLASSES

from hw1.inference.api import predict
from hw1.utils.config import compose_config
from hw1.utils.errors import UserError


def run(ckpt, out, *overrides):
    cfg = compose_config(
        [f"ckpt_path={ckpt}", f"output={out}", "data.num_workers=0", "trainer=cpu", *overrides],
        config_name="predict",
    )
    return predict(cfg)


def rows(path):
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))


@pytest.fixture
def photos(exported, tmp_path):
    """The test images in a nested folder, with a note, a hidden file and a broken JPEG."""
    root = exported[0]
    folder = tmp_path / "photos"
    (folder / "deep" / "deeper").mkdir(parents=True)
    for i, f in enumerate(sorted((root / "test").iterdir())):
        shutil.copy(f, folder / ("deep/deeper" if i % 2 else "deep") / f.name)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / "deep" / "broken.jpg").write_bytes(b"\xff\xd8 half a jpeg")
    return folder


def test_a_nested_folder_from_a_checkpoint_and_an_export_gives_the_same_top1(
    exported, photos, tmp_path, capsys
):
    _, ckpt, folder = exported
    from_ckpt = rows(run(ckpt, tmp_path / "ckpt.csv", f"inputs={photos}"))
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from_export = rows(run(folder, tmp_path / "export.csv", f"inputs={photos}"))
    header = ["path", "label_1", "prob_1", "label_2", "prob_2", "label_3", "prob_3"]
    assert from_ckpt[0] == from_export[0] == header  # topk: 5 capped at the 3 classes
    assert len(from_ckpt) == 7  # six images; the note, the hidden file and the broken JPEG not
    assert [r[:2] for r in from_ckpt] == [r[:2] for r in from_export]
    assert {r[1] for r in from_ckpt[1:]} <= set(AWKWARD_CLASSES)  # commas, quotes parse back
    assert summary["skipped"] == [
        f"{photos / 'deep' / 'broken.jpg'}: empty, truncated or not an image"
    ]
    assert all(float(r[2]) >= float(r[4]) >= float(r[6]) for r in from_ckpt[1:])


def test_many_inputs_are_counted_on_the_device_the_trainer_keys_name(
    exported, photos, tmp_path, monkeypatch, capsys
):
    _, ckpt, _ = exported
    monkeypatch.setenv("HW1_PROGRESS", "count")
    run(ckpt, tmp_path / "p.csv", f"inputs={photos}", "data.batch_size=4")
    assert "predicted 2/2 batches" in capsys.readouterr().err.splitlines()  # six images
    with pytest.raises(UserError, match=r"trainer\.devices=\[0, 1\]: .*one device"):
        run(ckpt, tmp_path / "q.csv", f"inputs={photos}", "trainer.devices=[0,1]")


def test_inputs_takes_a_file_a_glob_or_a_list_of_paths(exported, photos, tmp_path):
    _, _, folder = exported
    one = sorted(photos.rglob("*.png"))[0]
    assert [r[0] for r in rows(run(folder, tmp_path / "1.csv", f"inputs='{one}'"))[1:]] == [
        str(one)
    ]
    globbed = rows(run(folder, tmp_path / "2.csv", f"inputs='{photos}/**/*.jpg'", "topk=1"))
    assert {r[0] for r in globbed[1:]} == {str(p) for p in photos.rglob("*.jpg")} - {
        str(photos / "deep" / "broken.jpg")
    }
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my photos\n{one}\nphotos/gone.jpg\n\n")
    listed = rows(run(folder, tmp_path / "3.csv", f"inputs='{listing}'"))
    assert [r[0] for r in listed[1:]] == [str(one)]  # the missing one skipped


def test_json_lines_and_topk(exported, photos, tmp_path):
    _, _, folder = exported
    out = run(folder, tmp_path / "p.jsonl", f"inputs={photos}", "format=jsonl", "topk=2")
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 6 and all(len(x["labels"]) == len(x["probs"]) == 2 for x in lines)
    assert "été" in out.read_text(encoding="utf-8")  # UTF-8, not \\u escapes


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("inputs=/no/such/place", "inputs=/no/such/place: no such file or folder"),
        ("topk=4", "topk=4: the model has 3 classes; use 1 to 3"),
        ("format=xml", "format=xml: use csv or jsonl"),
    ],
)
def test_bad_inputs_topk_and_format_are_named(exported, photos, tmp_path, override, message):
    _, _, folder = exported
    base = [f"inputs={photos}"] if not override.startswith("inputs") else []
    with pytest.raises(UserError, match=message):
        run(folder, tmp_path / "x.csv", *base, override)
    assert not (tmp_path / "x.csv").exists()


def test_a_folder_without_images_is_named(exported, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="empty: no images there"):
        run(exported[2], tmp_path / "x.csv", f"inputs={tmp_path / 'empty'}")


def test_an_export_on_data_root_writes_the_competition_csv(exported, tmp_path):
    root, ckpt, folder = exported
    from_ckpt = run(ckpt, tmp_path / "a.csv", f"data.root={root}")
    from_export = run(folder, tmp_path / "b.csv", f"data.root={root}")
    assert rows(from_ckpt)[0] == ["image_name", "pred_label"]
    assert rows(from_export) == rows(from_ckpt)
