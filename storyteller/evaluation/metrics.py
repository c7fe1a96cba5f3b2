"""Caption evaluation: the standard captioning metrics plus "specificity" measures.

Every caption (reference or generated) goes through the same two steps before any scorer
sees it (see :func:`caption_tokens`):

1. literal special tokens (``<start>``, ``<end>``, ``<pad>``) are removed, *before*
   tokenising, because :func:`storyteller.data.text.tokenize` would otherwise turn ``<end>``
   into the ordinary word ``end``;
2. :func:`storyteller.data.text.tokenize` lower-cases and drops punctuation.

So case, punctuation or a trailing ``<end>`` can never change a score.

The scores come from the field's reference implementations, not hand-written scorers:

=============  ==============================================================================
bleu1..bleu4   corpus BLEU from pycocoevalcap ``Bleu(4)`` (the official coco-caption numbers)
meteor         coco-caption METEOR 1.5 (Java) or NLTK's ``meteor_score``; see ``meteor=``
rouge1/2/L     ``rouge_score`` F-measure, best reference per image, averaged over images
cider          CIDEr-D from pycocoevalcap ``Cider`` (scaled by 10 as in coco-caption, so it
               can exceed 1; its IDF comes from the evaluated references, so it needs many
               images: with a single image it is always 0)
precision,     bag-of-words match against *all* references of an image at once (small hand
recall, f1     code, no library computes it; definition in :func:`bag_prf`), averaged over
               images
=============  ==============================================================================

Token precision/recall/F1 are not ROUGE-1 again. ROUGE-1 scores a caption against its best
*single* reference. The token scores pool the references: a word counts as matched up to the
largest number of times any one reference uses it (BLEU's clipping). So ``precision`` is the
share of the caption's words that some person used for the photo (``1 - precision``: words
nobody said), and ``recall`` the share of everything people said that the caption covers,
which stays below 1 even for a caption equal to one of the references unless the references
agree. ``precision`` is also BLEU-1's clipped precision, but averaged per image (every photo
weighs the same) and without the brevity penalty.

:func:`specificity_metrics` measures what BLEU rewards but should not: beam search tends to
produce the same safe, generic caption for many images. It reports how many distinct
captions and words are used and whether a caption is specific enough to *retrieve* its own
image among all the others.
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

#: The score keys :func:`caption_metrics` returns, in order.
SCORE_KEYS = (
    "bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge1", "rouge2", "rougeL", "cider",
    "precision", "recall", "f1",
)  # fmt: skip
#: Accepted values of the ``meteor=`` argument of :func:`caption_metrics`.
METEOR_BACKENDS = ("auto", "java", "nltk", "none")

JAVA_METEOR_BACKEND = "coco-caption METEOR 1.5 (Java)"
FIX_JAVA = "install a Java runtime, e.g. `apt-get install default-jre-headless`"
FIX_WORDNET = (
    "run `.ci/install-wordnet.sh` (offline: Debian wordnet-base + wordnet-sense-index) "
    "or, with internet access, `python -m nltk.downloader wordnet`"
)

# Special tokens that may leak into generated captions; <unk> is kept (as the word "unk"):
# it is a real, if unknown, word of the hypothesis and should cost precision.
_SPECIAL_RE = re.compile("|".join(re.escape(token) for token in (START, END, PAD)), re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# Normalisation and input checks
# --------------------------------------------------------------------------------------------


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
) -> tuple[list[list[list[str]]], list[list[str]]]:
    """Validate the inputs and normalise them to token lists.

    Returns ``(refs, hyps)`` where ``refs[i]`` holds the non-empty tokenised references of
    image ``i`` and ``hyps[i]`` the tokenised hypothesis (possibly empty: it then scores 0).
    """
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

    refs: list[list[list[str]]] = []
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


# --------------------------------------------------------------------------------------------
# Token precision / recall / F1
# --------------------------------------------------------------------------------------------


def bag_prf(
    references: Sequence[Sequence[str]], hypothesis: Sequence[str]
) -> tuple[float, float, float]:
    """Clipped unigram precision, recall and F1 of one hypothesis against all its references.

    The references are pooled into one bag: ``bag(w) = max over references of count_ref(w)``
    (a word two people said once each counts once; one person's "a ... a" counts twice).
    ``overlap = sum over words w of min(count_hyp(w), bag(w))``, then
    ``precision = overlap / len(hypothesis)``, ``recall = overlap / sum(bag.values())`` and
    F1 their harmonic mean. An empty hypothesis or no overlap gives 0.

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


def _corpus_prf(refs: list[list[list[str]]], hyps: list[list[str]]) -> tuple[float, float, float]:
    """:func:`bag_prf` of every image, then the mean of each over images (every photo weighs
    the same). The mean F1 is therefore not the harmonic mean of the mean precision and mean
    recall."""
    per_image = [bag_prf(image_refs, hyp) for image_refs, hyp in zip(refs, hyps, strict=True)]
    precision, recall, f1 = np.mean(np.array(per_image), axis=0)
    return float(precision), float(recall), float(f1)


# --------------------------------------------------------------------------------------------
# METEOR backends
# --------------------------------------------------------------------------------------------


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
    """True when ``java`` is on PATH and pycocoevalcap's METEOR jar and data are installed.

    It does not start a JVM; a JVM that is present but broken is detected (with a clear
    message) when METEOR actually runs.
    """
    return _java_meteor_problem() is None


class _CocoMeteor(coco_meteor_module.Meteor):
    """pycocoevalcap's METEOR wrapper with a safe, idempotent :meth:`close`.

    The original starts ``java -jar meteor-1.5.jar`` in ``__init__`` and only stops it in
    ``__del__``, which takes a lock that ``compute_score`` leaves held when the JVM dies
    mid-way, so garbage collection could hang. ``close`` needs no lock and can run any time.
    """

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


def _java_meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
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
    """Load (once per folder) NLTK's WordNet reader; takes a few seconds the first time."""
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
    """True when NLTK can load WordNet (needed by the ``"nltk"`` METEOR); never raises.

    The first successful call loads the corpus (a few seconds); the reader is then cached.
    """
    try:
        _wordnet()
    except StorytellerError:
        return False
    return True


def _nltk_meteor(refs: list[list[list[str]]], hyps: list[list[str]]) -> tuple[float, str]:
    """Mean over images of NLTK's METEOR (best reference per image), and the backend name."""
    wordnet = _wordnet()
    scores = [
        nltk_meteor_score(image_refs, hyp, wordnet=wordnet)
        for image_refs, hyp in zip(refs, hyps, strict=True)
    ]
    return float(np.mean(scores)), f"nltk meteor_score (WordNet {wordnet.get_version()})"


def _meteor(
    meteor: str,
    refs: list[list[list[str]]],
    hyps: list[list[str]],
    gts: dict[int, list[str]],
    res: dict[int, list[str]],
) -> tuple[float | None, str]:
    """Run the requested METEOR backend: ``(score or None, backend description)``."""
    if meteor == "none":
        return None, "disabled (meteor='none')"
    if meteor == "java":
        return _java_meteor(gts, res), JAVA_METEOR_BACKEND
    if meteor == "nltk":
        return _nltk_meteor(refs, hyps)

    # "auto": the official Java scorer, else NLTK, else no METEOR (with a warning).
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


# --------------------------------------------------------------------------------------------
# The main entry point
# --------------------------------------------------------------------------------------------


def _coco_inputs(
    refs: Sequence[Sequence[list[str]]], hyps: Sequence[list[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """pycocoevalcap's input: ``{image id: [space-separated, already tokenised captions]}``
    for the references and for the hypotheses."""
    gts = {i: [" ".join(r) for r in image_refs] for i, image_refs in enumerate(refs)}
    res = {i: [" ".join(hyp)] for i, hyp in enumerate(hyps)}
    return gts, res


def per_image_cider(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> list[float]:
    """CIDEr-D of each caption against its own references (consensus-weighted n-grams, the
    per-image score captioning papers use to pick examples); IDF from these references.
    Their mean is the corpus CIDEr-D of :func:`caption_metrics` on the same captions."""
    gts, res = _coco_inputs(
        [[caption_tokens(r) for r in refs] for refs in references],
        [caption_tokens(h) for h in hypotheses],
    )
    _, scores = Cider().compute_score(gts, res)
    return [float(s) for s in scores]


def caption_metrics(
    references: Sequence[Sequence[str]], hypotheses: Sequence[str], meteor: str = "auto"
) -> dict[str, float | int | str | None]:
    """Score generated captions against reference captions.

    Args:
        references: ``references[i]`` is the list of raw reference captions of image ``i``
            (typically 5). References that are empty after normalisation are ignored.
        hypotheses: ``hypotheses[i]`` is the generated caption of image ``i``.
        meteor: which METEOR to compute:

            * ``"auto"`` (default): coco-caption's METEOR 1.5 (Java) if ``java`` is on PATH
              and it runs; else NLTK's ``meteor_score`` if WordNet is installed; else
              ``meteor`` is None, ``meteor_backend`` says why and a ``RuntimeWarning`` is
              issued. Never raises because of METEOR.
            * ``"java"`` / ``"nltk"``: that backend or a :class:`StorytellerError` saying
              how to install it.
            * ``"none"``: skip METEOR (it is the slow one).

            The two backends give different numbers (Java METEOR 1.5 also matches
            paraphrases, with tuned weights); only compare scores with the same backend.

    Returns:
        A dict with the float scores :data:`SCORE_KEYS` (in [0, 1] except CIDEr; ``meteor``
        may be None), ``meteor_backend`` (str) and ``num_images`` (int).

    Raises:
        StorytellerError: mismatched lengths, empty input, an image without a usable
            reference, an unknown ``meteor`` value or an unavailable explicit backend.
    """
    if meteor not in METEOR_BACKENDS:
        raise StorytellerError(f"meteor must be one of {METEOR_BACKENDS}, got {meteor!r}")
    refs, hyps = _prepare(references, hypotheses)

    gts, res = _coco_inputs(refs, hyps)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)  # verbose=0: no prints
    cider, _ = Cider().compute_score(gts, res)

    # rouge_score re-tokenises (lower-case, alphanumeric runs), which leaves our text as is.
    # score_multi keeps, per ROUGE type, the reference with the best F-measure.
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    rouge = {"rouge1": [], "rouge2": [], "rougeL": []}
    for i in range(len(hyps)):
        best = scorer.score_multi(gts[i], res[i][0])
        for key, values in rouge.items():
            values.append(best[key].fmeasure)

    precision, recall, f1 = _corpus_prf(refs, hyps)
    meteor_score, meteor_backend = _meteor(meteor, refs, hyps, gts, res)

    return {
        "bleu1": float(bleu[0]),
        "bleu2": float(bleu[1]),
        "bleu3": float(bleu[2]),
        "bleu4": float(bleu[3]),
        "meteor": meteor_score,
        "rouge1": float(np.mean(rouge["rouge1"])),
        "rouge2": float(np.mean(rouge["rouge2"])),
        "rougeL": float(np.mean(rouge["rougeL"])),
        "cider": float(cider),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "meteor_backend": meteor_backend,
        "num_images": len(hyps),
    }


# --------------------------------------------------------------------------------------------
# Specificity: is each caption about *its* image, or a generic one that fits any image?
# --------------------------------------------------------------------------------------------


def _ngram_features(sentences: Iterable[list[str]]) -> list[str]:
    """Word 1- and 2-grams of each sentence (bigrams never span two sentences)."""
    features: list[str] = []
    for tokens in sentences:
        features.extend(tokens)
        features.extend(f"{a} {b}" for a, b in pairwise(tokens))
    return features


def _retrieval_ranks(refs: list[list[list[str]]], hyps: list[list[str]]) -> np.ndarray:
    """Rank (1 = best) of each hypothesis's own image among all images.

    Each image is one document: its references together. TF-IDF (fitted on these documents)
    of word 1-2-grams, cosine similarity between hypothesis ``i`` and every document.

    Ties are resolved pessimistically: ``rank = number of images scoring at least as high as
    the true image`` (the true image included), so it is ranked *last* among equal scores. A
    hypothesis sharing no n-gram with any reference (all scores 0) gets rank ``n``, and one
    generic caption used for every image can put at most ``k`` images in the top ``k``.
    """
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
    """How specific the generated captions are (beam search favours generic ones).

    Returns:
        ``distinct_captions``: share of distinct normalised hypotheses (``n_distinct / n``);
        ``vocab_used``: number of distinct tokens used across all hypotheses;
        ``recall_at_{k}``: caption-to-image retrieval, the share of hypotheses whose own
        image is among the ``k`` best by TF-IDF cosine similarity to each image's references
        (pessimistic tie rule, see :func:`_retrieval_ranks`; a random guess scores ``k / n``);
        ``num_images``.

    Raises:
        StorytellerError: the same input errors as :func:`caption_metrics`, or ``k < 1``.
    """
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
    """The most frequent normalised caption (the trivial "always say this" baseline).

    Ties go to the lexicographically smallest caption, so the result is deterministic.
    Captions that are empty after normalisation are ignored.

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
