"""Branching on the page and through the `branch` API, on a launched app (a real Gradio server and browser)."""
import re
import shutil

import pytest

from tests.test_app import browser_page, checkpoint, client, registry, server  # noqa: F401 - fixtures

MAX_NEW = 14


def test_the_branch_api_keeps_the_prefix_and_puts_the_chosen_token_at_p(client, registry):
    """Catches a branch that rewrites the kept tokens, loses the chosen one, or counts max_new_tokens from p."""
    first = client.predict("Once upon a time", [], 318, 1.0, 50, 0.95, MAX_NEW, 5, api_name="/branch")
    assert first["ids"][0] == 318 and len(first["ids"]) == MAX_NEW and first["branch_at"] == 0
    ids, p = first["ids"], 6
    chosen = 50 if ids[p] != 50 else 51
    branch = client.predict("Once upon a time", ids[:p], chosen, 1.0, 50, 0.95, MAX_NEW, 5, api_name="/branch")
    assert branch["ids"][:p] == ids[:p] and branch["ids"][p] == chosen and len(branch["ids"]) == MAX_NEW
    assert branch["probs"][:p] == pytest.approx(first["probs"][:p], rel=1e-4)
    twig = client.predict("Once upon a time", branch["ids"][:p + 3], 1000, 1.0, 50, 0.95, MAX_NEW, 5,
                          api_name="/branch")  # a branch of the branch
    assert twig["ids"][:p + 3] == branch["ids"][:p + 3] and twig["ids"][p + 3] == 1000
    tokenizer = registry.served.tokenizer
    assert twig["text"] == "Once upon a time" + tokenizer.decode(twig["ids"])
    for ids_, chosen_, message in [(ids[:3], 60_000, r"token ids must be integers in \[0, 50257\), got 60000"),
                                   (list(range(MAX_NEW)), 5, "must come before the story's end"),
                                   ("abc", 5, "ids must be a list of the story's token ids")]:
        with pytest.raises(Exception, match=message):
            client.predict("Once upon a time", ids_, chosen_, 1.0, 50, 0.95, MAX_NEW, 5, api_name="/branch")


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_clicking_an_alternative_writes_a_branch_and_the_tree_reopens_it(server):
    """Catches a branch that changes the story before the clicked token or not the clicked token itself, and a
    tree that cannot bring the first story back."""
    from playwright.sync_api import expect

    with browser_page(1280, 1100) as page:
        page.goto(server)
        page.locator("#prompt textarea").fill("Once upon a time")
        page.locator("#max-new input[type=number]").fill(str(MAX_NEW))
        page.locator("#seed input").fill("11")
        expect(page.locator("#max-new input[type=number]")).to_have_value(str(MAX_NEW))
        page.locator("#generate").click()
        expect(page.locator("#stats")).to_contain_text(f"{MAX_NEW} tokens", timeout=60_000)
        tokens = page.locator("#thinking .token")
        expect(tokens).to_have_count(MAX_NEW, timeout=30_000)
        before, first_story = tokens.all_inner_texts(), page.locator("#story textarea").input_value()
        p = 4
        tokens.nth(p).click()
        options = page.locator("#branch-choice label")
        expect(options.first).to_be_visible(timeout=15_000)
        chosen = options.first.inner_text().rsplit(" ", 1)[0].strip("'\"")  # "' cat' 22%" -> " cat"
        options.first.click()
        page.locator("#branch").click()
        expect(page.locator("#branches")).to_be_visible(timeout=60_000)
        expect(tokens).to_have_count(MAX_NEW, timeout=30_000)
        after = tokens.all_inner_texts()
        assert after[:p] == before[:p] and after[p].strip() == chosen.strip() and after != before
        assert page.locator("#story textarea").input_value().startswith("Once upon a time" + "".join(before[:p]))
        expect(page.locator("#branches label")).to_have_count(2)
        branched = page.locator("#story textarea").input_value()
        page.locator("#share").click()  # a link to the branch: a fresh page writes the very same story
        url = page.locator("#share-url textarea")
        expect(url).to_have_value(re.compile(r"^http://127\.0\.0\.1:\d+/\?prompt=Once.*&seed=11.*&given="),
                                  timeout=15_000)
        other = page.context.browser.new_page(viewport={"width": 1280, "height": 1100})
        other.goto(url.input_value())
        expect(other.locator("#story textarea")).to_have_value(branched, timeout=60_000)
        expect(other.locator("#thinking .token")).to_have_count(MAX_NEW, timeout=30_000)
        other.close()
        page.locator("#branches label").first.click()  # back to the first story
        expect(page.locator("#story textarea")).to_have_value(first_story, timeout=15_000)


def test_the_copies_api_marks_training_text_and_says_when_the_model_has_no_index(client, checkpoint, token_data):
    """Catches copied spans that are not found (or found in novel text), and a traceback instead of a plain
    message when the model's folder carries no index."""
    from tests.conftest import simple_stories
    from tests.test_copy_index import NOVEL
    from tinygpt.data.copy_index import FILES

    with pytest.raises(Exception, match="carries no copy index of its training text"):
        client.predict("Once upon a time", 0, api_name="/copies")
    for name in FILES:  # the run folder (the checkpoint's parent) carries its data's index, as train.py leaves it
        shutil.copyfile(token_data / name, checkpoint.parent / name)
    story = simple_stories(400, 0)[3]
    copied = client.predict(NOVEL + " " + story, 0, api_name="/copies")
    # all of it but its first word (' Once' here, 'Once' at a story's start in the training text)
    assert len(copied["spans"]) == 1 and copied["texts"][0] == story.removeprefix("Once")
    assert 0.4 < copied["copied_share"] < 0.8 and copied["min_tokens"] == 24
    assert client.predict(NOVEL, 0, api_name="/copies")["spans"] == []
    with pytest.raises(Exception, match="story must be text or a list of GPT-2 token ids"):
        client.predict([1, -5], 0, api_name="/copies")
