"""FreezeBackbone under DDP: two gloo processes on the CPU keep one backbone between them
through the frozen epoch and after it."""

from __future__ import annotations

import json

import pytest
from conftest import make_hw1_folder, run_in_process_group, train_command


@pytest.mark.slow
def test_under_ddp_the_unfrozen_backbone_stays_the_same_on_every_process(tmp_path):
    root, run_dir, sums = tmp_path / "data", tmp_path / "run", tmp_path / "sums"
    # 4 classes, 32 training images: 4 batches of 4 a process an epoch.
    make_hw1_folder(root, [str(i) for i in range(4)], train=8, val=2, test=0)
    cmd = train_command(
        root, run_dir,
        "trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
        "data.batch_size=4", "trainer.max_epochs=2", "sched.T_max=2",
        "callbacks=[default,freeze_backbone]", "callbacks.freeze_backbone.epochs=1",
        "+callbacks.sums._target_=run_probes.BackboneChecksums", f"+callbacks.sums.folder={sums}",
    )  # fmt: skip
    status, out = run_in_process_group(cmd, timeout=300)
    assert status == 0, out[-4000:]
    ranks = [json.loads((sums / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["epoch1"] == rank["start"]  # frozen: not a parameter moved
        changed = [a != b for a, b in zip(rank["epoch1"], rank["epoch2"], strict=True)]
        assert sum(changed) > len(changed) / 2  # unfrozen: trained
    assert ranks[0]["end"] == pytest.approx(ranks[1]["end"], rel=1e-9, abs=1e-9)
