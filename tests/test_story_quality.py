"""bench/story_quality.py's figures on stories written by hand, where the right answers are known."""
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("story_quality", Path(__file__).resolve().parents[1] / "bench" / "story_quality.py")
sq = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sq)


def test_a_looping_story_scores_its_repeats_and_a_lost_name():
    """Catches n-gram repeats counted across stories (or not at all) and the name check reading the wrong part."""
    loop = ("", " the dog ran to the park and the dog ran to the park and the dog ran to the park", False)
    fresh = ("Once upon a time, there was a girl named Mia.", " Mia found a key. She opened a box. Inside was a cake "
             "for her mom, and Mia smiled", True)
    lost = ("Ben had a red ball. He", " threw it far. A bird took it away. The bird flew over the hill and sang", True)
    one = sq.report([loop], None)
    # 20 words, a 7-word loop: every n-gram from word 8 on has been seen
    assert one["repeated 4-grams"] == 10 / 17 and one["repeated 3-grams"] == 11 / 18
    both = sq.report([fresh, lost], {"mia"} | set(sq.words(fresh[1] + lost[1])) - {"cake"})
    assert both["repeated 3-grams"] == 0 and both["ended"] == 1.0
    assert both["name kept"] == 0.5  # Mia is named at the end, Ben is not
    assert both["unknown words per 100"] == 100 / len(sq.words(fresh[1] + lost[1]))


def test_the_first_named_character_is_found_in_the_playgrounds_beginnings():
    assert [sq.first_name(p) for p in sq.PROMPTS] == ["Lily", "Tom", None, "Mia", "Ben"]
