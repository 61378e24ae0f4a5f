import pytest
from hypothesis import given
from hypothesis import strategies as st

from emu.decisions import (
    Choice,
    Decisions,
    Kind,
    PolicySource,
    RandomSource,
    ReplayError,
    ReplaySource,
)

ASKS = st.lists(st.tuples(st.sampled_from(list(Kind)), st.integers(1, 40)), max_size=50)


@given(ASKS, st.integers(0, 2**32))
def test_recorded_path_replays_exactly(asks, seed):
    rec = Decisions(RandomSource(seed))
    first = [rec.choose(k, n) for k, n in asks]
    rep = Decisions(ReplaySource(rec.path))
    assert [rep.choose(k, n) for k, n in asks] == first
    assert rep.path == rec.path
    assert all(c.arity > 1 for c in rec.path)  # arity-1 choices are not choices


def test_same_seed_same_path():
    a, b = Decisions(RandomSource(9)), Decisions(RandomSource(9))
    assert [a.choose(Kind.CPU, 7) for _ in range(50)] == [b.choose(Kind.CPU, 7) for _ in range(50)]


def test_replay_mismatch_names_the_position():
    src = ReplaySource([Choice(Kind.CPU, 3, 1), Choice(Kind.QUANTUM, 8, 2)])
    d = Decisions(src)
    d.choose(Kind.CPU, 3)
    with pytest.raises(ReplayError) as err:
        d.choose(Kind.VIEW, 8)
    assert err.value.position == 1


def test_replay_can_continue_with_another_source():
    d = Decisions(ReplaySource([Choice(Kind.CPU, 2, 1)], then=PolicySource(lambda k, n: n - 1)))
    assert d.choose(Kind.CPU, 2) == 1 and d.choose(Kind.QUANTUM, 5) == 4


def test_source_answer_out_of_range_is_refused():
    with pytest.raises(ReplayError):
        Decisions(PolicySource(lambda k, n: n)).choose(Kind.CPU, 3)


def test_choice_validates_value():
    with pytest.raises(ValueError):
        Choice(Kind.CPU, 2, 2)
