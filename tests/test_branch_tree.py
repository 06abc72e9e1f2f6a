"""The page's tree of branches (tinygpt.playground.branches): who is whose parent, and what the list says."""
from tinygpt.inference.story import StorySnapshot
from tinygpt.playground.branches import grown, node_label


def test_branches_find_their_parent_and_a_new_story_starts_a_new_tree():
    """Catches a branch hung on the wrong parent (labels would say 'from 1' for a branch of branch 2) and a new
    story's branches added to the last story's tree."""
    story, a, b, c = (StorySnapshot(text=t) for t in "story a b c".split())
    tree = grown(None, story, 4, " cat", a)  # the first branch roots the tree at its story
    tree = grown(tree, a, 9, " ran", b)  # a branch of the branch
    tree = grown(tree, story, 2, " big", c)  # another branch of the story
    assert [(n.parent, n.at) for n in tree] == [(-1, -1), (0, 4), (1, 9), (0, 2)]
    assert [node_label(tree, i) for i in range(4)] == [
        "1 · the story", "2 · from 1 at token 5: ' cat'", "3 · from 2 at token 10: ' ran'",
        "4 · from 1 at token 3: ' big'"]
    new, d = StorySnapshot(text="new"), StorySnapshot(text="d")
    assert [n.snap for n in grown(tree, new, 1, " x", d)] == [new, d]
