"""The fast path's tuning: one frozen, typed record, read through `active_tuning`, changed only inside a `with`."""

from __future__ import annotations

import dataclasses

import pytest

from pimoe.cuda.tuning import GemmConfig, Tuning, active_tuning, tuning_overrides


def test_overrides_hold_inside_the_block_and_are_restored_after_it() -> None:
    before = active_tuning()
    with tuning_overrides(pdl=False, up_small=GemmConfig(16, 16, 16, 4, 1)) as inside:
        assert active_tuning() is inside
        assert inside.pdl is False and inside.up_small == GemmConfig(16, 16, 16, 4, 1)
        assert inside.down_small == before.down_small, "fields not named keep their values"
    assert active_tuning() is before


def test_overrides_are_restored_when_the_block_raises() -> None:
    before = active_tuning()
    with pytest.raises(RuntimeError), tuning_overrides(switch_rows=1):
        raise RuntimeError("a failed variant of a sweep")
    assert active_tuning() is before


def test_nested_overrides_unwind_in_order() -> None:
    with tuning_overrides(switch_rows=1):
        with tuning_overrides(small_rows=2):
            assert (active_tuning().switch_rows, active_tuning().small_rows) == (1, 2)
        assert active_tuning().small_rows == Tuning().small_rows and active_tuning().switch_rows == 1


def test_unknown_field_is_rejected_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="up_smal.*known:.*up_small"):
        with tuning_overrides(up_smal=GemmConfig(1, 1, 1, 1, 1)):
            pass


@pytest.mark.parametrize(("field", "value"), [("pdl", 1), ("switch_rows", True), ("up_act", (128, 128, 64, 8, 3)),
                                              ("small_backend", "hybrid"), ("mixed_width_down", "cublas")])
def test_wrong_type_or_choice_names_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=f"Tuning.{field}"):
        Tuning(**{field: value})


def test_tuning_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        active_tuning().pdl = False  # type: ignore[misc]


def test_parse_overrides_reads_shapes_switches_counts_and_choices() -> None:
    from pimoe.cuda.tuning import parse_overrides

    fields = parse_overrides(["up_act=64x128x64x4x5,pdl=0", "", "combine_tokens=16", "mixed_width_down=library"])
    assert fields == {"up_act": GemmConfig(64, 128, 64, 4, 5), "pdl": False, "combine_tokens": 16,
                      "mixed_width_down": "library"}
    with tuning_overrides(**fields):
        assert active_tuning().up_act == GemmConfig(64, 128, 64, 4, 5) and active_tuning().combine_tokens == 16


@pytest.mark.parametrize("text, named", [
    ("up_act=64x128", "up_act"), ("pdl=yes", "pdl"), ("gather_rows=x", "gather_rows"), ("no_such=1", "no_such"),
    ("up_act", "up_act"), ("mixed_width_down=cutlass", "mixed_width_down")])
def test_parse_overrides_names_what_it_cannot_read(text: str, named: str) -> None:
    from pimoe.cuda.tuning import parse_overrides

    with pytest.raises(ValueError, match=named):
        parse_overrides([text])


def test_parse_overrides_reads_back_every_field_as_a_command_line_writes_it() -> None:
    """Every field of the record, written the way a benchmark's command line writes it, parses to its value."""
    import dataclasses

    from pimoe.cuda.tuning import parse_overrides

    def written(value) -> str:
        if isinstance(value, GemmConfig):
            return "x".join(str(part) for part in dataclasses.astuple(value))
        return str(int(value)) if isinstance(value, bool) else str(value)

    defaults = Tuning()
    items = [f"{field.name}={written(getattr(defaults, field.name))}" for field in dataclasses.fields(defaults)]
    assert parse_overrides([",".join(items)]) == {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}
