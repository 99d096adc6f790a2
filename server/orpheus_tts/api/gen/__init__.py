"""Code generated from `protos/orpheus/tts/v1/tts.proto` by `make proto`; never edit it by hand."""
