"""bench/gpu.py in its CPU mode: every loop runs at both precisions and the table and JSON come out."""
import json

from bench import gpu


def test_gpu_benchmark_tiny_mode_runs_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("REWIRE_BENCH_WORK", str(tmp_path / "work"))
    monkeypatch.setattr(gpu.common, "WORK_DIR", tmp_path / "work")
    result = gpu.main(["--tiny", "--encoders", "tiny-large-stock", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_tiny.json").read_text())
    assert saved["settings"]["device"] == "cpu" and saved["settings"]["tiny"] is True
    (encoder,) = result["encoders"]
    assert [c["precision"] for c in encoder["cases"]] == ["fp32", "bf16"]
    for case in encoder["cases"]:
        for loop in ("ours", "authors", "bound"):
            (run,) = case["runs"][loop]
            assert run["pairs"] == 4 and run["seconds"] > 0, loop
        assert case["runs"]["features"][0]["utterances"] == 8  # both views of the 4 pairs
        assert case["peak_gb"]["ours"] is None  # no GPU: no memory figure rather than a wrong one
    assert "| tiny-large-stock |" in result["table"] and "bf16" in result["table"]
