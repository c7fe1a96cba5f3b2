"""Caption metrics from the field's reference implementations, plus "specificity". Every
caption is normalised the same way first (:func:`caption_tokens`), so case, punctuation or a
trailing ``<end>`` never changes a score.

=============  ==============================================================================
bleu1..bleu4   corpus BLEU from pycocoevalcap ``Bleu(4)`` (the official coco-caption numbers)
meteor         coco-caption METEOR 1.5 (Java) or NLTK's ``meteor_score``; see ``meteor=``
rouge1/2/L     ``rouge_score`` F-measure, best reference per image, averaged over images
cider          CIDEr-D from pycocoevalcap ``Cider`` (x10 as in coco-caption; its IDF comes
               from the evaluated references, so with a single image it is always 0)
precision,     bag-of-words match against *all* references of an image at once
recall, f1     (:func:`bag_prf`), averaged over images
=============  ==============================================================================

Token precision pools an image's references where ROUGE-1 takes the best single one;
``1 - precision`` is the share of words nobody said for the photo. :func:`specificity_metrics`
measures what BLEU rewards but should not: the same safe caption said for many images.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import suppress
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import nltk
import numpy as np
from nltk.corpus.reader.wordnet import WordNetCorpusReader
from nltk.translate.meteor_score import meteor_score as nltk_meteor_score
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as coco_meteor_module
from rouge_score import rouge_scorer
from sklearn.feature_extraction.text import TfidfVectorizer

from storyteller.data.text import END, PAD, START, tokenize
from storyteller.errors import StorytellerError

SCORE_KEYS = (
    "bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge1", "rouge2", "rougeL", "cider",
    "precision", "recall", "f1",
)  # fmt: skip
METEOR_BACKENDS = ("auto", "java", "nltk", "none")

JAVA_METEOR_BACKEND = "coco-caption METEOR 1.5 (Java)"
FIX_JAVA = "install a Java runtime, e.g. `apt-get install default-jre-headless`"
FIX_WORDNET = (
    "run `.ci/install-wordnet.sh` (offline: Debian wordnet-base + wordnet-sense-index) "
    "or, with internet access, `python -m nltk.downloader wordnet`"
)

Tokens = list[str]  # one caption, normalised (caption_tokens)
Coco = dict[int, list[str]]  # pycocoevalcap's input: {image id: [captions joined by spaces]}

# Removed before tokenising, which would turn <end> into the word "end". <unk> is kept: it
# is a real, if unknown, word of the hypothesis and should cost precision.
_SPECIAL_RE = re.compile("|".join(re.escape(token) for token in (START, END, PAD)), re.IGNORECASE)


def caption_tokens(caption: str) -> list[str]:
    """Tokens of a caption as every metric sees them: special tokens removed, then tokenised.

    >>> caption_tokens("<start> A dog, running! <end> <pad> <pad>")
    ['a', 'dog', 'running']
    """
    return tokenize(_SPECIAL_RE.sub(" ", caption))


def _check_caption(caption: object, where: str) -> str:
    if not isinstance(caption, str):
        raise StorytellerError(f"{where} must be a caption string, got {type(caption).__name__}")
    return caption


def _prepare(
    references: Sequence[Sequence[str]], hypotheses: Sequence[str]
) -> tuple[list[list[Tokens]], list[Tokens]]:
    """Checked inputs as tokens: ``refs[i]``, the non-empty references of image ``i``;
    ``hyps[i]``, its hypothesis (an empty one scores 0)."""
    if isinstance(hypotheses, str):
        raise StorytellerError("hypotheses must be a sequence of caption strings, not one string")
    if isinstance(references, str):
        raise StorytellerError("references must be a sequence (one entry per image) of lists")
    if len(references) != len(hypotheses):
        raise StorytellerError(
            f"got {len(references)} reference sets but {len(hypotheses)} hypotheses; "
            "there must be exactly one hypothesis per image"
        )
    if len(hypotheses) == 0:
        raise StorytellerError("nothing to evaluate: references and hypotheses are empty")

    refs: list[list[Tokens]] = []
    for i, image_refs in enumerate(references):
        if isinstance(image_refs, str):
            raise StorytellerError(
                f"references[{i}] is a single string; it must be the list of reference "
                f"captions of image {i} (wrap it in a list if there is only one)"
            )
        tokenised = [
            caption_tokens(_check_caption(r, f"references[{i}][{j}]"))
            for j, r in enumerate(image_refs)
        ]
        tokenised = [tokens for tokens in tokenised if tokens]
        if not tokenised:
            raise StorytellerError(
                f"image {i} has no non-empty reference caption (after removing punctuation "
                "and special tokens); every image needs at least one"
            )
        refs.append(tokenised)
    hyps = [caption_tokens(_check_caption(h, f"hypotheses[{i}]")) for i, h in enumerate(hypotheses)]
    return refs, hyps


def bag_prf(
    references: Sequence[Sequence[str]], hypothesis: Sequence[str]
) -> tuple[float, float, float]:
    """Clipped unigram precision, recall and F1 of one hypothesis against its references
    pooled into one bag: ``bag(w)`` is the most times any one reference says ``w`` (BLEU's
    clipping), ``overlap = sum_w min(count_hyp(w), bag(w))``; no overlap gives 0.

    >>> refs = [["a", "dog", "runs"], ["a", "brown", "dog", "jumps"]]  # bag of 5 words
    >>> [round(score, 3) for score in bag_prf(refs, ["a", "brown", "dog", "dog"])]
    [0.75, 0.6, 0.667]
    """
    bag: Counter[str] = Counter()
    for reference in references:
        bag |= Counter(reference)  # union of multisets: the max count of each word
    overlap = sum((Counter(hypothesis) & bag).values())
    if overlap == 0:
        return 0.0, 0.0, 0.0
    precision = overlap / len(hypothesis)
    recall = overlap / sum(bag.values())
    return precision, recall, 2 * precision * recall / (precision + recall)


def _corpus_prf(refs: list[list[Tokens]], hyps: list[Tokens]) -> tuple[float, float, float]:
    """The mean over images of each of :func:`bag_prf`'s scores (so F1 is not the harmonic
    mean of the mean precision and recall)."""
    per_image = [bag_prf(image_refs, hyp) for image_refs, hyp in zip(refs, hyps, strict=True)]
    precision, recall, f1 = np.mean(np.array(per_image), axis=0)
    return float(precision), float(recall), float(f1)


def _java_meteor_problem() -> str | None:
    """Why the Java METEOR cannot be started here, or None if it can (cheap: no JVM started)."""
    if shutil.which("java") is None:
        return f"Java METEOR needs a `java` executable on PATH and none was found; {FIX_JAVA}"
    jar = Path(coco_meteor_module.__file__).with_name(coco_meteor_module.METEOR_JAR)
    paraphrases = jar.parent / "data" / "paraphrase-en.gz"
    for needed in (jar, paraphrases):
        if not needed.is_file():
            return (
                f"pycocoevalcap's METEOR file {needed} is missing; reinstall it with "
                "`pip install --force-reinstall pycocoevalcap`"
            )
    return None


def java_meteor_available() -> bool:
    """True when ``java`` is on PATH and pycocoevalcap's METEOR files are installed (no JVM
    is started: a broken one is found when METEOR runs)."""
    return _java_meteor_problem() is None


class _CocoMeteor(coco_meteor_module.Meteor):
    """pycocoevalcap's METEOR with a :meth:`close` that needs no lock: the original stops
    the JVM only in ``__del__``, under a lock that ``compute_score`` leaves held when the JVM
    dies mid-way, so garbage collection could hang."""

    def close(self) -> str:
        """Stop the JVM (if still running) and return what it wrote to stderr."""
        process: subprocess.Popen[bytes] | None = getattr(self, "meteor_p", None)
        if process is None:
            return ""
        self.meteor_p = None
        with suppress(OSError):  # the pipe may already be broken
            process.stdin.close()
        process.kill()
        process.wait()
        stderr = process.stderr.read().decode("utf-8", errors="replace")
        process.stdout.close()
        process.stderr.close()
        return stderr

    def __del__(self) -> None:
        self.close()


def _java_meteor(gts: Coco, res: Coco) -> float:
    """Corpus METEOR 1.5 from coco-caption's Java scorer (its aggregate, as coco reports)."""
    problem = _java_meteor_problem()
    if problem is not None:
        raise StorytellerError(problem)
    scorer: _CocoMeteor | None = None
    try:
        scorer = _CocoMeteor()
        score, _per_image = scorer.compute_score(gts, res)
    except (OSError, ValueError) as exc:  # JVM did not start, died, or answered garbage
        stderr = scorer.close() if scorer is not None else ""
        detail = " | ".join(stderr.strip().splitlines()[-3:]) or repr(exc)
        raise StorytellerError(
            f"the Java METEOR scorer failed ({detail}); check that `java -version` works and "
            f"that 2 GB of memory are free for the JVM, or {FIX_JAVA}"
        ) from exc
    finally:
        if scorer is not None:
            scorer.close()
    return float(score)


@lru_cache(maxsize=4)
def _load_wordnet(root: str) -> WordNetCorpusReader:
    """NLTK's WordNet reader, loaded once per folder (a few seconds)."""
    with warnings.catch_warnings():
        # "The multilingual functions are not available": we only need English WordNet.
        warnings.simplefilter("ignore")
        return WordNetCorpusReader(root, None)


def _wordnet() -> WordNetCorpusReader:
    """The WordNet corpus found on ``nltk.data.path``, or a StorytellerError saying how to fix."""
    root = None
    for resource in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):
        with suppress(LookupError):
            root = nltk.data.find(resource)
            break
    if root is None:
        searched = ", ".join(str(p) for p in nltk.data.path)
        raise StorytellerError(
            f"NLTK METEOR needs the WordNet corpus, which is not in nltk.data.path "
            f"({searched}); {FIX_WORDNET}"
        )
    try:
        return _load_wordnet(str(root))
    except Exception as exc:  # a half-installed corpus fails in many ways (OSError, ...)
        raise StorytellerError(
            f"NLTK could not load WordNet from {root} ({type(exc).__name__}: {exc}); {FIX_WORDNET}"
        ) from exc


def wordnet_available() -> bool:
    """True when NLTK can load WordNet (needed by the ``"nltk"`` METEOR); never raises."""
    try:
        _wordnet()
    except StorytellerError:
        return False
    return True


def _nltk_meteor(refs: list[list[Tokens]], hyps: list[Tokens]) -> tuple[float, str]:
    """Mean over images of NLTK's METEOR (best reference per image), and the backend name."""
    wordnet = _wordnet()
    scores = [
        nltk_meteor_score(image_refs, hyp, wordnet=wordnet)
        for image_refs, hyp in zip(refs, hyps, strict=True)
    ]
    return float(np.mean(scores)), f"nltk meteor_score (WordNet {wordnet.get_version()})"


def _meteor(
    meteor: str, refs: list[list[Tokens]], hyps: list[Tokens], gts: Coco, res: Coco
) -> tuple[float | None, str]:
    """``(score or None, backend description)`` of the ``meteor`` backend asked for; "auto":
    the official Java scorer, else NLTK, else no METEOR, with a warning."""
    if meteor == "none":
        return None, "disabled (meteor='none')"
    if meteor == "java":
        return _java_meteor(gts, res), JAVA_METEOR_BACKEND
    if meteor == "nltk":
        return _nltk_meteor(refs, hyps)
    problems = []
    java_present = java_meteor_available()
    try:
        return _java_meteor(gts, res), JAVA_METEOR_BACKEND
    except StorytellerError as exc:
        problems.append(str(exc))
    try:
        score, backend = _nltk_meteor(refs, hyps)
    except StorytellerError as exc:
        problems.append(str(exc))
        reason = "; ".join(problems)
        warnings.warn(f"METEOR not computed: {reason}", RuntimeWarning, stacklevel=3)
        return None, f"unavailable: {reason}"
    if java_present:  # Java was there but broke: say so, the numbers differ between backends
        warnings.warn(f"{problems[0]}; used {backend} instead", RuntimeWarning, stacklevel=3)
    return score, backend


def _coco_inputs(refs: list[list[Tokens]], hyps: list[Tokens]) -> tuple[Coco, Coco]:
    """pycocoevalcap's input for the references and for the hypotheses."""
    gts = {i: [" ".join(r) for r in image_refs] for i, image_refs in enumerate(refs)}
    res = {i: [" ".join(hyp)] for i, hyp in enumerate(hyps)}
    return gts, res


def per_image_cider(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> list[float]:
    """CIDEr-D of each caption against its own references, IDF from these references; their
    mean is :func:`caption_metrics`'s CIDEr-D."""
    gts, res = _coco_inputs(
        [[caption_tokens(r) for r in refs] for refs in references],
        [caption_tokens(h) for h in hypotheses],
    )
    _, scores = Cider().compute_score(gts, res)
    return [float(s) for s in scores]


def caption_metrics(
    references: Sequence[Sequence[str]], hypotheses: Sequence[str], meteor: str = "auto"
) -> dict[str, float | int | str | None]:
    """Score generated captions (``hypotheses[i]``) against the raw reference captions of
    each image (``references[i]``): the :data:`SCORE_KEYS`, ``meteor_backend`` and
    ``num_images``.

    ``meteor``: ``"auto"`` uses Java METEOR 1.5 when it runs, else NLTK's when WordNet is
    installed, else gives None with a ``RuntimeWarning`` (never raises for METEOR);
    ``"java"`` or ``"nltk"`` that backend or a :class:`StorytellerError` saying how to install
    it; ``"none"`` skips it. The two backends give different numbers (Java also matches
    paraphrases): compare scores of the same backend only."""
    if meteor not in METEOR_BACKENDS:
        raise StorytellerError(f"meteor must be one of {METEOR_BACKENDS}, got {meteor!r}")
    refs, hyps = _prepare(references, hypotheses)
    gts, res = _coco_inputs(refs, hyps)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)  # verbose=0: no prints
    cider, _ = Cider().compute_score(gts, res)
    precision, recall, f1 = _corpus_prf(refs, hyps)
    meteor_score, meteor_backend = _meteor(meteor, refs, hyps, gts, res)
    return {
        **{f"bleu{n}": float(bleu[n - 1]) for n in range(1, 5)},
        "meteor": meteor_score,
        **_rouge(gts, res),
        "cider": float(cider),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "meteor_backend": meteor_backend,
        "num_images": len(hyps),
    }


def _rouge(gts: Coco, res: Coco) -> dict[str, float]:
    """ROUGE-1, -2 and -L F-measures against each image's best reference, averaged over
    images. rouge_score re-tokenises (lower case, alphanumeric runs): our tokens pass as is."""
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=False)
    best = [scorer.score_multi(gts[i], res[i][0]) for i in range(len(res))]
    return {key: float(np.mean([scores[key].fmeasure for scores in best])) for key in keys}


def _ngram_features(sentences: Iterable[list[str]]) -> list[str]:
    """Word 1- and 2-grams of each sentence (bigrams never span two sentences)."""
    features: list[str] = []
    for tokens in sentences:
        features.extend(tokens)
        features.extend(f"{a} {b}" for a, b in pairwise(tokens))
    return features


def _retrieval_ranks(refs: list[list[Tokens]], hyps: list[Tokens]) -> np.ndarray:
    """Rank (1 = best) of each hypothesis's own image among all images, each image being its
    references together, by TF-IDF cosine similarity of word 1-2-grams.

    Ties count against the true image (rank = images scoring at least as high), so one
    generic caption said for every image puts at most ``k`` images in the top ``k``."""
    vectorizer = TfidfVectorizer(analyzer=lambda features: features)  # features precomputed
    documents = vectorizer.fit_transform([_ngram_features(image_refs) for image_refs in refs])
    queries = vectorizer.transform([_ngram_features([hyp]) for hyp in hyps])  # L2-normalised

    ranks = np.empty(len(hyps), dtype=np.int64)
    chunk = 1024  # rows of the n x n similarity matrix held in memory at once
    for start in range(0, len(hyps), chunk):
        similarity = (queries[start : start + chunk] @ documents.T).toarray()
        rows = np.arange(similarity.shape[0])
        own = similarity[rows, start + rows]
        # A small tolerance so that float noise never breaks a tie in the true image's favour.
        ranks[start : start + len(rows)] = (similarity >= own[:, None] - 1e-9).sum(axis=1)
    return ranks


def specificity_metrics(
    references: Sequence[Sequence[str]], hypotheses: Sequence[str], k: int = 5
) -> dict[str, float | int]:
    """How specific the captions are: ``distinct_captions`` (share of distinct ones),
    ``vocab_used`` (distinct words), ``recall_at_{k}`` (share whose own image is among the
    ``k`` best by :func:`_retrieval_ranks`; chance is ``k / n``) and ``num_images``."""
    if not isinstance(k, int) or k < 1:
        raise StorytellerError(f"k must be a positive integer, got {k!r}")
    refs, hyps = _prepare(references, hypotheses)
    n = len(hyps)
    ranks = _retrieval_ranks(refs, hyps)
    return {
        "distinct_captions": len({" ".join(hyp) for hyp in hyps}) / n,
        "vocab_used": len({token for hyp in hyps for token in hyp}),
        f"recall_at_{k}": float(np.mean(ranks <= k)),
        "num_images": n,
    }


def most_frequent_caption(captions: Iterable[str]) -> str:
    """The most frequent non-empty normalised caption (the "always say this" baseline);
    ties go to the alphabetically first.

    >>> most_frequent_caption(["A dog runs.", "a cat", "a DOG runs <end>", "a cat"])
    'a cat'
    """
    counts = Counter()
    for i, caption in enumerate(captions):
        normalised = " ".join(caption_tokens(_check_caption(caption, f"captions[{i}]")))
        if normalised:
            counts[normalised] += 1
    if not counts:
        raise StorytellerError("most_frequent_caption needs at least one non-empty caption")
    return min(counts.items(), key=lambda item: (-item[1], item[0]))[0]
