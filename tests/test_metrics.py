"""Tests for storyteller.evaluation.metrics: caption scores, METEOR backends and specificity measures."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nltk
import pytest

from storyteller.errors import StorytellerError
from storyteller.evaluation import metrics
from storyteller.evaluation.metrics import (
    JAVA_METEOR_BACKEND,
    SCORE_KEYS,
    bag_prf,
    caption_metrics,
    caption_tokens,
    java_meteor_available,
    most_frequent_caption,
    per_image_cider,
    specificity_metrics,
    wordnet_available,
)

# Six images with distinct content, several references each (metric libraries such as CIDEr
# need more than one image to have meaningful document frequencies).
REFERENCES = [
    ["A black dog runs across the green grass.", "A dog is running on the lawn.",
     "The black dog plays outside."],
    ["Two children build a sandcastle on the beach.", "Kids play in the sand by the sea.",
     "Two young kids are digging in the sand."],
    ["A man rides a red bicycle down the street.", "A cyclist on a city road.",
     "A person riding a bike in traffic."],
    ["A woman in a blue coat walks through the snow.", "A lady walking in a snowy field.",
     "Someone in a coat trudges through deep snow."],
    ["A brown horse grazes in a field of flowers.", "A horse eating grass in a meadow.",
     "The horse stands among yellow flowers."],
    ["A group of people sit around a campfire at night.", "Friends gather by a fire.",
     "People sitting near a bonfire in the dark."],
]  # fmt: skip
PERFECT = [refs[0] for refs in REFERENCES]
BETTER = [
    "A black dog runs across the grass.",
    "Two children build a sandcastle on the sand.",
    "A man rides a bicycle down the road.",
    "A woman in a coat walks through the snow.",
    "A brown horse grazes in a field.",
    "A group of people sit around a fire.",
]
WORSE = [
    "A dog sits.",
    "Children on a boat.",
    "A man stands.",
    "A woman inside.",
    "A horse.",
    "People in a room.",
]
UNRELATED = ["quantum xylophone zebra"] * len(REFERENCES)

SPEC_SUBJECTS = ["dog", "cat", "man", "woman", "boy", "girl"]
SPEC_PLACES = ["beach", "park", "street", "snow"]
# 24 images: "a <subject> ... <place>" in three phrasings each.
SPEC_REFERENCES = [
    [f"A {s} is on the {p}.", f"The {s} stands in the {p}.", f"{s.title()} at the {p}"]
    for s in SPEC_SUBJECTS
    for p in SPEC_PLACES
]

needs_wordnet = pytest.mark.skipif(
    not wordnet_available(),
    reason="NLTK cannot load WordNet here; run .ci/install-wordnet.sh to enable NLTK METEOR",
)
needs_java = pytest.mark.skipif(
    not java_meteor_available(),
    reason="no `java` on PATH (apt-get install default-jre-headless) for coco-caption METEOR",
)


def scores(references: list[list[str]], hypotheses: list[str], meteor: str = "none") -> dict:
    """caption_metrics, by default without the slow METEOR."""
    return caption_metrics(references, hypotheses, meteor=meteor)


# --------------------------------------------------------------------------------------------
# Normalisation helpers
# --------------------------------------------------------------------------------------------


def test_caption_tokens_removes_special_tokens_before_tokenising():
    assert caption_tokens("<start> A dog, RUNNING! <end> <pad> <pad>") == ["a", "dog", "running"]
    assert caption_tokens("the end <END>") == ["the", "end"]  # a real "end" survives
    assert caption_tokens("<unk> dog") == ["unk", "dog"]  # unknown words still cost precision


def test_bag_prf_clips_each_word_to_the_most_any_one_reference_used_it():
    assert bag_prf([["a", "dog", "runs"]], ["a", "dog", "runs"]) == (1.0, 1.0, 1.0)
    precision, recall, f1 = bag_prf([["a", "dog"]], ["dog", "dog", "dog", "dog"])
    assert (precision, recall) == (0.25, 0.5)  # "dog" counts once: the reference has it once
    assert f1 == pytest.approx(1 / 3)
    # Bag: "a" twice (the first reference says it twice), "dog" once, "cat" once: 4 words.
    # The hypothesis's three "a" count twice, its "dog" once: 3 of 4 words, 3 of the bag's 4.
    assert bag_prf([["a", "dog", "a"], ["a", "cat"]], ["a", "a", "a", "dog"]) == (0.75, 0.75, 0.75)
    assert bag_prf([["a", "dog"]], []) == (0.0, 0.0, 0.0)


def test_token_f1_pools_the_references_where_rouge1_takes_the_best_one():
    """Worked by hand. Image 1: references "a dog runs" and "a brown dog jumps", caption "a
    brown dog runs". ROUGE-1 against each reference alone: 3 of 4 words match the first (P
    3/4, R 3/3, F 6/7) and the second (P 3/4, R 3/4, F 3/4), so 6/7. Pooled, the bag is {a,
    dog, runs, brown, jumps}: all 4 caption words match (P 1), 4 of the bag's 5 (R 4/5), F
    8/9. Image 2: "a cat" against "a dog": P = R = F = 1/2 both ways. Means over the images:
    ROUGE-1 (6/7 + 1/2) / 2 = 19/28, F1 (8/9 + 1/2) / 2 = 25/36."""
    references = [["A dog runs.", "A brown dog jumps."], ["A dog."]]
    result = scores(references, ["A brown dog runs.", "A cat."])
    assert result["rouge1"] == pytest.approx(19 / 28)
    assert result["precision"] == pytest.approx((1 + 1 / 2) / 2)
    assert result["recall"] == pytest.approx((4 / 5 + 1 / 2) / 2)
    assert result["f1"] == pytest.approx(25 / 36)
    assert result["f1"] != pytest.approx(result["rouge1"])


# --------------------------------------------------------------------------------------------
# caption_metrics
# --------------------------------------------------------------------------------------------


def test_returns_exactly_the_documented_keys(capsys):
    result = scores(REFERENCES, BETTER)
    assert set(result) == {*SCORE_KEYS, "meteor_backend", "num_images"}
    assert result["num_images"] == len(REFERENCES)
    assert result["meteor"] is None and result["meteor_backend"].startswith("disabled")
    for key in SCORE_KEYS:
        if key != "meteor":
            assert isinstance(result[key], float), key
            assert 0.0 <= result[key] <= (10.0 if key == "cider" else 1.0), key
    assert capsys.readouterr().out == ""  # pycocoevalcap's BLEU prints are suppressed


def test_per_image_cider_averages_to_the_corpus_score_and_ranks_the_better_caption_first():
    """Per-image CIDEr-D (what the notebooks' best and worst examples rank by) lives with the
    other metrics: its mean is the corpus score, and an image whose
    caption is one of its references outscores the same image with an off-topic one."""
    per_image = per_image_cider(REFERENCES, BETTER)
    assert len(per_image) == len(REFERENCES)
    assert sum(per_image) / len(per_image) == pytest.approx(scores(REFERENCES, BETTER)["cider"])
    mixed = [PERFECT[0], *BETTER[1:]]
    off_topic = [BETTER[1], *BETTER[1:]]  # image 0 gets image 1's caption
    assert per_image_cider(REFERENCES, mixed)[0] > per_image_cider(REFERENCES, off_topic)[0]


def test_perfect_hypotheses_score_one():
    result = scores(REFERENCES, PERFECT)
    for key in ("bleu1", "bleu2", "bleu3", "bleu4"):
        assert result[key] == pytest.approx(1.0, abs=1e-6), key
    for key in ("rouge1", "rouge2", "rougeL", "precision"):
        assert result[key] == pytest.approx(1.0), key
    # One person's caption covers only part of what the three people said together.
    assert 0.3 < result["recall"] < 1.0 and 0.5 < result["f1"] < 1.0
    assert result["cider"] > 2.0


def test_unrelated_hypotheses_score_near_zero():
    result = scores(REFERENCES, UNRELATED)
    for key in SCORE_KEYS:
        if key != "meteor":
            assert result[key] == pytest.approx(0.0, abs=1e-6), key


def test_empty_hypothesis_scores_zero_without_crashing():
    result = scores(REFERENCES, ["<end>"] + PERFECT[1:])
    assert 0.0 < result["f1"] < 1.0 and result["rouge1"] == pytest.approx(5 / 6)


def test_better_hypotheses_beat_worse_ones_on_every_metric():
    meteor = "nltk" if wordnet_available() else "none"
    better, worse = scores(REFERENCES, BETTER, meteor), scores(REFERENCES, WORSE, meteor)
    for key in SCORE_KEYS:
        if better[key] is None:  # no WordNet: METEOR is tested elsewhere
            continue
        assert better[key] > worse[key], key


def test_case_punctuation_and_special_tokens_do_not_change_scores():
    plain = scores(REFERENCES, [" ".join(caption_tokens(h)) for h in BETTER])
    shouting = scores(REFERENCES, [h.upper() + " !!" for h in BETTER])
    decorated = scores(REFERENCES, [f"<start> {h} <end> <pad> <pad>" for h in BETTER])
    messy_refs = [[f"{r.upper()} <end>" for r in refs] for refs in REFERENCES]
    assert plain == shouting == decorated == scores(messy_refs, BETTER)


@pytest.mark.parametrize(
    ("references", "hypotheses", "message"),
    [
        (REFERENCES, BETTER[:-1], "one hypothesis per image"),
        ([], [], "nothing to evaluate"),
        ([r[0] for r in REFERENCES], BETTER, "single string"),
        (REFERENCES, "a dog", "not one string"),
        (REFERENCES, [*BETTER[:-1], None], "must be a caption string"),
        ([*REFERENCES[:-1], ["<end>", "!!"]], BETTER, "no non-empty reference"),
    ],
)
def test_bad_inputs_raise_storyteller_error(references, hypotheses, message):
    with pytest.raises(StorytellerError, match=message):
        caption_metrics(references, hypotheses, meteor="none")
    with pytest.raises(StorytellerError, match=message):
        specificity_metrics(references, hypotheses)


def test_unknown_meteor_backend_is_rejected():
    with pytest.raises(StorytellerError, match="meteor must be one of"):
        caption_metrics(REFERENCES, BETTER, meteor="bleurt")


# --------------------------------------------------------------------------------------------
# METEOR backends
# --------------------------------------------------------------------------------------------


def _child_pids() -> set[int]:
    """Ids of this process's live child processes (Linux /proc)."""
    children = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            children.add(int(stat_file.parent.name))
    return children


@needs_java
def test_java_meteor_is_used_and_sensible_and_the_jvm_is_closed():
    before = _child_pids()
    result = scores(REFERENCES, PERFECT[:3] + UNRELATED[3:], meteor="java")
    assert result["meteor_backend"] == JAVA_METEOR_BACKEND
    assert 0.3 < result["meteor"] < 0.7  # half perfect, half unrelated
    if Path("/proc/self/stat").exists():
        assert _child_pids() <= before  # no JVM left running


def test_auto_prefers_java(monkeypatch):
    monkeypatch.setattr(metrics, "_java_meteor", lambda gts, res: 0.25)  # no JVM start
    result = scores(REFERENCES, BETTER, meteor="auto")
    assert (result["meteor"], result["meteor_backend"]) == (0.25, JAVA_METEOR_BACKEND)


@needs_wordnet
def test_nltk_meteor_when_wordnet_is_installed():
    perfect = scores(REFERENCES, PERFECT, meteor="nltk")
    assert perfect["meteor_backend"].startswith("nltk meteor_score (WordNet")
    assert perfect["meteor"] > 0.95
    assert scores(REFERENCES, UNRELATED, meteor="nltk")["meteor"] == pytest.approx(0.0)


@pytest.fixture
def no_java_no_wordnet(monkeypatch, tmp_path):
    """PATH without java and an NLTK data path without WordNet."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(nltk.data, "path", [str(empty)])


def test_auto_without_any_backend_warns_and_returns_none(no_java_no_wordnet):
    assert not wordnet_available() and not java_meteor_available()
    with pytest.warns(RuntimeWarning, match="METEOR not computed"):
        result = scores(REFERENCES, BETTER, meteor="auto")
    assert result["meteor"] is None
    backend = result["meteor_backend"]
    assert backend.startswith("unavailable: ")
    assert "default-jre-headless" in backend and "install-wordnet.sh" in backend
    assert result["bleu4"] == scores(REFERENCES, BETTER)["bleu4"]  # the rest is unaffected


def test_explicit_unavailable_backends_raise(no_java_no_wordnet):
    with pytest.raises(StorytellerError, match="default-jre-headless"):
        scores(REFERENCES, BETTER, meteor="java")
    with pytest.raises(StorytellerError, match="install-wordnet.sh"):
        scores(REFERENCES, BETTER, meteor="nltk")


@pytest.fixture
def broken_java(monkeypatch, tmp_path):
    """A `java` on PATH that fails at once, like a JVM that cannot start."""
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Error: could not create the Java VM (fake)' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")


def test_failing_jvm_gives_a_clear_error(broken_java):
    with pytest.raises(StorytellerError, match=r"Java METEOR scorer failed.*\(fake\)"):
        scores(REFERENCES, BETTER, meteor="java")


def test_auto_falls_back_when_the_jvm_fails(broken_java, monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [])  # no WordNet either: METEOR is skipped
    with pytest.warns(RuntimeWarning, match="Java METEOR scorer failed"):
        result = scores(REFERENCES, BETTER, meteor="auto")
    assert result["meteor"] is None and "(fake)" in result["meteor_backend"]


@needs_wordnet
def test_auto_falls_back_to_nltk_when_the_jvm_fails(broken_java):
    with pytest.warns(RuntimeWarning, match="used nltk meteor_score"):
        result = scores(REFERENCES, BETTER, meteor="auto")
    assert result["meteor_backend"].startswith("nltk meteor_score")
    assert 0.0 < result["meteor"] < 1.0


# --------------------------------------------------------------------------------------------
# Specificity
# --------------------------------------------------------------------------------------------


def test_one_generic_caption_for_every_image_is_not_specific():
    n = len(SPEC_REFERENCES)
    result = specificity_metrics(SPEC_REFERENCES, ["A dog is on the beach."] * n)
    assert result["distinct_captions"] == pytest.approx(1 / n)
    assert result["vocab_used"] == 6
    assert result["recall_at_5"] <= 5 / n
    assert result["num_images"] == n


def test_ties_do_not_favour_the_true_image():
    # Sharing nothing with any reference, every image scores 0: all tied, so all ranked last.
    result = specificity_metrics(SPEC_REFERENCES, ["quantum xylophone"] * len(SPEC_REFERENCES))
    assert result["recall_at_5"] == 0.0


def test_own_reference_captions_retrieve_their_image():
    own = [refs[0] for refs in SPEC_REFERENCES]
    assert specificity_metrics(SPEC_REFERENCES, own)["recall_at_5"] == 1.0
    result = specificity_metrics(SPEC_REFERENCES, own, k=1)
    assert result["recall_at_1"] == 1.0 and result["distinct_captions"] == 1.0


def test_specificity_rejects_bad_k():
    with pytest.raises(StorytellerError, match="positive integer"):
        specificity_metrics(SPEC_REFERENCES, [r[0] for r in SPEC_REFERENCES], k=0)


# --------------------------------------------------------------------------------------------
# most_frequent_caption
# --------------------------------------------------------------------------------------------


def test_most_frequent_caption_counts_normalised_captions():
    captions = ["A dog runs.", "a cat sits", "a DOG runs <end>", "A cat sits!", "a dog runs"]
    assert most_frequent_caption(captions) == "a dog runs"


def test_most_frequent_caption_breaks_ties_lexicographically():
    assert most_frequent_caption(iter(["b c", "a b", "B C.", "a b", "<end>", "<end>"])) == "a b"


def test_most_frequent_caption_needs_a_caption():
    with pytest.raises(StorytellerError, match="at least one non-empty caption"):
        most_frequent_caption(["<end>", "!!"])
    with pytest.raises(StorytellerError):
        most_frequent_caption([])


def test_notebook_best_and_worst_rank_by_per_image_cider(tmp_path: Path):
    """The notebooks' report ranks a run's test captions with the metrics' per-image CIDEr-D."""
    import json

    from storyteller.notebook.report import best_and_worst

    captions = [PERFECT[0], *BETTER[1:5], WORSE[5]]
    items = [
        {"image": f"{i}.jpg", "references": refs, "greedy": caption}
        for i, (refs, caption) in enumerate(zip(REFERENCES, captions, strict=True))
    ]
    (tmp_path / "test_captions.json").write_text(json.dumps(items))
    ranked = best_and_worst(tmp_path, k=1)
    expected = per_image_cider(REFERENCES, captions)
    best, worst = max(range(6), key=expected.__getitem__), min(range(6), key=expected.__getitem__)
    assert ranked["best"][0]["image"] == f"{best}.jpg" and ranked["best"][0]["decoding"] == "greedy"
    assert ranked["worst"][0]["image"] == f"{worst}.jpg"
    assert ranked["best"][0]["score"] == pytest.approx(expected[best])
