"""Streaming SNAC decoding: every frame exactly once, in order, close to a whole decode."""

import numpy as np
import pytest
import torch
from audio_measures import decode_windows

from orpheus_tts import orpheus
from orpheus_tts.codec.snac_codec import SnacCodec
from orpheus_tts.codec.streaming import FrameAccumulator, launch_windows

# Measured with the demo codec, noise off, defaults (1 context frame, 1 lookahead, 4-frame windows),
# chunks after 1 frame then every 2: see test_streamed_audio_matches_whole_decode_within_boundary.
MIN_STREAM_SNR_DB = 30.0  # measured 39.3 dB


@pytest.fixture(scope="module")
def codec():
    return SnacCodec.load("demo", torch.device("cpu"), noise=False)


def _tokens(n_frames, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, orpheus.CODEBOOK_SIZE, size=(n_frames, 7))
    return codes, [orpheus.audio_token_id(int(c), p) for frame in codes for p, c in enumerate(frame)]


def _stream(codec, tokens, context=1, lookahead=1, first=7, every=14, window=4, lengths=None, startup_frames=0):
    """Feed tokens like the engine does; returns the chunks' samples (and window lengths in `lengths`)."""
    acc = FrameAccumulator(context, lookahead, window)
    chunks, since = [], 0
    for i, tok in enumerate(tokens):
        assert acc.push(tok)
        since += 1
        final = i == len(tokens) - 1
        startup = acc.emitted_frames < startup_frames
        if final or since >= (first if not chunks else 7 if startup else every):
            window = acc.next_window(final, startup)
            if window is not None:
                if lengths is not None:
                    lengths.append(window.end - window.start)
                chunks += decode_windows(codec, [(acc, window)])
                since = 0
    return chunks, acc


def snr_db(reference, estimate):
    noise = reference - estimate
    return 10 * np.log10(np.sum(reference**2) / max(np.sum(noise**2), 1e-20))


@pytest.mark.parametrize("n_frames", [1, 2, 3, 4, 5, 12, 40])
def test_every_frame_is_emitted_once_with_2048_samples_each(codec, n_frames):
    _, tokens = _tokens(n_frames)
    chunks, acc = _stream(codec, tokens)
    assert sum(len(c) for c in chunks) == orpheus.SAMPLES_PER_FRAME * n_frames
    assert acc.emitted_frames == n_frames and acc.pending_frames == 0


def test_startup_chunks_carry_one_frame_each_then_chunks_grow(codec):
    _, tokens = _tokens(12)
    acc = FrameAccumulator(1, 1, 4)
    sizes = []
    for i, tok in enumerate(tokens):
        acc.push(tok)
        if (i + 1) % 7 == 0 and acc.emitted_frames < 4:  # the engine's startup schedule: every frame
            window = acc.next_window(final=False, startup=True)
            sizes.append(window.emit_to - window.emit_from)
            acc.mark_emitted(window)
    assert sizes == [1, 1, 1, 1]
    window = acc.next_window(final=False)
    assert window.emit_to == len(acc.frames) - 1  # after start-up the lookahead frame is held back again


def test_first_chunk_comes_after_the_first_frame(codec):
    _, tokens = _tokens(6)
    acc = FrameAccumulator(1, 1, 4)
    for tok in tokens[:7]:
        acc.push(tok)
    window = acc.next_window(final=False)
    assert (window.emit_from, window.emit_to) == (0, 1)


def test_streamed_audio_matches_whole_decode_within_boundary(codec):
    codes, tokens = _tokens(40, seed=3)
    chunks, _ = _stream(codec, tokens)
    streamed = np.concatenate(chunks)
    whole = codec.decode(torch.tensor(codes[None])).numpy()[0]
    assert streamed.shape == whole.shape
    snr = snr_db(whole, streamed)
    print(f"streaming vs whole-decode SNR: {snr:.1f} dB")
    assert snr > MIN_STREAM_SNR_DB
    # Away from chunk joins the streamed samples are the whole decode's, not just close on average.
    spf = orpheus.SAMPLES_PER_FRAME
    error = np.abs(whole - streamed).reshape(-1, spf).max(axis=1)
    assert np.median(error) < 0.05 * np.abs(whole).max()


def test_steady_state_windows_share_one_length_so_sessions_batch_together(codec):
    _, tokens = _tokens(30)
    lengths = []
    chunks, _ = _stream(codec, tokens, lengths=lengths)
    assert lengths[0] == 1  # the first chunk: one frame, no waiting for context
    assert set(lengths[2:-1]) == {4}
    assert sum(len(c) for c in chunks) == 30 * orpheus.SAMPLES_PER_FRAME


def test_startup_schedule_costs_a_measured_few_db_at_the_start(codec):
    """One-frame start-up chunks have no right context: 33.3 dB measured (39.2 without start-up)."""
    codes, tokens = _tokens(40, seed=3)
    chunks, _ = _stream(codec, tokens, startup_frames=4)
    whole = codec.decode(torch.tensor(codes[None])).numpy()[0]
    assert snr_db(whole, np.concatenate(chunks)) > 30.0


def test_more_context_brings_the_stream_closer_to_the_whole_decode(codec):
    codes, tokens = _tokens(24, seed=4)
    whole = codec.decode(torch.tensor(codes[None])).numpy()[0]
    bare = snr_db(whole, np.concatenate(_stream(codec, tokens, context=0, lookahead=0, window=0)[0]))
    default = snr_db(whole, np.concatenate(_stream(codec, tokens)[0]))
    assert default > bare


def test_windows_of_many_sessions_decode_in_one_batch_like_alone(codec):
    accs, expected = [], []
    for seed in range(5):
        codes, tokens = _tokens(6, seed)
        acc = FrameAccumulator(1, 1, 4)
        for tok in tokens:
            acc.push(tok)
        accs.append(acc)
        expected.append(codec.decode(torch.tensor(codes[None])).numpy()[0])
    together = decode_windows(codec, [(a, a.next_window(final=True)) for a in accs])
    for got, want in zip(together, expected):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_batches_larger_than_a_graph_decode_in_parts_with_the_same_audio(codec):
    """`max_batch` (the largest captured graph) splits a batch; every job keeps its own audio."""
    def jobs():
        accs = []
        for seed in range(5):
            acc = FrameAccumulator(1, 1, 4)
            for tok in _tokens(6, seed)[1]:
                acc.push(tok)
            accs.append(acc)
        return [(a, a.next_window(final=True)) for a in accs]

    whole = launch_windows(codec, jobs()).samples()
    parts = launch_windows(codec, jobs(), max_batch=2).samples()
    assert len(parts) == 5
    for got, want in zip(parts, whole):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_invalid_token_for_its_position_is_skipped_and_counted():
    acc = FrameAccumulator(1, 1, 4)
    assert not acc.push(orpheus.audio_token_id(5, 1))  # position 0 expected
    assert acc.push(orpheus.audio_token_id(5, 0))
    assert acc.invalid_tokens == 1 and acc.frame_position == 1
