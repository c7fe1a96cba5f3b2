"""The model card (README.md) of a storyteller Hub model: metadata the Hub indexes (written by
``huggingface_hub``'s own ``ModelCardData``, with the test scores of ``metrics.json`` as
``model-index`` results), then what the model is, how to load it, the commands that trained it
and what it cannot do.
"""

from __future__ import annotations

import shlex

from ..config import ModelConfig, TrainConfig, model_label, train_flags
from ..config_cli import config_flags
from ..data.vocab import Vocabulary
from ..errors import StorytellerError

#: Scores of metrics.json published as model-index results (key -> shown name).
CARD_METRICS = {
    "bleu1": "BLEU-1",
    "bleu4": "BLEU-4",
    "meteor": "METEOR",
    "rougeL": "ROUGE-L",
    "cider": "CIDEr",
}


def dataset_name(vocab: Vocabulary) -> str:
    """The training data's name as the vocabulary recorded it (its folder's name, or the
    ``--dataset-name`` given to ``vocab --captions``)."""
    provenance = vocab.provenance
    if provenance.get("dataset"):
        return str(provenance["dataset"])
    parts = [p for p in str(provenance.get("source") or "").replace("\\", "/").split("/") if p]
    if parts and "." in parts[-1] and len(parts) > 1:  # a caption file: name its folder
        parts.pop()
    return parts[-1] if parts else "unknown"


def training_commands(model_config: ModelConfig, train_config: dict) -> list[str]:
    """The commands that train this model again on the same data (``features``, ``vocab``,
    ``train``), or a pointer to config.json when a setting has no flag."""
    flagged = config_flags(ModelConfig)  # the fields that have a train flag
    keys = (*flagged, "decoder", "decoder_options", "feature_norm", "freeze_embeddings")
    model = {k: v for k, v in model_config.to_dict().items() if k in keys}
    try:
        flags = train_flags(TrainConfig.from_dict(train_config), model)
    except StorytellerError:
        return ["python -m storyteller train  # with the train_config in config.json"]
    if model_config.fine_tuned_blocks:
        flags += ["--fine-tune-encoder", str(model_config.fine_tuned_blocks)]
    return [
        f"python -m storyteller features --encoder {model_config.encoder}",
        "python -m storyteller vocab",
        shlex.join(["python", "-m", "storyteller", "train", *flags]),
    ]


def _results(metrics: dict, dataset: str, model_name: str) -> list:
    from huggingface_hub import EvalResult

    results = []
    for decoding, scores in metrics.items():
        if not isinstance(scores, dict):
            continue
        for key, shown in CARD_METRICS.items():
            value = scores.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                results.append(
                    EvalResult(
                        task_type="image-to-text",
                        task_name="Image captioning",
                        dataset_type=dataset,
                        dataset_name=dataset,
                        dataset_split="test",
                        metric_type=key.lower(),
                        metric_name=f"{shown} ({decoding})",
                        metric_config=decoding,
                        metric_value=round(float(value), 4),
                    )
                )
    return results


def _table(metrics: dict) -> str:
    rows = [(d, s) for d, s in metrics.items() if isinstance(s, dict)]
    if not rows:
        return "Not evaluated yet (`python -m storyteller evaluate` writes metrics.json)."
    head = "| decoding | " + " | ".join(CARD_METRICS.values()) + " |\n"
    head += "|---" * (len(CARD_METRICS) + 1) + "|\n"
    for decoding, scores in rows:
        cells = [
            f"{scores[k]:.4f}" if isinstance(scores.get(k), (int, float)) else "-"
            for k in CARD_METRICS
        ]
        head += f"| {decoding} | " + " | ".join(cells) + " |\n"
    return head


_CARD = """
# {name}
{label}
An image captioner made with Neural Storyteller (the `storyteller` Python package): the
image encoder {encoder} and a `{decoder}` decoder ({words} words), trained on {dataset}.

## Use

```python
from storyteller.inference import Captioner

captioner = Captioner.from_pretrained("{repo}")  # revision="..." pins a commit or tag
print(captioner(["photo.jpg"], beam_size=5)[0])
```

or `python -m storyteller caption photo.jpg --model {repo}`, and a Gradio Space that loads it:
`python -m storyteller deploy --space USER/NAME --model {repo}`.

## Results (test split)

{table}

## Training

```bash
{commands}
```

The full model and training configs are in `config.json`.

## Intended use and limits

For learning and demos: short English descriptions of everyday photos like those of
{dataset}. It knows only the {words} words of its vocabulary, describes what it saw in
training data (people, dogs, places) and guesses on anything else, and repeats that data's
biases. Do not use it for decisions about people or where a wrong caption causes harm.

## Files

Format version {format_version}: {files}. Weights are
safetensors and the vocabulary is JSON: loading runs no code.
"""


def model_card(
    repo: str,
    model_config: ModelConfig,
    vocab: Vocabulary,
    info: dict,
    metrics: dict | None,
    format_version: int,
    files: list[str],
) -> str:
    """The README.md text: YAML metadata, then the card. ``info``: what the checkpoint
    records (``train_config``, ``trained_on_sample``); a smoke or sample model's label stands
    under the title."""
    from huggingface_hub import ModelCard, ModelCardData

    dataset = dataset_name(vocab)
    metrics = metrics or {}
    name = repo.split("/")[-1]
    data = ModelCardData(
        model_name=name,
        library_name="storyteller",
        pipeline_tag="image-to-text",
        license="mit",
        language="en",
        datasets=[dataset],
        tags=["image-captioning", model_config.encoder, model_config.decoder],
        eval_results=_results(metrics, dataset, name) or None,
    )
    blocks, label = model_config.fine_tuned_blocks, model_label(info)
    body = _CARD.format(
        name=name,
        label=f"\n**{label}**\n" if label else "",
        repo=repo,
        encoder=model_config.encoder
        + (f" (last {blocks} block(s) fine-tuned)" if blocks else " (ImageNet weights, frozen)"),
        decoder=model_config.decoder,
        words=len(vocab),
        dataset=dataset,
        table=_table(metrics),
        commands="\n".join(training_commands(model_config, info["train_config"])),
        format_version=format_version,
        files=", ".join(f"`{f}`" for f in files),
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))
