"""A story's link, JSON and HTML (tinygpt.playground.share)."""
import json
from urllib.parse import parse_qsl, urlparse

import pytest

from tinygpt.inference.branch import branch_story
from tinygpt.inference.engine import Engine
from tinygpt.inference.sampling import SamplingParams
from tinygpt.playground.share import link_query, read_link, saved, story_page, story_record

PARAMS = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, max_new_tokens=12, seed=9, min_p=0.02,
                        repetition_penalty=1.1)


@pytest.fixture
def branched(trained_like, tokenizer):
    engine = Engine(trained_like)
    return list(branch_story(engine, tokenizer, 'A "cat" <b>', [11, 12], 13, PARAMS))[-1]


def test_a_link_carries_everything_that_writes_the_story_again(branched):
    """Catches a link that loses a setting, the seed or the branch's given tokens."""
    query = dict(parse_qsl(urlparse(link_query(branched)).query))
    prompt, params, model, given = read_link(query)
    assert prompt == 'A "cat" <b>' and params == PARAMS and given == [11, 12, 13] and model == branched.source
    assert read_link({"q": "x"}) is None  # a page opened without a story link
    with pytest.raises(ValueError, match="temperature must be a number in"):
        read_link({**query, "t": "9"})
    with pytest.raises(ValueError, match="the link's k='x' is not a number"):
        read_link({**query, "k": "x"})
    with pytest.raises(ValueError, match="given tokens must be token ids"):
        read_link({**query, "given": "1,a"})


def test_the_json_and_html_hold_the_story_as_shown(branched, tmp_path):
    record = story_record(branched)
    assert record["text"] == branched.text and record["ids"] == list(branched.ids) and record["given"] == 3
    assert "".join(t["text"] for t in record["tokens"]) == branched.text[branched.start:]
    assert all(len(t["alternatives"]) == 5 and t["alternatives"][0]["prob"] >= t["alternatives"][-1]["prob"]
               for t in record["tokens"])
    page = story_page(branched)
    assert "<b>A &quot;cat&quot; &lt;b&gt;</b>" in page  # the prompt, escaped
    assert json.loads(saved(branched, False)) == json.loads(json.dumps(record)) and saved(branched, True) == page
