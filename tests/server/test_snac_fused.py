"""The fused SNAC decoder that `SnacCodec.compile` compiles decodes as snac's own layers do."""

import pytest
import torch
from snac.layers import Snake1d
from torch import nn

from orpheus_tts.codec.snac_codec import SnacCodec, _DepthwiseConv1d, _Snake

CPU = torch.device("cpu")


def _frames(batch=2, n=4, seed=0):
    return torch.randint(0, 4096, (batch, n, 7), generator=torch.Generator().manual_seed(seed))


def _relative_error(reference, got):
    return float((got - reference).abs().max() / reference.abs().max())


def _count(decoder, kind):
    return sum(isinstance(module, kind) for module in decoder.modules())


def _depthwise_convolutions(decoder):
    return sum(isinstance(m, nn.Conv1d) and m.groups == m.in_channels > 1 for m in decoder.modules())


@pytest.mark.parametrize("path", ["demo", "random"])
def test_fused_decoder_replaces_every_snake_and_depthwise_convolution_and_decodes_the_same(path):
    codec = SnacCodec.load(path, CPU, noise=False)
    fused = codec.fused_decoder()
    # 4 decoder blocks: each 1 + 3 x 2 snakes and 3 depthwise convolutions; the decoder's first
    # convolution is depthwise and a last snake precedes the output convolution.
    assert (_count(codec.model.decoder, Snake1d), _depthwise_convolutions(codec.model.decoder)) == (29, 13)
    assert (_count(fused, _Snake), _count(fused, _DepthwiseConv1d)) == (29, 13)
    assert _count(fused, Snake1d) == _depthwise_convolutions(fused) == 0
    assert {id(p) for p in fused.parameters()} == {id(p) for p in codec.model.decoder.parameters()}

    frames = _frames()
    assert _relative_error(codec.decode(frames), codec._decode_codes(frames, fused)) < 1e-5


def test_fused_decoder_draws_the_same_noise():
    codec = SnacCodec.load("demo", CPU, noise=True)
    fused, frames = codec.fused_decoder(), _frames()
    torch.manual_seed(1)
    reference = codec._decode_codes(frames)
    torch.manual_seed(1)
    assert _relative_error(reference, codec._decode_codes(frames, fused)) < 1e-5


def test_compiled_decoder_matches_eager():
    codec = SnacCodec.load("demo", CPU, noise=False)
    assert not codec.compile() and codec.graph_decoder is codec.model.decoder  # GPU only
    assert codec.compile(force=True)  # Inductor's C++ build: about a minute
    frames = _frames()
    assert _relative_error(codec.decode(frames), codec._decode_codes(frames, codec.graph_decoder)) < 1e-4
