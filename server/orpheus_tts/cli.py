"""`orpheus-tts`: the command line.

    orpheus-tts serve [--grpc-port 50051] [--http-port 8000] [--metrics-port 9090] [--host 0.0.0.0] [--model demo|DIR] [--snac demo|DIR]
    orpheus-tts say "TEXT" -o out.wav [--voice tara] [--server HOST:PORT | --model demo|DIR --snac demo|DIR]
    orpheus-tts bench (--server HOST:PORT | --in-process) [--mode scaling|tuning|all] [--concurrent N] [--requests M] [--output results.json]
    orpheus-tts health [--server localhost:50051]     exit 0 when the server reports SERVING (the image's HEALTHCHECK)

Common flags: `--config FILE` (YAML) and `--set section.key=value` (repeatable) override the
configuration; `--model`/`--snac` are shorthands for `model.path`/`codec.path`. The clients (`say
--server`, `health`) speak TLS with `--tls-ca` (mutual TLS with `--tls-cert`/`--tls-key`) and send
`--api-key` (default: the environment's ORPHEUS_TTS_API_KEY).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from orpheus_tts.config import ConfigError, ServerConfig, load_config, parse_set_flags
from orpheus_tts.orpheus import SAMPLE_RATE_HZ
from orpheus_tts.errors import RequestError


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (default: none; config/example.yaml lists every key)")
    parser.add_argument("--model", help="Orpheus model: 'demo' or a Hugging Face checkpoint directory")
    parser.add_argument("--snac", help="SNAC 24 kHz codec: 'demo' or a directory (config.json + pytorch_model.bin)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--engine", help="a built engine directory (orpheus-tts build-engine); replaces --model/--snac")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config value, e.g. --set scheduler.max_batch_size=8")


def build_config(args: argparse.Namespace) -> ServerConfig:
    overrides = parse_set_flags(args.set)
    for flag, key in (("model", "model.path"), ("snac", "codec.path"), ("device", "model.device"),
                      ("engine", "engine.path")):
        if getattr(args, flag, None):
            overrides[key] = getattr(args, flag)
    if getattr(args, "device", None):
        overrides["codec.device"] = args.device
    return load_config(args.config, overrides)


async def _say_in_process(config: ServerConfig, args: argparse.Namespace) -> tuple[bytes, float | None, float | None]:
    from orpheus_tts.audio import to_pcm16
    from orpheus_tts.engine import AudioChunk, Engine, Outcome

    engine = Engine.from_config(config).start()
    try:
        request = engine.make_request(args.text, voice=args.voice, seed=args.seed)
        pcm = bytearray()
        async for event in engine.synthesize(request):
            if isinstance(event, AudioChunk):
                pcm += to_pcm16(event.samples)
            elif event.outcome is not Outcome.OK:
                raise RuntimeError(f"synthesis {event.outcome.value}: {event.error}")
            else:
                metrics = event.metrics
        return bytes(pcm), metrics.ttfb_s, metrics.real_time_factor
    finally:
        engine.stop()


def _add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-ca", metavar="FILE", help="speak TLS, trusting the server certificates this PEM CA "
                                                        "bundle signed")
    parser.add_argument("--tls-server-name", metavar="NAME", help="with --tls-ca: the name the server's certificate "
                                                                 "must hold (default: the host of --server)")
    parser.add_argument("--tls-cert", metavar="FILE", help="with --tls-ca: a client certificate (mutual TLS)")
    parser.add_argument("--tls-key", metavar="FILE", help="with --tls-cert: its private key")
    parser.add_argument("--api-key", default=os.environ.get("ORPHEUS_TTS_API_KEY"),
                        help="sent as `authorization: Bearer KEY` (default: $ORPHEUS_TTS_API_KEY)")


def _grpc_channel(args: argparse.Namespace):
    """A channel to `--server`, over TLS when `--tls-ca` is given."""
    import grpc

    if not args.tls_ca:
        if args.tls_cert or args.tls_key or args.tls_server_name:
            raise ValueError("--tls-cert, --tls-key and --tls-server-name need --tls-ca")
        return grpc.insecure_channel(args.server)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    pair = {"certificate_chain": Path(args.tls_cert).read_bytes(),
            "private_key": Path(args.tls_key).read_bytes()} if args.tls_cert else {}
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(args.tls_ca).read_bytes(), **pair)
    options = (("grpc.ssl_target_name_override", args.tls_server_name),) if args.tls_server_name else ()
    return grpc.secure_channel(args.server, credentials, options)


def _key_metadata(args: argparse.Namespace) -> tuple:
    return (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()


def _say_remote(args: argparse.Namespace) -> tuple[bytes, float | None, float | None]:
    """Stream from a running server; TTFB and real-time factor as this client sees them."""
    from orpheus_tts.api.gen import tts_pb2, tts_pb2_grpc

    request = tts_pb2.SynthesizeRequest(text=args.text, voice=args.voice or "",
                                        encoding=tts_pb2.AUDIO_ENCODING_PCM_S16LE)
    if args.seed is not None:
        request.seed = args.seed
    pcm, ttfb_s, last_audio = bytearray(), None, None
    with _grpc_channel(args) as channel:
        started = time.monotonic()
        for response in tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(request, timeout=args.timeout,
                                                                          metadata=_key_metadata(args)):
            if response.HasField("audio"):
                last_audio = time.monotonic()
                ttfb_s = last_audio - started if ttfb_s is None else ttfb_s
                pcm += response.audio.data
    if last_audio is None:
        return bytes(pcm), None, None
    return bytes(pcm), ttfb_s, len(pcm) / 2 / SAMPLE_RATE_HZ / (last_audio - started)


def cmd_say(args: argparse.Namespace) -> int:
    from orpheus_tts.audio import write_wav

    started = time.monotonic()
    if args.server:
        import grpc

        try:
            pcm, ttfb_s, rtf = _say_remote(args)
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    else:
        pcm, ttfb_s, rtf = asyncio.run(_say_in_process(build_config(args), args))
    write_wav(args.output, pcm)
    seconds = len(pcm) / 2 / SAMPLE_RATE_HZ
    ttfb = f"{ttfb_s * 1000:.0f} ms" if ttfb_s is not None else "n/a"
    print(f"wrote {args.output}: {seconds:.2f} s of audio; TTFB {ttfb}; real-time factor "
          f"{rtf:.2f}; total {time.monotonic() - started:.1f} s" if rtf else f"wrote {args.output}: no audio")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from orpheus_tts.api.server import serve

    from orpheus_tts.api.http import HttpSettings

    http_port = args.http_port if args.http_port >= 0 else None
    asyncio.run(serve(build_config(args), args.host, args.grpc_port, args.metrics_port, args.grace_s, http_port,
                      HttpSettings(idle_timeout_s=args.ws_idle_timeout_s)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """The load generator lives in the `orpheus_bench` package beside the server, installed with
    the distribution; an image that left it out still serves, and says so here."""
    import shlex

    try:
        from orpheus_bench import load_cli
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("orpheus_bench"):
            raise
        print("error: `orpheus-tts bench` needs the orpheus_bench package, which this installation lacks "
              "(install orpheus-tts from the whole repository: pip install '.[bench]')", file=sys.stderr)
        return 2
    command = shlex.join(["orpheus-tts", *(args.argv if args.argv is not None else sys.argv[1:])])
    return load_cli.main(args, build_config(args), command)


def cmd_build_engine(args: argparse.Namespace) -> int:
    from engine_jobs.build import run

    return run(args)


def cmd_health(args: argparse.Namespace) -> int:
    """The gRPC health check Kubernetes' probe makes, as a command: 0 when SERVING, 1 otherwise."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _grpc_channel(args) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                              timeout=args.timeout, metadata=_key_metadata(args))
        except grpc.RpcError as exc:
            print(f"{args.server}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.server}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orpheus-tts", description="Orpheus TTS streaming server and tools")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    say = sub.add_parser("say", help="synthesize TEXT into a 24 kHz mono 16-bit WAV file")
    say.add_argument("text")
    say.add_argument("-o", "--output", required=True, help="output .wav path")
    say.add_argument("--voice", help="one of the model's voices (ListVoices; the English model's: tara, leah, "
                                     "jess, leo, dan, mia, zac, zoe); default: default_voice")
    say.add_argument("--seed", type=int, help="sampling seed, for reproducible output")
    say.add_argument("--server", metavar="HOST:PORT", help="stream from a running server instead of in-process")
    say.add_argument("--timeout", type=float, default=300.0, help="with --server: seconds before giving up")
    _add_config_flags(say)
    _add_client_flags(say)
    say.set_defaults(func=cmd_say)

    serve = sub.add_parser("serve", help="run the gRPC and HTTP/WebSocket servers and the /metrics endpoint")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    serve.add_argument("--grpc-port", type=int, default=50051, help="gRPC port (default: 50051; 0 picks one)")
    serve.add_argument("--http-port", type=int, default=8000,
                       help="HTTP and WebSocket port (default: 8000; 0 picks one; -1 serves no HTTP)")
    serve.add_argument("--stream-idle-timeout-s", "--ws-idle-timeout-s", dest="ws_idle_timeout_s", type=float,
                       default=30.0, help="end a streamed-text request (WebSocket, gRPC StreamingSynthesize) whose "
                                          "client sends nothing for this long while text is due")
    serve.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (default: 9090)")
    serve.add_argument("--grace-s", type=float, default=10.0, help="seconds in-flight streams get on shutdown")
    _add_config_flags(serve)
    serve.set_defaults(func=cmd_serve)

    bench = sub.add_parser("bench", help="load benchmark: TTFB, real-time share, tokens/s against concurrency")
    where = bench.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", metavar="HOST:PORT", help="benchmark a running server (its gRPC address)")
    where.add_argument("--in-process", action="store_true", help="run the engine in this process instead")
    bench.add_argument("--api", default="grpc", metavar="grpc,http,websocket",
                       help="with --server: the doors to load, each with the same workload in turn (default: grpc)")
    bench.add_argument("--http-server", metavar="HOST:PORT",
                       help="with --api http or websocket: the server's HTTP address (default: --server's host, "
                            "port 8000)")
    bench.add_argument("--api-key", default=os.environ.get("ORPHEUS_TTS_API_KEY"),
                       help="with --server: sent as `authorization: Bearer KEY` on every door (default: "
                            "$ORPHEUS_TTS_API_KEY)")
    bench.add_argument("--adapters", type=int, default=0, metavar="N",
                       help="streams spread over N LoRA adapters, bench-0 ... bench-{N-1} in the server's adapters.dir "
                            "(python -m orpheus_bench.lora_adapters writes them); default: the base model")
    bench.add_argument("--mode", choices=("scaling", "tuning", "all", "overload"), default="scaling",
                       help="scaling: ramp 1, 2, 4 ... N; tuning: largest concurrency meeting the TTFB target; all: "
                            "both; overload: 1.5x and 2x --capacity")
    bench.add_argument("--workload", choices=("standard", "mixed"), default="standard",
                       help="standard: one sentence, its whole budget; mixed: 70%% short, 30%% two-sentence, 10%% "
                            "cancelled at a random moment")
    bench.add_argument("--capacity", type=int, help="with --mode overload: the concurrency the server keeps real time")
    bench.add_argument("--arrival-rate", type=float, action="append", default=[], metavar="PER_S",
                       help="also an open-loop level: Poisson arrivals at this rate for --duration-s (repeatable)")
    bench.add_argument("--duration-s", type=float, default=30.0, help="length of each open-loop level")
    bench.add_argument("--concurrent", type=int, default=16, help="highest concurrency (default: 16)")
    bench.add_argument("--levels", metavar="N,N,...",
                       help="with --mode scaling: these concurrencies instead of the ramp 1, 2, 4 ... --concurrent")
    bench.add_argument("--requests", type=int, default=4,
                       help="streams each concurrent client makes back to back at each level (default: 4)")
    bench.add_argument("--text", default=None, help="the sentence each stream speaks (default: a 57-character one, 118 frames)")
    bench.add_argument("--stop-at-end-of-speech", action="store_true",
                       help="let streams end where the model ends speech (default: the standard workload "
                            "suppresses it, so every stream speaks its whole 118-frame budget)")
    bench.add_argument("--stagger-s", type=float, default=1.0, help="sessions start spread over this many seconds")
    bench.add_argument("--target-ttfb-ms", type=float,
                       help="TTFB p95 target for tuning (default: the active profile's target_ttfb_ms)")
    bench.add_argument("--client-processes", type=int, default=0, metavar="N",
                       help="with --server: spread the streams over N client processes, each with its own event loop "
                            "and connections, so the client is not what is measured (default 0: one per 64 streams, "
                            "at most half the CPUs)")
    bench.add_argument("--timeout", type=float, default=300.0, help="with --server: seconds per stream before giving up")
    bench.add_argument("--output", default="results.json", help="results JSON (a PNG is written beside it)")
    _add_config_flags(bench)
    bench.set_defaults(func=cmd_bench)

    check = sub.add_parser("health", help="ask a server's gRPC health service; exit 0 when it is SERVING")
    check.add_argument("--server", default="localhost:50051", metavar="HOST:PORT")
    check.add_argument("--timeout", type=float, default=3.0, help="seconds before giving up")
    _add_client_flags(check)
    check.set_defaults(func=cmd_health)

    build = sub.add_parser("build-engine", help="build an engine directory for `serve --engine` "
                           "(what the operator's build Job runs)")
    build.set_defaults(func=cmd_build_engine)
    given = sys.argv[1:] if argv is None else argv
    if "build-engine" in given:  # its flags import torch: not for `health`, an exec probe every few seconds
        from engine_jobs.build import add_build_flags

        add_build_flags(build)

    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return args.func(args)
    except (ConfigError, RequestError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
