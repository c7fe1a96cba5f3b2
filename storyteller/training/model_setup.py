"""What a run trains: its complete model config, made in one place, and the pretrained word
vectors it starts from."""

from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig, TrainConfig
from ..data.embeddings import WordVectors, read_word_vectors
from ..data.vocab import Vocabulary
from ..errors import StorytellerError
from ..features.cache_format import FeatureCache
from ..features.encoders import get_encoder_spec
from ..models import decoder_class
from ..models.checkpoint import check_model_config, read_checkpoint
from ..progress import Log
from ..run_folder import RunPaths


def run_model_config(
    overrides: dict,
    vocab_size: int,
    cache: FeatureCache,
    cache_path: Path,
    encoder: str,
    fine_tune_blocks: int = 0,
    embedding_width: tuple[int, str] | None = None,
) -> ModelConfig:
    """A run's complete model config, made here alone: ``overrides`` (ModelConfig fields,
    ``"decoder"`` among them) fitted to the vocabulary, the features and the word vectors."""
    decoder = decoder_class(overrides["decoder"])
    if embedding_width is not None:
        overrides = decoder.with_embedding_width(overrides, *embedding_width)
    if fine_tune_blocks:  # a fine-tuned encoder's features are its own, not the cache's
        spec = get_encoder_spec(encoder)
        feature_dim, grid, source = spec.dim, spec.grid, f"the {encoder} encoder"
        overrides = {**overrides, "fine_tuned_blocks": fine_tune_blocks}
    elif encoder != cache.encoder:
        raise StorytellerError(
            f"--encoder {encoder}: the feature cache was made with {cache.encoder}; a "
            "frozen encoder trains from its cache (extract again with --encoder "
            f"{encoder}), another one needs --fine-tune-encoder N"
        )
    else:
        feature_dim, grid, source = cache.dim, cache.grid, f"the feature cache {cache_path}"
    if grid is not None:  # a decoder with a table per grid position sizes it from the grid
        overrides = decoder.with_grid(overrides, grid, source)
    return ModelConfig(vocab_size, feature_dim, encoder=encoder, **overrides)


def word_vectors(
    embeddings: str | Path | None,
    overrides: dict,
    paths: RunPaths,
    resume: bool,
    vocab: Vocabulary,
    train_config: TrainConfig,
    log: Log,
) -> tuple[WordVectors | None, tuple[int, str] | None]:
    """The pretrained vectors a fresh run starts from, and the (width, source) they set. A
    resumed run that started from such a file takes the learned vectors, their width and, when
    no file is named, their freezing (into ``overrides``) from ``last.pth``; another file is
    refused."""
    last = paths.last_checkpoint
    checkpoint = read_checkpoint(last) if resume and last.is_file() else {}
    provenance = checkpoint.get("embeddings")
    if isinstance(provenance, dict) and isinstance(provenance.get("dim"), int):
        if embeddings is not None and Path(embeddings).name != provenance["file"]:
            raise StorytellerError(
                f"{last} was trained from embeddings {provenance['file']}, not "
                f"{Path(embeddings).name}: leave --embeddings out to resume (the checkpoint holds "
                "the learned vectors) or pass --no-resume"
            )
        log(f"resuming with the word vectors learned from {provenance['file']} (file not read)")
        if embeddings is None:  # no file named: freezing is the checkpoint's too
            saved = check_model_config(checkpoint, last)
            overrides.setdefault("freeze_embeddings", saved.freeze_embeddings)
        return None, (provenance["dim"], f"the checkpoint's {provenance['file']}")
    if embeddings is not None:
        # Every process draws the same random rows (DDP starts from rank 0's weights anyway).
        vectors = read_word_vectors(embeddings, vocab, seed=train_config.seed)
        log(vectors.summary())
        return vectors, (vectors.dim, vectors.source)
    if overrides.get("freeze_embeddings"):
        raise StorytellerError("--freeze-embeddings needs --embeddings FILE (pretrained vectors)")
    return None, None
