"""`orpheus-tts say` in-process writes a real 24 kHz mono 16-bit WAV."""

import subprocess
import sys
import wave

from orpheus_tts import orpheus


def test_say_writes_a_24khz_mono_16bit_wav_of_whole_frames(tmp_path):
    out = tmp_path / "hello.wav"
    result = subprocess.run(
        [sys.executable, "-m", "orpheus_tts.cli", "say", "Hello there, how are you today?", "-o", str(out),
         "--seed", "1", "--device", "cpu", "--set", "scheduler.max_context_tokens=1024"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "TTFB" in result.stdout and "real-time factor" in result.stdout
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        assert w.getnframes() > 0 and w.getnframes() % orpheus.SAMPLES_PER_FRAME == 0


def test_say_with_an_unknown_voice_fails_with_a_clear_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "orpheus_tts.cli", "say", "Hi.", "-o", str(tmp_path / "x.wav"), "--voice", "bob"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and "voice" in result.stderr and "tara" in result.stderr
