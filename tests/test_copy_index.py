"""The copy index (tinygpt.data.copy_index): spans copied from the training text, and its plain errors."""
import json
import shutil

import numpy as np
import pytest

from tinygpt.data.copy_index import (FILES, GRAM, MIN_TOKENS, CopyIndex, CopyIndexError, find_copy_index,
                                     window_hashes)

from .conftest import simple_stories

NOVEL = ("The purple elephant danced quietly under the silver moon while seven small robots sang long songs about "
         "cheese, rivers and the forgotten kings of the northern sea.")


@pytest.fixture(scope="module")
def index(token_data):
    return CopyIndex.load(token_data)  # prepare_data.py wrote it beside train.bin


def test_prepare_writes_the_index_and_a_sentence_from_the_training_text_is_found(index, token_data, tokenizer):
    """Catches an index that misses copied text, or finds text that is not there."""
    meta = json.loads((token_data / "meta.json").read_text())
    assert index.info["data_fingerprint"] == meta["fingerprint"] and index.info["gram"] == GRAM
    copied = tokenizer.encode(simple_stories(400, 0)[7])  # a training story, word for word
    assert index.spans(copied) == [(0, len(copied))]
    novel = tokenizer.encode(NOVEL)
    assert len(novel) >= MIN_TOKENS and index.spans(novel) == []
    mixed = novel[:20] + copied + novel[20:]
    assert index.spans(mixed) == [(20, 20 + len(copied))]


def test_windows_across_two_stories_are_not_training_text(tokenizer):
    """Catches an index of windows that straddle <|endoftext|>: no story contains them."""
    a = tokenizer.encode("one two three four five six seven eight nine ten eleven twelve")
    b = tokenizer.encode("red green blue yellow black white pink brown grey gold silver")
    tokens = np.array([*a, tokenizer.eot_id, *b, tokenizer.eot_id])
    index = CopyIndex.build(tokens)
    assert not index.found([*a[-4:], *b[:4]]).any()
    assert index.found(a).all() and window_hashes(tokens)[1].sum() == len(a) - GRAM + 1 + len(b) - GRAM + 1


def test_the_false_positive_rate_is_what_the_index_says(tokenizer):
    rng = np.random.default_rng(0)
    index = CopyIndex.build(rng.integers(0, 50000, 200_000))
    fresh = rng.integers(0, 50000, 50_000)  # windows that are (all but surely) not in it
    measured = index.found(fresh).mean()
    assert abs(measured - index.info["false_positive_rate"]) < 0.01 and measured < 0.08


def test_a_missing_or_foreign_index_gets_a_plain_message(index, token_data, tmp_path):
    with pytest.raises(CopyIndexError, match="carries no copy index .* `python prepare_data.py` writes one"):
        find_copy_index(tmp_path / "best")
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    for name in FILES:
        shutil.copyfile(token_data / name, run / name)
    assert find_copy_index(run / "best", index.info["data_fingerprint"]).info == index.info  # the run's
    with pytest.raises(CopyIndexError, match="of other training data than this model's"):
        find_copy_index(run / "best", "another fingerprint")
    (run / FILES[0]).write_bytes(b"not safetensors")
    with pytest.raises(CopyIndexError, match="unreadable copy index"):
        find_copy_index(run / "best")
