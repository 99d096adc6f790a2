"""From an applied voice to speech: the real operator against kmock makes the build Job; the Job's
container runs for real (`python -m engine_jobs.build` on a tiny real checkpoint); the operator
then makes the Deployment, whose container runs for real (`orpheus-tts serve --engine`) and speaks.

What differs from a kubelet on a GPU node, and only that: volumes are local directories
(`LocalKubelet`), the server's `--device cuda` becomes `cpu`, and its three ports become free
loopback ports. On the CPU the builder (`--compile auto`) writes the weights and records the
compile as pending; a CPU server compiles and captures nothing, so it starts from them.

Unlike the rest of tests/operator, this needs the server stack (torch, snac, transformers).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave

import grpc
import httpx
import numpy as np
from engine_testkit import LocalKubelet, free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc
from operator_testkit import DEPLOYMENTS, JOBS, eventually, job_name_for, load_example

from orpheus_operator.serving import ENGINE_MOUNT
from tests.server.checkpoint_testkit import llama_config, write_checkpoint, write_demo_snac

SAMPLE_RATE_HZ = 24_000
SAMPLES_PER_FRAME = 2048  # one 7-token Orpheus frame of SNAC 24 kHz audio


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def wait_until_serving(address: str, within_s: float, server) -> float:
    """Poll the gRPC health service as the startup probe does; seconds until SERVING."""
    started = time.monotonic()
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() - started < within_s:
            assert server.poll() is None, "the server exited during start-up"
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - started
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"not SERVING within the startup probe's {within_s:.0f} s")


async def test_applied_voice_gets_a_built_engine_and_a_server_that_speaks_from_it(mock_cluster, start_operator, tmp_path):
    c = mock_cluster
    voice = load_example("voice-h100-longform.yaml")  # bf16, model on the PVC `orpheus-models`
    voice["spec"]["codec"] = {"pvc": {"claimName": "orpheus-models", "path": "snac_24khz"}}
    name = voice["metadata"]["name"]
    models, cache = tmp_path / "orpheus-models", tmp_path / "orpheus-engine-cache"
    write_checkpoint(models / "orpheus-3b-0.1-ft", llama_config())  # tiny, the full Orpheus vocabulary
    write_demo_snac(models / "snac_24khz")
    kubelet = LocalKubelet({"orpheus-models": models, "orpheus-engine-cache": cache}, tmp_path / "empty-dirs")

    await start_operator()
    await c.create_voice(voice, "uid-engine-e2e")
    job_name = job_name_for(voice)
    job = await eventually(lambda: c.get(JOBS, job_name), what="the engine build Job")

    # The Job's pod runs the builder; the engine appears complete under its hash on the cache PVC.
    job_pod = job["spec"]["template"]["spec"]
    build = job_pod["containers"][0]
    digest = flag_value(build["args"], "--engine-hash")
    built = await asyncio.to_thread(kubelet.run, job_pod, 180)
    assert built.returncode == 0, f"builder exited {built.returncode}:\n{built.stdout}\n{built.stderr}"
    engine_dir = cache / digest
    assert (engine_dir / "COMPLETE").is_file()
    manifest = json.loads((engine_dir / "engine.json").read_text())
    assert manifest["engineHash"] == digest and manifest["precision"] == "bf16" and manifest["gpuArch"] == "sm_90"
    assert manifest["slotBudget"] == {"sessions": 48, "contextTokens": 8192, "maxBatch": 32}
    assert manifest["pending"] == ["compile"]  # no GPU here; on the node's H100 it compiles

    # The Job controller's part: mark it complete. The operator rolls out the Deployment.
    await c.complete_job(job_name)
    deployment = await eventually(lambda: c.get(DEPLOYMENTS, name), what="the Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert flag_value(container["args"], "--engine") == ENGINE_MOUNT and "--model" not in container["args"]
    argv = kubelet.argv(pod, container)
    assert flag_value(argv, "--engine") == str(engine_dir)  # the engine volume's subPath is the hash

    # What a GPU node would not need changed: the device, and ports that are free on this machine.
    argv[argv.index("--device") + 1] = "cpu"
    ports = {flag: free_port() for flag in ("--grpc-port", "--http-port", "--metrics-port")}
    for flag, port in ports.items():
        argv[argv.index(flag) + 1] = str(port)
    log = tmp_path / "server.log"
    server = kubelet.start(pod, argv, log)
    try:
        probe = container["startupProbe"]
        allowed_s = probe["periodSeconds"] * probe["failureThreshold"]
        await asyncio.to_thread(wait_until_serving, f"127.0.0.1:{ports['--grpc-port']}", allowed_s, server)

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['--http-port']}", timeout=120) as client:
            response = await client.post("/v1/audio/speech",
                                         json={"input": "Hello from the engine.", "response_format": "wav", "seed": 1})
        assert response.status_code == 200, response.text
        with wave.open(io.BytesIO(response.content)) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLE_RATE_HZ, 1, 2)
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        assert len(samples) > 0 and len(samples) % SAMPLES_PER_FRAME == 0  # whole frames, none dropped
        assert np.abs(samples).max() > 0
    finally:
        server.terminate()
        await asyncio.to_thread(server.wait, 30)
        print(f"\n--- server log ---\n{log.read_text()[-4000:]}")
