"""`python -m sharpt_jax.export --workdir RUN_DIR --out OUT_DIR [--step N]`: a run's checkpoint as an adapter.

The command's entry point; the code is `sharpt_jax.serving.export`, imported once the arguments are parsed (so
`--help` and argument mistakes answer at once, without starting TensorFlow or JAX).
"""

import argparse
import sys

from sharpt_jax import storage


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=storage.path, required=True, help="the run's folder, as run.py's --workdir")
    parser.add_argument("--out", type=storage.path, required=True, help="where the adapter goes")
    parser.add_argument("--step", type=int, default=None, help="checkpoint to export (default: eval/best.json's)")
    args = parser.parse_args(argv)
    from sharpt_jax import build
    from sharpt_jax.serving import export

    try:
        out = export.export(args.workdir, args.out, args.step)
    except build.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {', '.join(str(f) for f in sorted(out.iterdir()))}")


if __name__ == "__main__":
    main()
