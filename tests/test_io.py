from __future__ import annotations

import csv
import io

import pytest

from hw1.io import csv_text, write_atomically


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "metrics.json"
    write_atomically(path, "old")
    assert path.read_text() == "old"

    def interrupted(self, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(path), "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, b"new")
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == [
        "metrics.json"
    ]


def test_csv_text_quotes_what_needs_it_and_ends_lines_with_newlines():
    text = csv_text([("image_name", "pred_label"), ("a,b", 'say "x"')])
    assert text == 'image_name,pred_label\n"a,b","say ""x"""\n'
    assert list(csv.reader(io.StringIO(text))) == [["image_name", "pred_label"], ["a,b", 'say "x"']]
