"""Batch selection (new sessions first until their first audio, then nobody starves) and the
state changes the scheduler alone makes."""

from collections import Counter

from orpheus_tts import orpheus
from orpheus_tts.config import CodecConfig, SamplingConfig, SchedulerConfig
from orpheus_tts.engine.kv_cache import SlotAllocator
from orpheus_tts.engine.scheduler import Scheduler
from orpheus_tts.engine.session import Piece, Session, SessionState
from orpheus_tts.requests import SpeechRequest


def _session() -> Session:
    request = SpeechRequest.create("Hi.", defaults=SamplingConfig(), max_text_chars=100)
    return Session(request=request, seed=0, emit=lambda event: None)


def _scheduler(n_slots=8, batch=3, **kw):
    return Scheduler(SchedulerConfig(max_concurrent_sessions=n_slots, max_batch_size=batch, **kw),
                     SlotAllocator(n_slots), CodecConfig())


def _running(scheduler, n, first_audio=True):
    sessions = [_session() for _ in range(n)]
    for s in sessions:
        scheduler.submit(s)
    scheduler.admit()
    for s in sessions:
        s.state = SessionState.DECODING
        s.piece = Piece("Hi.", [1, 2, 3], budget=10_000)
        if first_audio:
            s.metrics.ttfb_s = 0.1
    return sessions


def test_round_robin_gives_every_session_equal_turns():
    scheduler = _scheduler(batch=3)
    sessions = _running(scheduler, 7)
    turns = Counter()
    for step in range(70):
        for s in scheduler.pick_decode():
            turns[s.id] += 1
    assert set(turns) == {s.id for s in sessions}
    assert max(turns.values()) - min(turns.values()) <= 1


def test_new_session_goes_first_until_its_first_audio():
    scheduler = _scheduler(batch=2, ttfb_priority_tokens=20)
    old = _running(scheduler, 4)
    for step in range(5):
        scheduler.pick_decode()
    (new,) = _running(scheduler, 1, first_audio=False)
    for step in range(5, 10):
        assert new in scheduler.pick_decode()
    new.metrics.ttfb_s = 0.05  # its first audio is out: back to round-robin
    picks = [scheduler.pick_decode() for step in range(10, 13)]
    assert sum(new in batch for batch in picks) < 3 and all(len(b) == 2 for b in picks)
    assert old  # the others kept their turns meanwhile


def test_priority_ends_after_ttfb_priority_tokens_even_without_audio():
    scheduler = _scheduler(batch=1, ttfb_priority_tokens=5)
    (old,) = _running(scheduler, 1)
    (new,) = _running(scheduler, 1, first_audio=False)
    new.metrics.tokens = 5
    first, second = scheduler.pick_decode(), scheduler.pick_decode()
    assert {first[0].id, second[0].id} == {old.id, new.id}


def test_prefill_is_bounded_by_the_prompt_token_budget():
    scheduler = _scheduler(batch=8, max_prefill_tokens=40)
    sessions = _running(scheduler, 4)
    for s in sessions:
        s.state = SessionState.WAITING_TEXT
        s.take_incoming()
    for s in sessions:
        s.add_pieces([Piece("x", [1] * 15, 70)], close=True)
    scheduler.start_pieces()
    chosen = scheduler.pick_prefill()
    assert len(chosen) == 2  # 15 + 15 fits in 40, a third would not
    assert scheduler.pick_prefill(max_sessions=1) == chosen[:1]  # the runner's largest prefill graph


def test_finished_session_frees_its_slot_for_the_next_one():
    scheduler = _scheduler(n_slots=1, batch=1, max_pending_sessions=4)
    first, second = _session(), _session()
    scheduler.submit(first)
    scheduler.submit(second)
    assert scheduler.admit() == [first]
    scheduler.release(first)
    assert scheduler.admit() == [second] and second.slot == 0


def test_no_decode_is_queued_past_a_pieces_budget_or_slot_while_its_last_ids_are_unread():
    """With overlapped steps the ids of queued steps are read later: the scheduler counts them,
    so a piece is never asked for an id beyond its budget or its KV slot."""
    scheduler = _scheduler(batch=3, max_context_tokens=6)
    budget_bound, slot_bound = _running(scheduler, 2)
    budget_bound.piece = Piece("Hi.", [1, 2, 3], budget=2)
    slot_bound.piece = Piece("Hi.", [1, 2, 3, 4], budget=100)  # feeding id k writes position 4 + k - 1
    budget_bound.ids_requested = slot_bound.ids_requested = 1
    assert set(scheduler.pick_decode()) == {budget_bound, slot_bound}
    budget_bound.ids_requested = slot_bound.ids_requested = 2
    assert scheduler.pick_decode() == [slot_bound]
    slot_bound.ids_requested = 3
    assert scheduler.pick_decode() == []


def _prompt(scheduler) -> Session:
    (session,) = _running(scheduler, 1)
    session.state = SessionState.WAITING_TEXT
    session.add_pieces([Piece("x", [1] * 15, 70)], close=True)
    scheduler.start_pieces()
    return session


def _step_cost(fixed_s: float, per_row_s: float):
    return lambda rows: fixed_s + per_row_s * rows


def test_a_prefill_short_of_a_batch_waits_for_more_prompts_only_while_others_decode_under_load():
    scheduler = _scheduler(batch=8, prefill_wait_ms=50, prefill_wait_min_load=0.6)
    (decoding,) = _running(scheduler, 1)
    new = _prompt(scheduler)
    loaded = _step_cost(0.7 / 82.03, 0.0)  # steps at 70% of the real-time step
    assert scheduler.pick_prefill(max_sessions=4, step_cost=loaded) == []  # one prompt, fresh: it waits for company
    assert scheduler.pick_prefill(max_sessions=4, step_cost=_step_cost(0.5 / 82.03, 0.0)) == [new]  # light load
    assert scheduler.pick_prefill(max_sessions=1, step_cost=loaded) == [new]  # a full batch goes at once
    new.prefill_since -= 0.05
    assert scheduler.pick_prefill(max_sessions=4, step_cost=loaded) == [new]  # waited long enough
    new.prefill_since += 0.05
    decoding.state = SessionState.DRAINING
    assert scheduler.pick_prefill(max_sessions=4, step_cost=loaded) == [new]  # nothing else would run: no waiting


def test_the_load_a_prefill_waits_at_counts_the_rate_prompts_come_in():
    """A burst that will load the GPU waits from its start: the load counts the rows decoding
    now plus a second's prompts at the recent rate, at the fitted step time."""
    scheduler = _scheduler(n_slots=16, batch=64, prefill_wait_ms=2000, prefill_wait_min_load=0.6)
    _running(scheduler, 2)
    prompts = [_prompt(scheduler) for _ in range(3)]
    per_row = _step_cost(0.0, 0.02 / 82.03)  # each row 2% of the real-time step
    # three prompts within 0.1 s: 30 a second; 2 + 30 rows make 64% of the real-time step
    assert scheduler.pick_prefill(max_sessions=64, step_cost=per_row) == []
    for session, age_s in zip(prompts, (0.9, 0.5, 0.0)):
        session.prefill_since -= age_s  # the same three spread over 0.9 s: 3.3 a second, 10%
    assert scheduler.pick_prefill(max_sessions=64, step_cost=per_row) == prompts
    scheduler.config.prefill_wait_min_load = 0.0  # 0: wait at any load
    assert scheduler.pick_prefill(max_sessions=64, step_cost=None) == []


def test_a_piece_ends_at_end_of_speech_and_later_ids_of_it_are_dropped():
    """A prompt prefilled and decoded in one step gets two ids at once: when the first is
    end-of-speech, the piece is over and the second is a spare, never audio."""
    scheduler = _scheduler(batch=2)
    (session,) = _running(scheduler, 1)
    session.state = SessionState.WAITING_TEXT
    session.add_pieces([Piece("x", [1] * 15, 70)], close=True)
    scheduler.start_pieces()
    scheduler.launched([session])  # the prefill
    scheduler.launched([session])  # and the decode step behind it
    first_audio = orpheus.AUDIO_TOKEN_BASE
    assert scheduler.take_tokens([session], [session.piece_index], [orpheus.END_OF_SPEECH]) == [session]
    assert session.state is SessionState.DRAINING
    assert scheduler.take_tokens([session], [session.piece_index], [first_audio]) == []
    assert session.metrics.tokens == 1 and session.accumulator.audio_tokens == 0
    scheduler.pieces_sent([session])
    assert scheduler.start_pieces() == [session]  # its text is complete: the engine finishes it


def test_a_row_queued_for_an_earlier_piece_is_skipped():
    scheduler = _scheduler(batch=2)
    (session,) = _running(scheduler, 1)
    session.state = SessionState.WAITING_TEXT
    session.add_pieces([Piece("x", [1] * 15, 70), Piece("y", [1] * 15, 70)], close=True)
    scheduler.start_pieces()
    scheduler.launched([session])
    assert scheduler.take_tokens([session], [session.piece_index - 1], [orpheus.AUDIO_TOKEN_BASE]) == []
    assert session.metrics.tokens == 0  # a row queued for the piece before: dropped
    assert scheduler.take_tokens([session], [session.piece_index], [orpheus.AUDIO_TOKEN_BASE]) == []
    assert session.metrics.tokens == 1 and session.tokens_since_flush == 1


def test_a_prefill_takes_no_more_prompt_tokens_than_the_playing_streams_can_spare():
    scheduler = _scheduler(n_slots=16, batch=8, prefill_wait_ms=0)
    _running(scheduler, 1)
    prompts = [_prompt(scheduler) for _ in range(4)]  # 15 tokens each
    seen = []

    def spare(active, now):
        seen.append(len(active))
        return 31

    assert scheduler.pick_prefill(max_sessions=8, max_tokens=spare) == prompts[:2] and seen == [5]
    assert scheduler.pick_prefill(max_sessions=8, max_tokens=lambda active, now: 0) == prompts[:1]  # the oldest goes
    assert scheduler.pick_prefill(max_sessions=8, max_tokens=lambda active, now: None) == prompts
