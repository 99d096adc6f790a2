"""Facts the operator shares with the server and the engine builder; generated, do not edit.

Written by `make generate` (tools/gen_kubernetes.py) from the sources named beside each value;
edit those. The operator must not import torch, so it reads this copy, and the test suite fails
when the copy drifts from its source.
"""

# orpheus_tts.model.llama.ModelArgs.from_name("orpheus-3b")
VOCAB_SIZE = 156_940
HIDDEN_SIZE = 3_072
# ModelArgs.kv_bytes_per_token: layers x KV heads x head_dim x 2 (K, V) x 2 bytes (a bf16/fp16 cache)
KV_BYTES_PER_TOKEN = 114_688
# The projections' sizes a LoRA adapter place is made of (orpheus_tts.model.lora.sub_shapes)
N_LAYERS = 28
Q_SIZE = 3_072  # heads x head_dim
KV_SIZE = 1_024  # KV heads x head_dim
INTERMEDIATE_SIZE = 8_192

# orpheus_tts.model.fp8.FP8_MIN_COMPUTE_CAPABILITY: the first GPU generation with FP8 tensor cores
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)

# orpheus_tts.orpheus
VOICES = ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe")
# orpheus_tts.config.ServerConfig.default_voice: the voice of a request that names none
DEFAULT_VOICE = "tara"
TOKENS_PER_SECOND = 82.03125  # audio tokens in one second of speech

# orpheus_tts.config.AdaptersConfig: LoRA adapter places on the GPU, and the rank each is sized for
ADAPTER_MAX_RESIDENT = 8
ADAPTER_MAX_RANK = 64

# engine_jobs.build.BUILDER_VERSION: hashed into every engine build's name
BUILDER_VERSION = "3"
