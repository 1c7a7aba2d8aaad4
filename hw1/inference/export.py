"""Export a trained model as one self-describing folder, checked against the checkpoint:
``python -m hw1.export ckpt_path=PATH [format=[onnx,torchscript,safetensors]] [output=DIR]``.

The folder holds the network in each format asked for, ``model.json`` (what another
program needs: architecture, class names in output order, the eval transform's numbers,
the test-time views, the temperature, hw1's version, the run's metrics and command, the
parity figures) and ``README.md``, a model card made from the run's ``metrics.json`` and
config. Before anything is reported, each exported file runs a batch of real images and
must give the checkpoint's logits (max abs difference <= 1e-4, the same top-1); the folder
is written under a temporary name beside ``output`` and renamed into place only then, so a
failed export leaves nothing behind. This module writes the formats, checks them and puts
the folder in place; what ``model.json`` and the card say is ``hw1.inference.model_card``'s.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hw1.data.image_check import inspect_images
from hw1.data.scan import display_path, input_files
from hw1.inference.exported import (
    FORMAT_FILES,
    INPUT_NAME,
    MODEL_JSON,
    OUTPUT_NAME,
    export_member,
    sha256,
)
from hw1.inference.model_card import (
    class_counts,
    model_card,
    model_meta,
    run_dir_of,
    run_record,
    temperature_of,
)
from hw1.inference.predictor import checkpoint_paths, load_ensemble
from hw1.inference.runtime import DEFAULT_SEED, ExportNet, Net
from hw1.models.classifier import Classifier
from hw1.transforms.decode import load_rgb
from hw1.transforms.device import FinishOnDevice
from hw1.transforms.presets import EvalSpec, ViewStack
from hw1.utils.errors import (
    UserFileExistsError,
    UserFileNotFoundError,
    UserRuntimeError,
    UserValueError,
    import_extra,
)
from hw1.utils.io import temporary_beside, write_atomically
from hw1.utils.progress import progress

# The parity check's tolerance on logits, fp32 on the CPU.
PARITY_ATOL = 1e-4
# Images (each with its four test-time views) the parity check runs.
PARITY_IMAGES = 8
ONNX_OPSET = 18
# The extras each format needs, imported before any work.
NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "safetensors": ("safetensors.torch",)}


def parse_formats(formats: str | Sequence[str]) -> list[str]:
    """``format=onnx`` or ``format=[onnx,safetensors]`` (a comma list in one string too),
    checked, with the packages each needs imported."""
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    wrong = [n for n in names if n not in FORMAT_FILES]
    if wrong or not names:
        raise UserValueError(f"format={formats}: use one or more of {', '.join(FORMAT_FILES)}")
    for name in names:
        for module in NEEDS.get(name, ()):
            import_extra(module, "export", f"format={name}")
    return names


def parity_files(inputs: str | None, record: dict[str, Any]) -> list[Path]:
    """Up to PARITY_IMAGES readable images: of ``inputs=``, else the run's val or test folder."""
    if inputs:
        candidates = input_files(inputs)
    else:
        root = Path(record["data_root"]) if record.get("data_root") else None
        folders = [root / "val", root / "test"] if root else []
        candidates = [f for d in folders if d.is_dir() for f in input_files(d)]
    candidates = candidates[: PARITY_IMAGES * 4]
    info = inspect_images(candidates)
    readable = [f for f in candidates if info[f].readable][:PARITY_IMAGES]
    if not readable:
        where = f"inputs={inputs}" if inputs else "the run's data (data.root's val/ and test/)"
        raise UserFileNotFoundError(
            f"no readable images in {where} to check the export against the checkpoint: "
            "give some with inputs=FOLDER"
        )
    return readable


def parity_batch(files: Sequence[Path], spec: EvalSpec, seed: int) -> torch.Tensor:
    """The images' four test-time views each, normalised, as one float batch."""
    stack, finish = ViewStack(spec, "report", seed), FinishOnDevice(spec.mean, spec.std)
    views = torch.cat([stack(load_rgb(f), i) for i, f in enumerate(files)])
    return finish(views)


def export_net(models: Sequence[Classifier], paths: Sequence[Path]) -> ExportNet:
    """The models' networks as one ExportNet; an ensemble must share its eval spec (one
    input for all)."""
    specs = [m.hparams.preprocess for m in models]
    for path, spec in zip(paths[1:], specs[1:], strict=True):
        if spec != specs[0]:
            raise UserValueError(
                f"{path} takes other inputs than {paths[0]} ({spec} vs {specs[0]}): an exported "
                "ensemble runs one input through every model; export them one by one"
            )
    nets = [Net(m.backbone, m.head) for m in models]
    return ExportNet(nets, [temperature_of(m) for m in models]).eval()


def write_onnx(net: ExportNet, example: torch.Tensor, path: Path) -> None:
    """The network as ONNX (opset 18, any batch size), by torch.export's exporter."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=ONNX_OPSET,
                dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                dynamo=True,
                external_data=False,  # one file: the weights inside model.onnx
                verbose=False,
            )
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise UserRuntimeError(
            f"the ONNX export failed ({type(e).__name__}: {first}). Export the other formats "
            "without it (format=[torchscript,safetensors]), or run with HYDRA_FULL_ERROR=1 "
            "to see where, and report it"
        ) from e


def write_torchscript(net: ExportNet, example: torch.Tensor, path: Path) -> None:
    """The network traced to TorchScript: a ResNet's forward has no data-dependent branch,
    so tracing is exact (the parity check verifies it). torch.jit is deprecated in favour
    of torch.export, whose programs C++ cannot load without PyTorch's newest runtime."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example, check_trace=False)
        torch.jit.save(traced, str(path))


def write_safetensors(net: ExportNet, path: Path) -> None:
    st = import_extra("safetensors.torch", "export", "format=safetensors")
    st.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def write_formats(
    net: ExportNet, formats: Sequence[str], folder: Path, example: torch.Tensor
) -> dict:
    """Each format's file in ``folder``; model.json's ``files`` entry for them."""
    writers = {
        "onnx": lambda p: write_onnx(net, example, p),
        "torchscript": lambda p: write_torchscript(net, example, p),
        "safetensors": lambda p: write_safetensors(net, p),
    }
    files = {}
    for name in progress(formats, "exported", "formats", each=True):
        path = folder / FORMAT_FILES[name]
        writers[name](path)
        files[name] = {"file": path.name, "sha256": sha256(path)}
    return files


def check_parity(
    folder: Path, meta: dict[str, Any], net: ExportNet, batch: torch.Tensor, images: int
) -> dict[str, dict[str, Any]]:
    """Each exported file's logits against the checkpoint's on ``batch``, as the runtime
    loads it; an error with the figures when one is off."""
    with torch.inference_mode():
        reference = net(batch)
    figures, wrong = {}, []
    for name in progress(list(meta["files"]), "checked the parity of", "formats", each=True):
        member = export_member(folder, meta, name, torch.device("cpu"))
        with torch.inference_mode():
            logits = member.logits(batch).float()
        diff = (logits - reference).abs().max().item()
        same_top1 = bool((logits.argmax(1) == reference.argmax(1)).all())
        figures[name] = {
            "max_abs_logit_diff": diff,
            "top1_agree": same_top1,
            "images": images,
            "inputs": len(batch),
        }
        if not (diff <= PARITY_ATOL and same_top1):
            wrong.append(f"{name}: max abs logit difference {diff:.3g}, same top-1: {same_top1}")
    if wrong:
        raise UserRuntimeError(
            f"the export does not match the checkpoint (tolerance {PARITY_ATOL}): "
            + "; ".join(wrong)
            + ". Nothing was written. Export the formats that match (format=[...]), and report it"
        )
    return figures


def prepare_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserFileExistsError(
            f"output={output} exists: remove it, or export into another folder"
        )


def export(
    ckpt_path: str | Sequence[str],
    formats: str | Sequence[str],
    output: Path,
    inputs: str | None = None,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Export the checkpoint(s) into ``output``; returns model.json's content."""
    names = parse_formats(formats)
    prepare_output(output)
    paths = checkpoint_paths(ckpt_path)
    models = load_ensemble(paths)
    net = export_net(models, paths)
    record = run_record(run_dir_of(paths[0]))
    files = parity_files(inputs, record)
    batch = parity_batch(files, EvalSpec.from_dict(models[0].hparams.preprocess), seed)
    tmp = temporary_beside(output)
    tmp.mkdir(parents=True)
    try:
        written = write_formats(net, names, tmp, batch[:2])
        meta = model_meta(models, paths, net, record, written, seed)
        meta["parity"] = check_parity(tmp, meta, net, batch, len(files))
        counts = class_counts(record.get("data_root"), meta["class_names"])
        meta["run"]["class_counts"] = counts
        write_atomically(tmp / MODEL_JSON, json.dumps(meta, indent=2, ensure_ascii=False))
        write_atomically(tmp / "README.md", model_card(meta, counts))
        if output.is_dir():
            output.rmdir()  # empty (prepare_output)
        tmp.rename(output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"exported {', '.join(display_path(p) for p in paths)} to {display_path(output)}")
    return meta
