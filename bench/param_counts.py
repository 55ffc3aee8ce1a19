"""Trainable parameters per method for T5 v1.1 LM-adapted base / large / xl with a BERT-base instance encoder.

    python bench/param_counts.py [--prompt_len 64] [--num_skills 100]

Counts come from `nnx.eval_shape`-built models (no memory is allocated) split by `optim.split_model`, the
same split the trainer uses, and are checked against the closed forms of `bench/flops.py`:
    generator (W1, W2, z)  m d + d + d^2 + d + L d
    sharpt source          K m + generator        (codebook + generator)
    sharpt target          generator              (no_latent: the same)
    prompt_tuning          L d
    model_tuning           the whole backbone
Fractions are of the T5 backbone's parameters (the frozen instance encoder is not counted).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import flops, shapes  # noqa: E402
from sharpt_jax import optim  # noqa: E402

METHODS = [
    ("sharpt", "source"),
    ("sharpt", "target"),
    ("no_latent", "target"),
    ("prompt_tuning", "target"),
    ("model_tuning", "target"),
]
SIZES = ("base", "large", "xl")


def counted(size: str, method: str, stage: str, prompt_len: int, num_skills: int) -> tuple[int, int]:
    """(trainable, backbone) parameter counts of the abstract model, checked against the closed forms."""
    point = shapes.Point(
        method, stage, batch=1, input_len=1, target_len=1, prompt_len=prompt_len, num_skills=num_skills, instance_len=1
    )
    t5, encoder = shapes.T5_SHAPES[size], shapes.BERT_SHAPES["base"]
    model = shapes.build_abstract(t5, encoder, point)
    _, trainable, _ = optim.split_model(model, method, stage)
    n_trainable = optim.count_params(trainable)
    n_backbone = optim.count_params(optim.split_model(model, "model_tuning", stage)[1])
    expected = flops.trainable_params(t5, encoder.hidden_size, method, stage, prompt_len, num_skills)
    if (n_trainable, n_backbone) != (expected, flops.backbone_params(t5)):
        raise AssertionError(
            f"{size} {method}/{stage}: counted {n_trainable}, {n_backbone}; "
            f"formula {expected}, {flops.backbone_params(t5)}"
        )
    return n_trainable, n_backbone


def markdown(prompt_len: int, num_skills: int) -> str:
    """The table: one row per method, count and % of the backbone per size."""
    cells = {(size, m, st): counted(size, m, st, prompt_len, num_skills) for size in SIZES for m, st in METHODS}
    header = ["method"] + [f"T5-{size} ({cells[(size, 'model_tuning', 'target')][1] / 1e6:.1f}M)" for size in SIZES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m, st in METHODS:
        row = [f"{m}/{st}"]
        for size in SIZES:
            trainable, backbone = cells[(size, m, st)]
            row.append(f"{trainable:,} ({100 * trainable / backbone:.3g}%)")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt_len", type=int, default=64, help="L, soft prompt tokens")
    parser.add_argument("--num_skills", type=int, default=100, help="K, codebook size")
    args = parser.parse_args()
    print(
        f"Trainable parameters, L = {args.prompt_len}, K = {args.num_skills}, BERT-base encoder (m = 768); "
        "counted from eval_shape models and equal to the closed forms.\n"
    )
    print(markdown(args.prompt_len, args.num_skills))


if __name__ == "__main__":
    main()
