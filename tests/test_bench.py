from hw1.bench import main


def test_tta_bench_reports_images_per_second_and_a_ratio(capsys):
    main(["tta", "--images", "6", "--size", "32", "--batch-size", "3", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "same probabilities: True" in out
    for name in ("per-image TTA loop", "batched TTA", "batched single view"):
        assert name in out
    assert float(out.strip().splitlines()[-1].removeprefix("ratio: ")) > 0
