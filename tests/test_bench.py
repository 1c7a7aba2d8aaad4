from hw1.bench import main


def test_tta_bench_reports_images_per_second_and_a_ratio(capsys):
    main(["tta", "--images", "6", "--size", "32", "--batch-size", "3", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "same probabilities: True" in out
    for name in ("per-image TTA loop", "batched TTA", "batched single view"):
        assert name in out
    assert float(out.strip().splitlines()[-1].removeprefix("ratio: ")) > 0


def _ratio(out: str) -> float:
    return float(out.strip().splitlines()[-1].removeprefix("ratio: "))


def test_loader_bench_times_both_pipelines_and_the_decode_ceiling(capsys):
    main(["loader", "--images", "6", "--size", "32", "--rounds", "1"])
    out = capsys.readouterr().out
    for name in ("reference:", "fast:", "decode only:"):
        assert name in out
    assert _ratio(out) > 0


def test_step_bench_compares_trainer_fit_with_a_plain_loop(capsys):
    main(["step", "--batches", "2", "--batch-size", "4", "--size", "32", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "Trainer.fit:" in out and "plain loop:" in out
    assert _ratio(out) > 0
