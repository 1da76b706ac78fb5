"""The artifact cache listing and pruning (`edgerun cache [--prune]`) on a scratch cache folder."""

from __future__ import annotations

import json

from typer.testing import CliRunner


def _artifact(folder, name, source):
    d = folder / name
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"provenance": {"source": str(source)}}))
    (d / "weights.bin").write_bytes(b"\0" * 1000)
    return d


def test_prune_removes_only_stale_exports(tmp_path, monkeypatch):
    from edgerun.cli import app
    from edgerun.runtime.store.defaults import _source_key

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("EDGERUN_CACHE", str(cache))
    src = tmp_path / "model.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 100)
    current = _artifact(cache, f"model-{_source_key(src)}.edge", src)
    old = _artifact(cache, "model-0123456789.edge", src)  # key of another exporter revision
    orphan = _artifact(cache, "gone-abcdef0123.edge", tmp_path / "deleted.gguf")
    foreign = _artifact(cache, "whisper-base-int8.edge", "ctranslate2")  # not made by cached_export
    peer = cache / "model-q8_0-0123456789.gguf"
    peer.write_bytes(b"GGUF")

    runner = CliRunner()
    listing = runner.invoke(app, ["cache"])
    assert listing.exit_code == 0, listing.output
    assert "2 stale" in listing.output and "current" in listing.output

    dry = runner.invoke(app, ["cache", "--prune", "--dry-run"])
    assert dry.exit_code == 0 and old.exists() and orphan.exists()
    assert "would free" in dry.output

    done = runner.invoke(app, ["cache", "--prune"])
    assert done.exit_code == 0, done.output
    assert not old.exists() and not orphan.exists()
    assert current.exists() and foreign.exists() and peer.exists()
    assert "in 2 stale artifacts" in done.output
