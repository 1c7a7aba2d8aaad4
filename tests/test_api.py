"""hw1.load_classifier: the Python API, its agreement with hw1.predict, and exported
folders that run without the training stack."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import AWKWARD_CLASSES
from PIL import Image

import hw1
from hw1.data.scan import input_files
from hw1.inference.runtime import prediction_text
from hw1.utils.config import compose_config
from hw1.utils.errors import UserError


def cli(ckpt, out, inputs, *overrides):
    from hw1.inference.api import predict

    cfg = compose_config(
        [f"ckpt_path={ckpt}", f"output={out}", f"inputs={inputs}", "data.num_workers=0",
         *overrides],
        config_name="predict",
    )  # fmt: skip
    return predict(cfg).read_bytes()


@pytest.mark.parametrize("which", ["checkpoint", "export"])
def test_the_api_and_the_command_agree_to_the_byte(exported, tmp_path, which):
    root, ckpt, folder = exported
    model = ckpt if which == "checkpoint" else folder
    files = [str(p) for p in input_files(root / "test")]
    clf = hw1.load_classifier(model, device="cpu")
    for fmt, topk in (("csv", 2), ("jsonl", 3)):
        written = cli(model, tmp_path / f"p.{fmt}", root / "test", f"format={fmt}", f"topk={topk}")
        assert prediction_text(clf.predict(files, topk=topk), fmt).encode() == written


def test_paths_and_pil_images_give_the_same_prediction(exported):
    root, _, folder = exported
    clf = hw1.load_classifier(folder)
    path = sorted((root / "test").glob("*.png"))[0]
    both = clf.predict([path, Image.open(path)], topk=3)
    assert [p.path for p in both] == [str(path), "<image 1>"]
    # the same views at the same position (the position seeds the random ones)
    (by_image,), (by_path,) = clf.predict(Image.open(path), topk=3), clf.predict(path, topk=3)
    assert by_image.path == "<image 0>" and by_path == both[0]
    assert (by_image.labels, by_image.probs) == (by_path.labels, by_path.probs)
    assert clf.class_names == AWKWARD_CLASSES and clf.device == torch.device("cpu")
    x = clf.transform(Image.open(path))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_import_hw1_stays_light_and_an_export_runs_without_lightning_or_hydra(exported):
    root, _, folder = exported
    image = sorted((root / "test").iterdir())[0]
    script = f"""
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('lightning', 'pytorch_lightning', 'hydra'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Refuse())
import hw1
assert 'hw1.inference.api' not in sys.modules
import json
for runtime in ('onnx', 'torchscript', 'safetensors'):
    clf = hw1.load_classifier({str(folder)!r}, runtime=runtime)
    print(json.dumps(clf.predict({str(image)!r}, topk=1)[0].labels))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len({json.dumps(json.loads(line)) for line in proc.stdout.splitlines()}) == 1


def test_edited_or_incomplete_export_folders_are_named(exported, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(exported[2], folder)
    meta_file = folder / "model.json"
    meta = json.loads(meta_file.read_text())

    def fails(message, runtime="auto"):
        with pytest.raises(UserError, match=message):
            hw1.load_classifier(folder, runtime=runtime)

    meta_file.write_text(json.dumps({**meta, "class_names": AWKWARD_CLASSES[:2]}))
    fails("names 2 classes, the model gives 3")
    meta_file.write_text(meta_file.read_text()[:-40])
    fails(r"model\.json: not valid JSON .*export the checkpoint again")
    meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k != "preprocess"}))
    fails("preprocess is missing")
    meta_file.write_text(json.dumps(meta))
    (folder / "model.torchscript.pt").write_bytes(b"something else")
    fails("model.torchscript.pt: its checksum is not the one", runtime="torchscript")
    (folder / "model.onnx").unlink()
    fails(r"model\.onnx: missing from the export")
    meta_file.unlink()
    fails("no model.json, so not a folder python -m hw1.export wrote")
