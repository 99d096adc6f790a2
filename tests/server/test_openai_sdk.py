"""The official `openai` SDK against our server: a valid file for every format, errors it understands."""

import numpy as np
import openai
import pytest
import soundfile

from orpheus_tts import orpheus
from orpheus_tts.requests import AUDIO_FORMATS

TEXT = "The same words in every format."
SEED = 11
MP3_ENCODER_DELAY = 1105  # a streamed MP3 has no gapless header: decoders keep LAME's delay (576 + 529)
MP3_FRAME = 576  # MPEG-2 layer III at 24 kHz: the last frame is padded up to this


@pytest.fixture(scope="module")
def client(http_server):
    return openai.OpenAI(base_url=f"{http_server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def expected_samples(client) -> int:
    """The stream's length in samples, from the raw PCM of the same seed."""
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="tara", input=TEXT, response_format="pcm", extra_body={"seed": SEED}) as response:
        pcm = response.read()
    assert len(pcm) % (2 * orpheus.SAMPLES_PER_FRAME) == 0 and pcm
    return len(pcm) // 2


@pytest.mark.parametrize("response_format", ["wav", "flac", "mp3", "opus"])
def test_sdk_streams_a_valid_file_for_each_format(client, expected_samples, response_format, tmp_path):
    assert response_format in AUDIO_FORMATS
    path = tmp_path / f"speech.{response_format}"
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="tara", input=TEXT, response_format=response_format,
            extra_body={"seed": SEED}) as response:
        assert response.headers["content-type"].startswith("audio/")
        response.stream_to_file(path)
    samples, rate = soundfile.read(path, dtype="float32")
    assert rate == orpheus.SAMPLE_RATE_HZ and samples.ndim == 1 and np.abs(samples).max() > 0
    if response_format == "mp3":
        assert expected_samples + MP3_ENCODER_DELAY <= len(samples) <= expected_samples + MP3_ENCODER_DELAY + MP3_FRAME
    else:
        assert len(samples) == expected_samples


def test_sdk_default_format_is_mp3_as_with_openai(client):
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="leo", input="Hi.") as response:
        assert response.headers["content-type"] == "audio/mpeg"
        assert response.read()[:2] == b"\xff\xf3"  # an MPEG-2 layer III frame header


def test_sdk_raises_its_usual_errors_with_our_message(client):
    with pytest.raises(openai.BadRequestError) as bad_voice:
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
    assert "unknown voice 'alloy'" in bad_voice.value.message and bad_voice.value.body["param"] == "voice"
    with pytest.raises(openai.BadRequestError) as bad_speed:
        client.audio.speech.create(model="tts-1", voice="tara", input="Hi.", speed=1.5)
    assert bad_speed.value.body["param"] == "speed"
