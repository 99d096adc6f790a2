"""The sampler: constrained decoding, penalties, top-p and reproducible per-session seeds."""

import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from orpheus_tts import orpheus
from orpheus_tts.engine.sampler import Sampler, SamplingBatch, hashed_uniform


def _batch(b, *, position, temperature=1.0, top_p=1.0, penalty=1.0, seed=0, counter=0):
    full = lambda v, dt=torch.float32: torch.full((b,), v, dtype=dt)  # noqa: E731
    return SamplingBatch(
        slots=torch.arange(b), temperature=full(temperature), top_p=full(top_p),
        repetition_penalty=full(penalty), seed=full(seed, torch.int64), counter=full(counter, torch.int64),
        frame_position=position if isinstance(position, torch.Tensor) else full(position, torch.int64),
    )


def _hidden(model, b, seed=0):
    return torch.randn(b, model.args.dim, generator=torch.Generator().manual_seed(seed))


def test_constrained_distribution_equals_full_softmax_renormalised_over_allowed_ids(demo_model):
    positions = torch.tensor([0, 1, 3, 6, 0, 5])
    hidden = _hidden(demo_model, len(positions))
    constrained = Sampler(demo_model, n_slots=8, constrained=True)
    full = Sampler(demo_model, n_slots=8, constrained=False)
    batch = _batch(len(positions), position=positions, temperature=0.7)
    ids, probs = constrained.probabilities(hidden, batch)
    _, full_probs = full.probabilities(hidden, batch)
    for row, p in enumerate(positions.tolist()):
        start = orpheus.AUDIO_TOKEN_BASE + orpheus.CODEBOOK_SIZE * p
        allowed = list(range(start, start + orpheus.CODEBOOK_SIZE)) + ([orpheus.END_OF_SPEECH] if p == 0 else [])
        expected = full_probs[row, allowed] / full_probs[row, allowed].sum()
        got = probs[row][torch.isin(ids[row], torch.tensor(allowed))]
        torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-5)
        # Nothing outside the allowed set has any probability.
        assert probs[row][~torch.isin(ids[row], torch.tensor(allowed))].sum() == 0


def test_constrained_samples_are_always_valid_for_their_frame_position(demo_model):
    sampler = Sampler(demo_model, n_slots=16, constrained=True)
    positions = torch.arange(14) % 7
    for counter in range(20):
        tokens = sampler.sample(_hidden(demo_model, 14, counter), _batch(14, position=positions, counter=counter))
        for tok, p in zip(tokens.tolist(), positions.tolist()):
            assert tok == orpheus.END_OF_SPEECH and p == 0 or orpheus.token_to_code(tok, p) is not None


def test_same_seed_and_counter_give_the_same_token_and_different_seeds_differ(demo_model):
    sampler = Sampler(demo_model, n_slots=4)
    hidden = _hidden(demo_model, 1).expand(4, -1)
    batch = _batch(4, position=2, temperature=1.0)
    batch.seed = torch.tensor([7, 7, 8, 9])
    tokens = sampler.sample(hidden, batch).tolist()
    assert tokens[0] == tokens[1]
    assert len({tokens[0], tokens[2], tokens[3]}) > 1


def test_sampling_follows_the_distribution(demo_model):
    """Empirical frequencies over many counters match the probabilities (exponential race)."""
    sampler = Sampler(demo_model, n_slots=1)
    hidden = _hidden(demo_model, 1) * 40  # a peaked distribution so frequencies are measurable
    batch = _batch(1, position=4, temperature=1.0, top_p=1.0)
    ids, probs = sampler.probabilities(hidden, batch)
    top = probs[0].topk(3)
    counts = torch.zeros(3)
    n = 3000
    for counter in range(n):
        batch.counter = torch.tensor([counter])
        tok = sampler.sample(hidden, batch)
        sampler.seen.zero_()
        match = (ids[0, top.indices] == tok).nonzero()
        if len(match):
            counts[match[0, 0]] += 1
    torch.testing.assert_close(counts / n, top.values, atol=0.03, rtol=0)


def test_zero_temperature_is_greedy(demo_model):
    sampler = Sampler(demo_model, n_slots=2)
    hidden = _hidden(demo_model, 2)
    batch = _batch(2, position=3, temperature=0.0, seed=123)
    ids, logits = sampler.candidates(hidden, batch)
    expected = ids.gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)
    assert torch.equal(sampler.sample(hidden, batch), expected)


def test_top_p_keeps_the_smallest_set_reaching_p(demo_model):
    sampler = Sampler(demo_model, n_slots=1)
    hidden = _hidden(demo_model, 1) * 20
    _, base = sampler.probabilities(hidden, _batch(1, position=1, top_p=1.0))
    _, cut = sampler.probabilities(hidden, _batch(1, position=1, top_p=0.5))
    sorted_base = base[0].sort(descending=True).values
    keep = int((sorted_base.cumsum(0) - sorted_base < 0.5).sum())
    assert int((cut[0] > 0).sum()) == keep
    torch.testing.assert_close(cut[0].sum(), torch.tensor(1.0))


def test_repetition_penalty_matches_transformers(demo_model):
    sampler = Sampler(demo_model, n_slots=1, constrained=False)
    hidden = _hidden(demo_model, 1)
    history = torch.tensor([[orpheus.AUDIO_TOKEN_BASE + 5, orpheus.AUDIO_TOKEN_BASE + 4096 + 9, 42]])
    sampler.record(torch.zeros(3, dtype=torch.long), history[0])
    batch = _batch(1, position=0, penalty=1.3)
    ids, logits = sampler.candidates(hidden, batch)
    got = sampler.adjusted_logits(ids, logits, batch)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(history, logits.clone())
    torch.testing.assert_close(got, expected)


def test_hashed_uniform_is_in_the_open_unit_interval_and_uncorrelated():
    u = hashed_uniform(torch.tensor([1, 2]), torch.tensor([0, 0]), 100_000)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert abs(float(torch.corrcoef(u)[0, 1])) < 0.02


def test_suppressed_end_of_speech_gets_no_probability_where_it_would_win(demo_model):
    """Rows with allow_eos=0 never end speech, even with end-of-speech the likeliest id; rows
    with allow_eos=1 keep it (benchmarks suppress it so every stream speaks its whole budget)."""
    eos_row = demo_model.output.weight[orpheus.END_OF_SPEECH]
    hidden = (eos_row / eos_row.norm() * 50).expand(4, -1)  # end of speech dominates the logits
    for constrained in (True, False):
        sampler = Sampler(demo_model, n_slots=4, constrained=constrained)
        batch = _batch(4, position=0, temperature=0.0)
        batch.allow_eos = torch.tensor([1, 0, 1, 0])
        ids, probs = sampler.probabilities(hidden, batch)
        eos_prob = (probs * (ids == orpheus.END_OF_SPEECH)).sum(dim=1)
        assert eos_prob[0] > 0.99 and eos_prob[2] > 0.99
        assert eos_prob[1] == 0 and eos_prob[3] == 0
        tokens = sampler.sample(hidden, batch).tolist()
        assert tokens[0] == tokens[2] == orpheus.END_OF_SPEECH
        assert orpheus.END_OF_SPEECH not in (tokens[1], tokens[3])
        if constrained:
            assert orpheus.token_to_code(tokens[1], 0) is not None and orpheus.token_to_code(tokens[3], 0) is not None
