"""`orpheus-tts say` in-process writes a real 24 kHz mono 16-bit WAV."""

import socket
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


def test_health_exits_0_only_while_the_server_is_serving(start_grpc_server):
    """`orpheus-tts health` is the image's HEALTHCHECK: NOT_SERVING before warm-up, SERVING after."""
    server = start_grpc_server(load=False)
    health = [sys.executable, "-m", "orpheus_tts.cli", "health", "--server", server.address]
    loading = subprocess.run(health, capture_output=True, text=True, timeout=60)
    assert loading.returncode == 1 and "NOT_SERVING" in loading.stdout
    server.load()
    serving = subprocess.run(health, capture_output=True, text=True, timeout=60)
    assert serving.returncode == 0 and "SERVING" in serving.stdout


def test_health_of_a_port_nobody_listens_on_fails_with_the_reason():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "orpheus_tts.cli", "health", "--server", f"127.0.0.1:{port}",
                             "--timeout", "2"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr


def test_health_never_imports_torch_so_an_exec_probe_stays_cheap():
    """Kubernetes runs `orpheus-tts health` every few seconds under mutual TLS (an exec probe)."""
    probe = ("import sys; from orpheus_tts import cli; code = cli.main(['health', '--server', 'localhost:1', "
             "'--timeout', '0.2']); print(code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["1", "False"], result.stderr
