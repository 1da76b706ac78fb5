"""`edgerun bench MODEL --vs-llama-cpp GGUF`: decode GB/s of both engines next to the measured read bandwidth."""

import os


def test_bench_reports_decode_gbs(smollm2_gguf, llama_cpp):
    from edgerun.bench.speed import bench_model, decode_weight_bytes, format_bench
    from edgerun.export.artifact import Artifact
    from edgerun.runtime.store.defaults import cached_export

    path = cached_export(smollm2_gguf, name="smollm2")
    r = bench_model(path, vs_llama_cpp=smollm2_gguf, threads=1, n_prompt=16, n_decode=8, repeats=1)
    bw = r["bandwidth"]
    # every layer matrix and the tied head (the Q8_0 token embedding), all as stored: most of weights.bin
    assert bw["weight_bytes"] == decode_weight_bytes(Artifact(path))
    assert 0.9 < bw["weight_bytes"] / os.path.getsize(path / "weights.bin") <= 1.0
    assert bw["read_gbs"] > 0
    for key in ("edgerun", "llama_cpp"):
        gbs = bw[key]["decode_gbs"]
        assert gbs > 0 and abs(gbs - bw["weight_bytes"] * r[key]["decode_tps"] / 1e9) < 1e-9
        assert 0 < bw[key]["fraction"] < 1.5
    text = format_bench(r)
    assert "MB of weights per token" in text and text.count("% of read bandwidth") == 2
