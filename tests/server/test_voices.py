"""A model's voices and their languages: from `model.voices`, a checkpoint's `voices.json` or an
engine build's manifest, else the English eight; Unicode names (Korean, Hindi, Chinese) through
validation, the prompt, the logs, gRPC and HTTP, with real checkpoints and servers."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import unicodedata
import wave
from pathlib import Path

import grpc
import httpx
import pytest

from checkpoint_testkit import llama_config, write_checkpoint, write_demo_snac
from engine_jobs.checkpoint import validate_checkpoint
from orpheus_tts import cli, orpheus
from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc
from orpheus_tts.config import ConfigError, load_config
from orpheus_tts.engine import server_voices
from orpheus_tts.engine.pieces import PieceMaker
from orpheus_tts.model.tokenizer import demo_tokenizer
from orpheus_tts.requests import SpeechRequest
from orpheus_tts.voices import Voice, VoicesError
from server_testkit import small_config

REPO_ROOT = Path(__file__).resolve().parents[2]
KOREAN = [{"name": "유나", "language": "ko"}, {"name": "준서", "language": "ko"}]


def korean_checkpoint(directory: Path) -> Path:
    write_checkpoint(directory, llama_config())
    (directory / "voices.json").write_text(json.dumps(KOREAN, ensure_ascii=False), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def korean(tmp_path_factory) -> Path:
    return korean_checkpoint(tmp_path_factory.mktemp("checkpoints") / "3b-ko-ft")


def listed(voices: dict[str, Voice]) -> list[tuple[str, str, str | None]]:
    return [(v.name, v.language, v.adapter) for v in voices.values()]


def test_voices_come_from_the_setting_then_the_checkpoint_file_then_the_english_eight(korean):
    assert listed(server_voices(load_config(environ={}))) == [(name, "en", None) for name in orpheus.VOICES]
    from_file = load_config(overrides={"model.path": str(korean), "default_voice": "유나"}, environ={})
    assert listed(server_voices(from_file)) == [("유나", "ko", None), ("준서", "ko", None)]
    french = load_config(overrides={"model.path": str(korean), "default_voice": "pierre",
                                    "model.voices": ["pierre:fr", "amelie:fr", "custom"]}, environ={})
    assert listed(server_voices(french)) == [("pierre", "fr", None), ("amelie", "fr", None), ("custom", "", None)]
    # Adapters add voices: one of a base voice's name keeps its language, a new one has none.
    adapted = load_config(overrides={"model.path": str(korean), "default_voice": "유나",
                                     "adapters.voices": ["유나:yuna-lora", "alice:alice-lora"]}, environ={})
    assert listed(server_voices(adapted)) == [("유나", "ko", "yuna-lora"), ("준서", "ko", None),
                                              ("alice", "", "alice-lora")]


def test_a_default_voice_the_model_does_not_have_is_refused_at_start_up_by_name(korean):
    with pytest.raises(ConfigError, match="default_voice 'tara' is not one of this model's voices: 유나, 준서"):
        server_voices(load_config(overrides={"model.path": str(korean)}, environ={}))
    with pytest.raises(ConfigError, match="default_voice 'darth'"):
        server_voices(load_config(overrides={"default_voice": "darth"}, environ={}))


@pytest.mark.parametrize("content, message", [
    ('{"name": "유나"}', "expected a non-empty list"),
    ('[{"name": "유나", "lang": "ko"}]', r"voices.json\[0\]: expected"),
    ('[{"name": "유나", "language": "Korean"}]', "language 'Korean' of voice '유나' is not a language tag"),
    ('[{"name": "유나"}, {"name": "유나", "language": "ko"}]', "'유나' is listed twice"),
    ('[{"name": "a:b"}]', "without ':'"),
    ("[{", "unreadable"),
])
def test_a_bad_voices_file_is_refused_naming_the_file_and_the_entry(tmp_path, content, message):
    (tmp_path / "voices.json").write_text(content, encoding="utf-8")
    with pytest.raises(VoicesError, match=message):
        server_voices(load_config(overrides={"model.path": str(tmp_path)}, environ={}))


def test_a_unicode_voice_reaches_the_prompt_as_listed_even_when_sent_decomposed():
    config = small_config(**{"model.voices": ["유나:ko", "ऋतिका:hi", "长乐:zh"], "default_voice": "长乐"})
    engine_voices = server_voices(config)
    decomposed = unicodedata.normalize("NFD", "유나")
    assert decomposed != "유나"
    request = SpeechRequest.create("안녕하세요.", defaults=config.sampling, max_text_chars=100, voice=decomposed,
                                   voices=engine_voices)
    assert request.voice == "유나"
    tokenizer = demo_tokenizer()
    for voice, text in (("유나", "안녕하세요."), ("ऋतिका", "नमस्ते।"), ("长乐", "你好。")):
        (piece,) = PieceMaker(tokenizer, 512).make(voice, text)
        assert piece.prompt[:2] == [orpheus.START_OF_HUMAN, orpheus.BOS]
        assert tokenizer.decode(piece.prompt[2:-4]) == f"{voice}: {text}"


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        assert w.getframerate() == orpheus.SAMPLE_RATE_HZ
        return w.getnframes() / w.getframerate()


def test_a_korean_voice_is_listed_while_loading_and_speaks_through_grpc_and_http(korean, start_http_server,
                                                                                  tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="orpheus_tts")
    server = start_http_server(load=False, **{"model.path": str(korean), "default_voice": "유나"})
    with grpc.insecure_channel(server.address) as channel:  # the model is not loaded yet
        listing = tts_pb2_grpc.TextToSpeechStub(channel).ListVoices(tts_pb2.ListVoicesRequest(), timeout=10)
    assert [(v.name, v.language, v.adapter) for v in listing.voices] == [("유나", "ko", ""), ("준서", "ko", "")]
    assert listing.default_voice == "유나"
    voices = httpx.get(f"{server.url}/v1/audio/voices", timeout=10).json()
    assert voices["voices"] == KOREAN and voices["default_voice"] == "유나"
    server.load()

    out = tmp_path / "yuna.wav"
    assert cli.main(["say", "안녕하세요. 만나서 반갑습니다.", "--voice", "유나", "--server", server.address,
                     "-o", str(out), "--seed", "1"]) == 0
    assert wav_seconds(out.read_bytes()) > 0.1
    spoken = httpx.post(f"{server.url}/v1/audio/speech", timeout=60,
                        json={"input": "안녕하세요.", "voice": unicodedata.normalize("NFD", "준서"),
                              "response_format": "wav", "seed": 2})
    assert spoken.status_code == 200, spoken.text
    assert wav_seconds(spoken.content) > 0.1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request ")]
    assert any("method=Synthesize" in line and "voice=유나 " in line and "outcome=ok" in line for line in lines)
    assert any("voice=준서 " in line and "outcome=ok" in line for line in lines)  # logged as listed (NFC)


async def test_the_english_model_lists_english_and_refuses_a_french_voice_naming_the_field(http_server):
    async with grpc.aio.insecure_channel(http_server.address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        listing = await stub.ListVoices(tts_pb2.ListVoicesRequest())
        assert [(v.name, v.language) for v in listing.voices] == [(name, "en") for name in orpheus.VOICES]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.Synthesize(tts_pb2.SynthesizeRequest(text="Bonjour.", voice="pierre")):
                pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("voice: unknown voice 'pierre'; available: tara, leah")
    async with httpx.AsyncClient(base_url=http_server.url, timeout=30) as client:
        voices = (await client.get("/v1/audio/voices")).json()["voices"]
        response = await client.post("/v1/audio/speech", json={"input": "Bonjour.", "voice": "pierre"})
    assert voices == [{"name": name, "language": "en"} for name in orpheus.VOICES]
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "voice" and "unknown voice 'pierre'" in error["message"]


def test_an_engine_build_records_the_checkpoints_voices_for_serve_engine(korean, tmp_path):
    snac, out = write_demo_snac(tmp_path / "snac"), tmp_path / "engine"
    built = subprocess.run([sys.executable, "-m", "engine_jobs.build", "--model-source", f"pvc:{korean}",
                            "--snac-source", f"pvc:{snac}", "--precision", "bf16", "--gpu-arch", "sm_90",
                            "--compile", "skip", "--output", str(out)],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stderr
    assert json.loads((out / "engine.json").read_text(encoding="utf-8"))["voices"] == KOREAN
    serving = load_config(overrides={"engine.path": str(out), "default_voice": "준서"}, environ={})
    assert listed(server_voices(serving)) == [("유나", "ko", None), ("준서", "ko", None)]
    # The server's own model.voices still wins over what the build recorded.
    override = load_config(overrides={"engine.path": str(out), "model.voices": ["유나:ko"], "default_voice": "유나"},
                           environ={})
    assert listed(server_voices(override)) == [("유나", "ko", None)]


def test_a_checkpoint_with_a_bad_voices_file_fails_the_builds_checkpoint_check(tmp_path):
    bad = korean_checkpoint(tmp_path / "bad")
    (bad / "voices.json").write_text('[{"name": "유나", "language": "Korean"}]', encoding="utf-8")
    with pytest.raises(VoicesError, match=r"voices.json\[0\]: language 'Korean'"):
        validate_checkpoint(bad)
