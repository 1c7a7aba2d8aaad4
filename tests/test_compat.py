"""The private APIs hw1 leans on (hw1.utils.compat) still exist and still do what hw1
needs: an upgrade that removes or changes one fails here, by name."""

from __future__ import annotations

import lightning as L
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from PIL import Image

from hw1.utils import compat


def test_hydras_argument_parser_reads_overrides_and_flags():
    args, _ = compat.hydra_args_parser().parse_known_args(["-m", "a=1", "--config-dir", "x"])
    assert args.multirun and args.config_dir == "x" and args.overrides == ["a=1"]
    assert OverridesParser.create().parse_overrides(args.overrides)[0].key_or_group == "a"


def test_hydras_callbacks_take_a_config():
    cfg = OmegaConf.create({"hydra": {"callbacks": {}}})
    assert hasattr(compat.HydraCallbacks(cfg), "on_job_start")


def test_torchvisions_hsv_conversions_round_trip_as_pil_does():
    x = torch.rand(2, 3, 8, 8)
    hsv = compat.rgb_to_hsv(x)
    assert torch.allclose(compat.hsv_to_rgb(hsv), x, atol=1e-5)
    pixel = Image.new("RGB", (1, 1), (200, 40, 90)).convert("HSV").getpixel((0, 0))
    ours = compat.rgb_to_hsv(torch.tensor([200, 40, 90]).view(1, 3, 1, 1) / 255).flatten()
    assert torch.allclose(ours * 255, torch.tensor(pixel, dtype=torch.float), atol=1.0)


def test_lightnings_sigterm_flag_is_what_stop_fit_sets():
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer._signal_connector.received_sigterm is False
    compat.stop_fit(trainer, True)
    assert trainer.received_sigterm is True  # Lightning's own reading of the same flag
    compat.stop_fit(trainer, False)
    assert trainer.received_sigterm is False


def test_the_summary_writers_file_writer_takes_a_summary(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import scalar

    writer = SummaryWriter(tmp_path)
    compat.tensorboard_file_writer(writer).add_summary(scalar("val/acc", 0.5), 3)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("val/acc")] == [(3, 0.5)]


def test_optunas_frozen_trial_id_is_what_its_storage_takes():
    import optuna

    from hw1.utils.compat import optuna_trial_id

    study = optuna.create_study()
    study.optimize(lambda trial: 1.0, n_trials=1)
    [trial] = study.trials
    assert study._storage.get_trial(optuna_trial_id(trial)).number == trial.number


def test_dataloaders_iterators_take_their_indices_from_index_sampler():
    """hw1.data.samplers.ResumableLoader overrides DataLoader's private ``_index_sampler``
    to leave out the batches a resumed epoch trained on already."""
    from torch.utils.data import DataLoader

    assert isinstance(DataLoader._index_sampler, property)

    class FirstBatchLeftOut(DataLoader):
        @property
        def _index_sampler(self):
            return [[2, 3]]

    for workers in (0, 1):
        batches = [b.tolist() for b in FirstBatchLeftOut(list(range(4)), num_workers=workers)]
        assert batches == [[2, 3]]
