"""rewire_lib.files.atomic: the one crash-safe write helper."""
import json
import os

import pytest

from rewire_lib.files.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_text_json_bytes_round_trip(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "hello")
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"
    atomic_write_json(tmp_path / "c.json", {"x": 1.5, "p": tmp_path})
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": 1.5, "p": str(tmp_path)}
    atomic_write_bytes(tmp_path / "d.bin", b"\x00\x01")
    assert (tmp_path / "d.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c.json", "d.bin"]  # no temporary left


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["result.json"]


def test_temporary_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    with atomic_path(tmp_path / "x.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name != "x.png"
        tmp.write_bytes(b"p")
    assert (tmp_path / "x.png").read_bytes() == b"p"
