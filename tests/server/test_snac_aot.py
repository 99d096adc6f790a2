"""SNAC decoders compiled ahead of time (codec/snac_aot.py): built with the real torch.export +
AOTInductor on the CPU (the builder does the same on the GPU), loaded back from disk, and
refused, with the reason logged, when built for something else."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from orpheus_tts import orpheus
from orpheus_tts.codec import snac_aot
from orpheus_tts.codec.snac_codec import SnacCodec

CPU = torch.device("cpu")


def demo_codec(noise: bool = False) -> SnacCodec:
    return SnacCodec.load("demo", CPU, noise=noise)


def latent_of(codec: SnacCodec, batch: int, frames: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 4096, (batch, frames, orpheus.TOKENS_PER_FRAME), generator=generator)
    return codec.model.quantizer.from_codes(codec.frames_to_codes(codes))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    directory = tmp_path_factory.mktemp("engine") / "compile" / "snac"
    report = snac_aot.build_decoders(demo_codec(), window_frames=1, max_batch=4, directory=directory)
    return directory, report


def test_the_built_decoders_match_the_eager_decoder_for_every_batch_size(built):
    directory, report = built
    assert (directory / snac_aot.package_name(1)).is_file()
    manifest = json.loads((directory / snac_aot.MANIFEST).read_text())
    assert manifest["windowFrames"] == 1 and manifest["maxBatch"] == 4 and manifest["noise"] is False
    assert report["checks"][1]["snrDb"] >= 30
    codec = demo_codec()
    decoder = snac_aot.load_decoders(codec, directory, window_frames=1, max_batch=4)
    assert decoder is not None
    with torch.inference_mode():
        for batch in (2, 3, 4):  # the batch dimension is dynamic: one package serves them all
            latent = latent_of(codec, batch, 1, seed=batch)
            torch.testing.assert_close(decoder(latent), codec.model.decoder(latent), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("change, field", [
    ({"noise": True}, "noise"),
    ({"window_frames": 2}, "windowFrames"),
    ({"max_batch": 8}, "maxBatch"),
])
def test_decoders_built_for_other_settings_are_refused_by_name(built, caplog, change, field):
    directory, _ = built
    codec = demo_codec(noise=change.get("noise", False))
    with caplog.at_level(logging.WARNING, logger="orpheus_tts.codec"):
        decoder = snac_aot.load_decoders(codec, directory, window_frames=change.get("window_frames", 1),
                                         max_batch=change.get("max_batch", 4))
    assert decoder is None
    assert f"{field}: built" in caplog.text and "compiling instead" in caplog.text


def test_a_smaller_batch_or_window_than_built_is_served(built):
    directory, _ = built
    assert snac_aot.load_decoders(demo_codec(), directory, window_frames=1, max_batch=2) is not None


def test_a_package_that_does_not_load_falls_back_with_a_warning(built, tmp_path, caplog):
    directory, _ = built
    broken = tmp_path / "snac"
    broken.mkdir()
    (broken / snac_aot.MANIFEST).write_text((directory / snac_aot.MANIFEST).read_text())
    (broken / snac_aot.package_name(1)).write_bytes(b"not a package")
    with caplog.at_level(logging.WARNING, logger="orpheus_tts.codec"):
        assert snac_aot.load_decoders(demo_codec(), broken, window_frames=1, max_batch=4) is None
    assert "did not load" in caplog.text


def test_no_directory_means_no_decoders(tmp_path):
    assert snac_aot.load_decoders(demo_codec(), tmp_path / "absent", window_frames=1, max_batch=4) is None


def test_the_builder_reports_a_failed_decoder_build_and_leaves_nothing(tmp_path):
    """The builder compiles in a child process; its failure is a warning, never a broken build."""
    from engine_jobs.compile_step import build_snac_decoders
    from orpheus_tts.config import load_config

    directory = tmp_path / "compile" / "snac"
    config = load_config(overrides={"codec.path": str(tmp_path / "no-snac"), "codec.device": "cpu"})
    report = build_snac_decoders(directory, config)
    assert "FileNotFoundError" in report["error"] and "lacks config.json" in report["error"]
    assert not directory.exists()
