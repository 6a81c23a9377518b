"""``--keep-attention`` specs: what each names, and every malformed one refused in one line."""

import pytest

from mmmamba.convert.layer_spec import parse_auto, parse_keep_attention
from mmmamba.errors import MmmambaError


@pytest.mark.parametrize(
    "spec, layers",
    [("none", []), ("every:4", [0, 4, 8]), ("head:2", [0, 1]), ("tail:3", [9, 10, 11]), ("0,4,8", [0, 4, 8]),
     ("8, 4", [4, 8]), ("auto:3", [])],
)  # fmt: skip
def test_specs_name_their_layers(spec, layers):
    assert parse_keep_attention(spec, 12) == layers


@pytest.mark.parametrize(
    "spec, says",
    [("", "empty"), ("1,1", "twice"), ("１", "not understood"), ("every:４", "not understood"),
     ("a,b", "not understood"),
     ("every:0", "1 or more"), ("head:13", "between 0 and 12"), ("12", "outside 0..11"), ("-1", "not understood"),
     ("auto:0", "between 1 and 12"), ("auto:x", "whole number"), ("foo:3", "not understood")],
)  # fmt: skip
def test_malformed_specs_are_refused(spec, says):
    with pytest.raises(MmmambaError, match=says):
        parse_keep_attention(spec, 12)


def test_auto_counts_the_layers_to_choose():
    assert parse_auto("auto:8", 12) == 8 and parse_auto("every:4", 12) is None
