"""Option values, checked in ``configure``: numbers by :mod:`mitmflare.config.option_types`,
enumerations by their ``choices`` (:class:`mitmflare.bundle.Bundle`). A bad value raises
``OptionsError`` naming the option; none is clamped silently."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from mitmflare.bundle import Bundle, make_addons
from mitmflare.config.option_types import decimal, whole


def test_whole_takes_the_bound_and_refuses_below_it():
    assert whole("flare_x", 0, 0) == 0
    with pytest.raises(exceptions.OptionsError, match=r"flare_x must be a whole number >= 1, not 0"):
        whole("flare_x", 0, 1)


def test_decimal_reads_the_text_and_refuses_what_is_out_of_range():
    assert decimal("flare_x", "0.5", 0, 1) == 0.5
    assert decimal("flare_x", "0", 0, low_inclusive=True) == 0.0
    for text in ("0", "1.5", "abc", "nan"):
        with pytest.raises(exceptions.OptionsError, match=r"flare_x must be a number in \(0, 1\]"):
            decimal("flare_x", text, 0, 1)


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    """Every part, as mitmdump loads them, with its files in a fresh folder."""
    monkeypatch.chdir(tmp_path)
    bundle = Bundle(make_addons())
    with taddons.context(bundle) as tctx:
        yield bundle, tctx
        bundle.done()  # stops the database writer process


# (option, a value out of range, the smallest value in range)
NUMBERS = [
    ("flare_retry_attempts", -1, 0),
    ("flare_retry_delay_ms", -1, 0),
    ("flare_queue_s", -1, 0),
    ("flare_max_cooldown_s", 0, 1),
    ("flare_oauth_refresh_buffer_min", -1, 0),
    ("flare_payload_max_kb", 0, 1),
    ("flare_stream_copy_kb", -1, 0),
    ("flare_connect_timeout_s", 0, 1),
    ("flare_stream_idle_timeout_s", 0, 1),
]


@pytest.mark.parametrize(("option", "bad", "good"), NUMBERS, ids=[n[0] for n in NUMBERS])
def test_a_number_out_of_range_is_refused_not_clamped(bundle, option, bad, good):
    addon, tctx = bundle
    with pytest.raises(exceptions.OptionsError, match=rf"{option} must be a whole number >= "
                                                      rf"{good}, not {bad}"):
        tctx.configure(addon, **{option: bad})
    tctx.configure(addon, **{option: good})
    assert getattr(tctx.options, option) == good


def test_the_values_in_force_follow_the_options(bundle):
    addon, tctx = bundle
    tctx.configure(addon, flare_retry_attempts=0, flare_payload_max_kb=1,
                   flare_stream_copy_kb=0, flare_queue_s=0)
    router = next(p for p in addon.parts if type(p).__name__ == "Router")
    failover = next(p for p in addon.parts if type(p).__name__ == "Failover")
    recorder = next(p for p in addon.parts if type(p).__name__ == "Recorder")
    assert failover.attempts == 0 and router.proxy.queue_s == 0.0
    assert recorder.payload_limit == 1024 and recorder.copy_limit == 0


ENUMERATIONS = ["flare_strategy", "flare_payloads", "flare_window_start", "flare_log_format",
                "flare_oauth_clients"]


@pytest.mark.parametrize("option", ENUMERATIONS)
def test_every_enumeration_declares_its_choices_and_refuses_others(bundle, option):
    addon, tctx = bundle
    choices = tctx.master.options._options[option].choices
    assert choices and addon.choices[option] == choices
    with pytest.raises(exceptions.OptionsError, match=rf"{option}='bogus': choose one of "):
        tctx.configure(addon, **{option: "bogus"})
    tctx.configure(addon, **{option: choices[-1]})
    assert getattr(tctx.options, option) == choices[-1]


def test_no_other_flare_option_reads_as_an_enumeration(bundle):
    """An option whose help lists its values as ``a | b`` must declare them as choices."""
    _, tctx = bundle
    listed = {name for name, o in tctx.master.options._options.items()
              if name.startswith("flare_") and " | " in o.help and not o.choices}
    assert listed == set()
